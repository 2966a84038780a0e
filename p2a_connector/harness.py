"""
The real daemon as a child process, for the end-to-end tests and the demo.

It runs ``twistd -n p2a-connector`` from this virtual environment with a
configuration written for the test, so the code under test is exactly what
systemd would run, and a test can kill it with any signal.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from twisted.internet import protocol
from twisted.internet.defer import Deferred

TEST_SECRET = "whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"


def config_text(
    *,
    spool: Path | None = None,
    webhook_url: str,
    smsc_port: int,
    spool_extra: str = "",
    reassembly_extra: str = "",
    bind_extra: str = "",
    admin_extra: str = "",
    webhook_extra: str = "",
    secret: str = TEST_SECRET,
    redis_url: str | None = None,
    bind_name: str = "op1-a",
    extra: str = "",
) -> str:
    """
    A complete configuration for one operator with one bind; the ``*_extra``
    strings are added, as TOML lines, to the section they name, and ``extra``
    (more ``[[webhook]]`` or ``[[route]]`` tables, say) at the end.  The
    spool is the sqlite file ``spool``, or the Redis at ``redis_url``.
    """
    if redis_url is not None:
        spool_lines = f'backend = "redis"\nurl = "{redis_url}"'
    else:
        spool_lines = f'backend = "sqlite"\npath = "{spool}"'

    return f"""
shutdown_timeout = 5

[spool]
{spool_lines}
{spool_extra}

[reassembly]
check_interval = 0.2
{reassembly_extra}

[admin]
port = 0
{admin_extra}

[[webhook]]
name = "app"
url = "{webhook_url}"
secrets = ["{secret}"]
{webhook_extra or "timeout = 5"}

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
name = "{bind_name}"
host = "127.0.0.1"
port = {smsc_port}
system_id = "p2a"
password = "secret"
mode = "transceiver"
reconnect_initial = 0.1
reconnect_max = 0.5
{bind_extra}
{extra}
"""


class _Output(protocol.ProcessProtocol):
    def __init__(self, log: Path):
        self.log = log.open("ab")
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)
        self.log.flush()

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.log.close()
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class Daemon:
    """One twistd process running p2a-connector with a given configuration."""

    def __init__(
        self,
        reactor,
        config: Path,
        log: Path,
        args: tuple[str, ...] = (),
        twistd_args: tuple[str, ...] = (),
        buffered: bool = False,
    ):
        # args follow the plugin's name (its options), twistd_args precede it.
        # Unbuffered standard output shows a test every line written before a
        # SIGKILL; buffered is as under systemd, where the log observer
        # flushes once per reactor turn (what a benchmark should measure).
        self.buffered = buffered
        self.reactor = reactor
        self.config = config
        self.log = log
        self.args = args
        self.twistd_args = twistd_args
        self.process = None
        self.output: _Output | None = None

    def start(self) -> None:
        twistd = str(Path(sys.executable).with_name("twistd"))
        self.output = _Output(self.log)
        env = dict(os.environ)
        env.pop("PYTHONUNBUFFERED", None)
        if not self.buffered:
            env["PYTHONUNBUFFERED"] = "1"
        self.process = self.reactor.spawnProcess(
            self.output,
            twistd,
            [
                twistd,
                "--nodaemon",
                "--pidfile=",
                *self.twistd_args,
                "p2a-connector",
                "--config",
                str(self.config),
                *self.args,
            ],
            env=env,
            path=str(self.config.parent),
        )

    def signal(self, signum: int) -> Deferred:
        """
        Send a signal; the Deferred fires once the process ended, with
        ``(exit code, None)`` or, when a signal ended it, ``(None, signal)``.
        """
        ended = self.output.ended
        self.process.signalProcess(signum)
        return ended

    def stop(self) -> Deferred:
        return self.signal(signal.SIGTERM)

    def kill(self) -> Deferred:
        return self.signal(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.output is not None and not self.output.ended.called

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
