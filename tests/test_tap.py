"""What twistd's service maker does beyond building the Connector."""

import subprocess
import sys
import textwrap

import pytest
from twisted.python import usage

from p2a_connector.harness import config_text
from p2a_connector.tap import Options


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


def options(tmp_path, *given: str) -> Options:
    config = tmp_path / "connector.toml"
    config.write_text(
        config_text(
            spool=tmp_path / "s.db", webhook_url="http://127.0.0.1:9/", smsc_port=9
        )
    )
    parsed = Options()
    parsed.parseOptions(["--config", str(config), *given])
    return parsed


def test_admin_port_replaces_the_configured_one(tmp_path):
    assert options(tmp_path)["loaded"].admin.port == 0
    assert options(tmp_path, "--admin-port", "8791")["loaded"].admin.port == 8791


@pytest.mark.parametrize("given", ["http", "-1", "65536"])
def test_admin_port_must_be_a_tcp_port(tmp_path, given):
    with pytest.raises(
        usage.UsageError, match=f"--admin-port '{given}' is not a TCP port"
    ):
        options(tmp_path, "--admin-port", given)
