"""What twistd's service maker does beyond building the Connector."""

import subprocess
import sys
import textwrap


def test_the_daemon_freezes_its_start_up_objects_and_collects_less_often():
    # In a process of its own: the collector's settings are global.
    script = textwrap.dedent(
        """
        import gc
        from p2a_connector.tap import GC_THRESHOLDS, tune_garbage_collector
        before = gc.get_freeze_count()
        tune_garbage_collector()
        print(before, gc.get_freeze_count() > before,
              gc.get_threshold() == GC_THRESHOLDS)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()

    assert out == ["0", "True", "True"]
