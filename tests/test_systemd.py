"""
The shipped systemd units and sysusers snippet: accepted, hardened, and
running the daemon they name.
"""

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from redis_server import free_ports
from test_end_to_end import bound, deliver, events, until
from twisted.internet import reactor

from p2a_connector import traffic
from p2a_connector.harness import Daemon, config_text
from p2a_connector.smpp_status import ESME_ROK

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "p2a-connector.service"
DISPATCHER = SYSTEMD / "p2a-connector-dispatcher@.service"
SYSUSERS = SYSTEMD / "p2a-connector.sysusers"
# What systemd-analyze is given: the template as one of its instances.
UNIT_FILES = {UNIT: UNIT.name, DISPATCHER: "p2a-connector-dispatcher@8791.service"}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
@pytest.mark.parametrize("shipped", list(UNIT_FILES), ids=lambda path: path.name)
def test_unit_passes_systemd_analyze_verify(tmp_path, shipped):
    # The unit names the installed virtual environment; point it at this one.
    venv = str(Path(sys.executable).parent.parent)
    unit = tmp_path / UNIT_FILES[shipped]
    unit.write_text(shipped.read_text().replace("/opt/p2a-connector/venv", venv))

    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


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
@pytest.mark.parametrize("shipped", list(UNIT_FILES), ids=lambda path: path.name)
def test_unit_is_rated_ok_by_systemd_analyze_security(tmp_path, shipped):
    # What stays exposed is what the daemon needs: the network (binds to any
    # SMSC, posts to any webhook: no PrivateNetwork, no IPAddressDeny, inet
    # sockets), executable writable memory for TLS (see the next test), a
    # shared user namespace and /proc.  Those add up to about 1.3 on
    # systemd 252; 2.0 leaves room for a newer systemd's extra checks while
    # a lost group of protections (file system, kernel, system calls) goes
    # over it.
    unit = tmp_path / UNIT_FILES[shipped]
    unit.write_text(shipped.read_text())

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


def service_lines(unit: Path) -> list[str]:
    """The settings of a unit's [Service] section, comments left out."""
    section = unit.read_text().split("[Service]\n", 1)[1].split("\n[", 1)[0]
    return [line for line in section.splitlines() if line and not line.startswith("#")]


def test_the_dispatcher_template_is_hardened_as_the_main_unit():
    # Only what makes it a dispatcher differs: its command and its priority.
    own = ("ExecStart=", "Environment=P2A_ROLE=", "Nice=")
    main = [line for line in service_lines(UNIT) if not line.startswith(own)]
    dispatcher = [
        line for line in service_lines(DISPATCHER) if not line.startswith(own)
    ]

    assert dispatcher == main
    assert "Nice=19" in service_lines(DISPATCHER)


def unit_options(unit: Path, instance: str = "", role: str | None = None) -> tuple:
    """
    The daemon's options from a unit's ExecStart, filled in as systemd
    would: ``%i`` with the instance and ``${P2A_ROLE}`` with ``role`` (a
    drop-in's value) or the unit's own Environment= line.
    """
    settings = service_lines(unit)
    (command,) = [
        line[len("ExecStart=") :] for line in settings if line.startswith("ExecStart=")
    ]
    if role is None:
        roles = [
            line.split("=", 2)[2]
            for line in settings
            if line.startswith("Environment=P2A_ROLE=")
        ]
        role = roles[0] if roles else None
    words = [
        word.replace("%i", instance).replace("${P2A_ROLE}", str(role))
        for word in shlex.split(command)
    ]
    # The start is what harness.Daemon runs; what follows the file is ours.
    assert words[:6] == [
        "/opt/p2a-connector/venv/bin/twistd",
        "--nodaemon",
        "--pidfile=",
        "p2a-connector",
        "--config",
        "/etc/p2a-connector/connector.toml",
    ], command
    return tuple(words[6:])


async def status(port: int) -> dict:
    response = await treq.get(f"http://127.0.0.1:{port}/status")
    assert response.code == 200
    return json.loads(await response.text())


def test_the_main_unit_runs_role_all_unless_a_drop_in_says_otherwise():
    assert unit_options(UNIT) == ("--role", "all")
    assert unit_options(UNIT, role="receiver") == ("--role", "receiver")
    assert unit_options(DISPATCHER, "8791") == (
        "--role",
        "dispatcher",
        "--admin-port",
        "8791",
    )


@pytest_twisted.ensureDeferred
async def test_the_units_run_a_receiver_and_two_dispatchers_on_one_host(
    tmp_path, redis_server, receiver, smpp_simulator
):
    """
    The main unit with P2A_ROLE=receiver and two instances of the template,
    as their ExecStart lines say, sharing one configuration file: each
    serves its own admin endpoint, the receiver holds the bind, a dispatcher
    posts, and a reload keeps a dispatcher's port without a warning.
    """
    shared, first, second = free_ports(3)
    config = tmp_path / "connector.toml"
    text = config_text(
        webhook_url=receiver.url,
        smsc_port=smpp_simulator.listening.getHost().port,
        redis_url=redis_server.url,
    )
    config.write_text(
        text.replace("[admin]\nport = 0\n", f"[admin]\nport = {shared}\n")
    )
    processes = {
        shared: Daemon(
            reactor,
            config,
            tmp_path / "receiver.log",
            args=unit_options(UNIT, role="receiver"),
        ),
        first: Daemon(
            reactor,
            config,
            tmp_path / "first.log",
            args=unit_options(DISPATCHER, str(first)),
        ),
        second: Daemon(
            reactor,
            config,
            tmp_path / "second.log",
            args=unit_options(DISPATCHER, str(second)),
        ),
    }
    try:
        for process in processes.values():
            process.start()
        await bound(smpp_simulator, processes[shared])
        for port, process in processes.items():
            await until(
                lambda p=process: "admin endpoint on" in p.text(),
                what=f"admin on {port}",
            )

        roles = {port: (await status(port))["role"] for port in processes}
        assert roles == {shared: "receiver", first: "dispatcher", second: "dispatcher"}

        part = traffic.split("by a unit's dispatcher", "gsm7", None)[0]
        assert await deliver(smpp_simulator, part) == ESME_ROK
        await until(lambda: len(events(receiver)) == 1, what="the event")
        await until(
            lambda: any(
                "delivered msg_" in processes[port].text() for port in (first, second)
            ),
            what="a dispatcher's delivered line",
        )
        assert "delivered msg_" not in processes[shared].text()

        processes[first].process.signalProcess(signal.SIGHUP)
        await until(lambda: "reloaded " in processes[first].text(), what="the reload")
        assert "changed in" not in processes[first].text()
        assert (await status(first))["role"] == "dispatcher"
    finally:
        for process in processes.values():
            if process.running:
                await process.kill()
