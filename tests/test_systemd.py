"""The shipped systemd unit is one systemd accepts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "p2a-connector.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # The unit names the installed virtual environment; point it at this one.
    venv = str(Path(sys.executable).parent.parent)
    unit = tmp_path / "p2a-connector.service"
    unit.write_text(UNIT.read_text().replace("/opt/p2a-connector/venv", venv))

    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "p2a-connector.service" not in result.stderr, result.stderr


def test_unit_runs_the_daemon_in_the_foreground_with_a_checked_config():
    text = UNIT.read_text()

    assert "ExecStartPre=/opt/p2a-connector/venv/bin/p2a-connector check-config" in text
    assert "twistd --nodaemon --pidfile= p2a-connector --config" in text
    assert "StateDirectory=p2a-connector" in text
