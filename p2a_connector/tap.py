"""What twistd needs to run the daemon: its options and its service maker."""

from __future__ import annotations

import gc

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from p2a_connector import config, logs
from p2a_connector.config import ADMIN_PORTS, ROLES, ConfigError


class Options(usage.Options):
    synopsis = "--config FILE [--role all|receiver|dispatcher] [--admin-port PORT]"
    optParameters = (
        ("config", "c", "/etc/p2a-connector/connector.toml", "The configuration file."),
        (
            "role",
            "r",
            "all",
            (
                "all: receive and dispatch; receiver: binds only; dispatcher: "
                "webhook posts only (receiver and dispatcher need the redis spool)."
            ),
        ),
        (
            "admin-port",
            None,
            None,
            (
                "The admin endpoint's port, in place of [admin] port: each "
                "process on one host needs its own."
            ),
        ),
    )

    def postOptions(self) -> None:
        self["admin_port"] = _admin_port(self["admin-port"])
        try:
            self["loaded"] = config.load(self["config"], admin_port=self["admin_port"])
        except ConfigError as e:
            raise usage.UsageError(f"{self['config']}: {e}") from None
        log = self["loaded"].log
        try:
            self["log_observer"] = logs.configured(log)
        except OSError as e:
            raise usage.UsageError(
                f"{self['config']}: log.file: cannot open {log.file}: {e.strerror}; "
                "create its directory (LogsDirectory= does under systemd) and let "
                "the daemon's user write there, or remove log.file to log to "
                "standard output"
            ) from None
        if self["role"] not in ROLES:
            raise usage.UsageError(
                f"--role {self['role']!r} is not one of {', '.join(ROLES)}"
            )
        if self["role"] != "all" and self["loaded"].spool.backend != "redis":
            raise usage.UsageError(
                f"--role {self['role']} shares work through the spool, which "
                'needs spool.backend = "redis"; the sqlite spool serves one '
                "process that does both"
            )


def _admin_port(given: str | None) -> int | None:
    if given is None:
        return None
    try:
        port = int(given)
    except ValueError:
        port = -1
    if port not in ADMIN_PORTS:
        raise usage.UsageError(
            f"--admin-port {given!r} is not a TCP port (0: any free one)"
        )
    return port


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "p2a-connector"
    description = "SMPP deliver_sm in, signed webhooks out."
    options = Options

    def makeService(self, options: Options):
        from twisted.internet import reactor

        from p2a_connector.service import Connector

        connector = Connector(
            options["loaded"],
            reactor,
            role=options["role"],
            log_observer=options["log_observer"],
            config_path=options["config"],
            admin_port=options["admin_port"],
            reload_on_sighup=True,
        )
        tune_garbage_collector()
        return connector


# Collect the youngest generation every 50,000 allocations, not 700: each
# message allocates a few hundred objects that nearly all die young by
# reference count, and the daemon holds few cycles.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_garbage_collector() -> None:
    """
    Set the daemon's collector up once it is built: what the start-up made
    (modules, configuration, services) moves out of the collector's sight,
    since it lives as long as the process, and young objects are collected
    less often.  About 5-10 % less CPU per message in bench/throughput.py.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
