"""The shipped systemd unit and sysusers snippet: accepted and hardened."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "p2a-connector.service"
SYSUSERS = SYSTEMD / "p2a-connector.sysusers"


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


def overall_exposure(output: str) -> tuple[float, str]:
    """The overall exposure and its rating from `systemd-analyze security`."""
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", output)
    assert found, output
    return float(found.group(1)), found.group(2)


def offline_security_supported() -> bool:
    if not shutil.which("systemd-analyze"):
        return False
    usage = subprocess.run(
        ["systemd-analyze", "security", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--offline" in usage.stdout


@pytest.mark.skipif(
    not offline_security_supported(),
    reason="systemd-analyze security --offline needs systemd 250 or newer",
)
def test_unit_is_rated_ok_by_systemd_analyze_security(tmp_path):
    # What stays exposed is what the daemon needs: the network (binds to any
    # SMSC, posts to any webhook: no PrivateNetwork, no IPAddressDeny, inet
    # sockets), executable writable memory for TLS (see the next test), a
    # shared user namespace and /proc.  Those add up to about 1.3 on
    # systemd 252; 2.0 leaves room for a newer systemd's extra checks while
    # a lost group of protections (file system, kernel, system calls) goes
    # over it.
    unit = tmp_path / "p2a-connector.service"
    unit.write_text(UNIT.read_text())

    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    exposure, rating = overall_exposure(result.stdout + result.stderr)
    assert rating in ("PERFECT", "SAFE", "OK"), result.stdout
    assert exposure <= 2.0, result.stdout


MDWE_PROBE = """
import ctypes
# PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute=
# enforces, set by the kernel itself (Linux 6.3 and newer).
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    raise SystemExit(3)
from twisted.internet import ssl
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
try:
    ssl.optionsForClientTLS("smsc.example").clientConnectionForTLS(
        TLSMemoryBIOProtocol(None, Protocol())
    )
except MemoryError:
    raise SystemExit(1)
"""


def test_tls_needs_memory_deny_write_execute_off():
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 and newer)")

    # When a TLS client connection can be made under the setting, the unit
    # may turn MemoryDenyWriteExecute on: this test then says so by failing.
    assert result.returncode == 1, result.stderr
    assert "MemoryDenyWriteExecute=no" in UNIT.read_text()


def test_unit_reloads_with_sighup_and_keeps_its_stop_timeout():
    text = UNIT.read_text()

    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "LogsDirectory=p2a-connector" in text
    assert "TimeoutStopSec=30" in text


@pytest.mark.skipif(not shutil.which("systemd-sysusers"), reason="no systemd-sysusers")
def test_sysusers_snippet_creates_the_unit_user_without_a_login(tmp_path):
    (tmp_path / "etc").mkdir()

    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    user = users["p2a-connector"]
    assert user[5:] == ["/var/lib/p2a-connector", "/usr/sbin/nologin"]
    assert "User=p2a-connector" in UNIT.read_text()
    assert "p2a-connector:" in (tmp_path / "etc" / "group").read_text()
