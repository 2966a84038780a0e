"""
The daemon as one Twisted service: spool, binds, sender, dispatcher, orphan
sweeper.

Start-up and shutdown are ordered, which a plain MultiService does not do:
the spool opens before any bind may acknowledge, and on shutdown the binds
unbind first (nothing new arrives), then the dispatcher finishes or abandons
its posts within a bound, and the spool closes last.

A process has a role.  ``all`` (the default) receives and dispatches.  With
the Redis spool, ``receiver`` processes hold the binds and share the
reassembly state, and ``dispatcher`` processes only post events, so
delivery scales out on its own.
"""

from __future__ import annotations

import signal
from pathlib import Path

from twisted.application.service import MultiService, Service
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.server import Site

from p2a_connector.admin import admin_resource
from p2a_connector.bind import BindService
from p2a_connector.config import ROLES, BindConfig, Config, ConfigError, load
from p2a_connector.dispatcher import Dispatcher
from p2a_connector.intake import Intake
from p2a_connector.metrics import Metrics
from p2a_connector.reload import Changes, diff, effective
from p2a_connector.sender import Sender
from p2a_connector.spool import SpoolError
from p2a_connector.spools import (
    location,
    spool_bounds,
    spool_from_config,
    spool_options,
)

# A dispatcher-only process is never woken by its own intake: the receivers'
# stores wake it through the spool (Spool.watch), and it looks at the shared
# spool this often in case a wake-up is lost.
DISPATCHER_POLL = 0.05
# How soon a dispatcher looks once a receiver says it stored events.
WOKEN_LOOK_WITHIN = 0.005


class Connector(Service):
    """Everything one p2a-connector process runs, for its role."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor,
        role: str = "all",
        log_observer: ILogObserver | None = None,
        *,
        config_path: str | Path | None = None,
        admin_port: int | None = None,
        reload_on_sighup: bool = False,
    ):
        """
        :param config_path: the file ``config`` was read from, which
            `reload` reads again.
        :param admin_port: the ``--admin-port`` that ``config`` was loaded
            with, which `reload` applies again.
        :param reload_on_sighup: reload on SIGHUP while running; for the
            daemon only, as a signal handler belongs to the whole process.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if reload_on_sighup and config_path is None:
            raise ValueError("reload_on_sighup needs the config_path to reload")
        self.config = config
        # Absolute now: twistd may change directory before a reload reads it.
        self.config_path = (
            Path(config_path).absolute() if config_path is not None else None
        )
        self.admin_port_given = admin_port
        self.log_observer = log_observer
        self.reactor = reactor
        self.role = role
        self.metrics = Metrics()
        self.intake = Intake(
            config, None, reactor, on_event=self._on_event, metrics=self.metrics
        )
        self.spool = spool_from_config(
            config.spool,
            self.intake.assemble,
            reactor,
            config.limits,
            **spool_options(config),
        )
        self.intake.spool = self.spool
        self.dispatcher = Dispatcher(
            self.spool,
            config.webhooks,
            reactor,
            shutdown_timeout=config.shutdown_timeout,
            metrics=self.metrics,
            on_replies=self._replies_queued,
            **({"idle_check": DISPATCHER_POLL} if role == "dispatcher" else {}),
        )
        self.binds = MultiService()
        for operator in config.operators if role != "dispatcher" else ():
            for bind in operator.binds:
                self._bind_service(bind).setServiceParent(self.binds)
        # Replies go out over this process's own binds, so only processes
        # holding binds run a sender.
        self.sender = Sender(
            self.spool,
            self.binds,
            config,
            reactor,
            shutdown_timeout=config.shutdown_timeout,
        )
        self.admin_port = None
        self._sweeper = self._new_sweeper()
        self.ready = None
        self._reload_on_sighup = reload_on_sighup
        self._previous_sighup = None
        # Reloads run one at a time: the waiters of the one running, and of
        # the one queued behind it (None: none queued; more requests while
        # one is queued share it).
        self._reloading = False
        self._reload_waiters: list[Deferred] = []
        self._queued_waiters: list[Deferred] | None = None

    def _bind_service(self, bind: BindConfig) -> BindService:
        """The service that keeps ``bind`` up, its PDUs going to the intake."""
        return BindService(
            bind, self.intake.handler(bind), self.reactor, metrics=self.metrics
        )

    def _new_sweeper(self) -> task.LoopingCall:
        sweeper = task.LoopingCall(self._expire_orphans)
        sweeper.clock = self.reactor
        return sweeper

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        # twistd makes this service, adds it to a new application, then asks
        # the application for an ILogObserver before it begins logging.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self) -> None:
        super().startService()
        if self._reload_on_sighup:
            # twistd leaves SIGHUP alone.  Python runs the handler between
            # two bytecodes of the reactor's thread; callFromThread is the
            # one reactor call safe there, and the reload runs in its turn.
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self.ready = self._start()

    @inlineCallbacks
    def _start(self):
        try:
            yield self.spool.open()
        except SpoolError as e:
            self.log.critical(
                "cannot open the spool at {path}: {error}; stopping",
                path=location(self.config.spool),
                error=str(e),
            )
            self.reactor.stop()
            return
        self.log.info(
            "{role} process: spool open at {path} with {pending} undelivered events",
            role=self.role,
            path=location(self.config.spool),
            pending=self.spool.pending(),
        )
        if self.config.admin.enabled:
            self._listen_admin()
        if self.role != "receiver":
            self.dispatcher.startService()
        if self.role == "dispatcher":
            # Nothing it stores wakes it: the receivers' stores do.
            self.spool.watch(self._woken)
        if self.role != "dispatcher":
            self.binds.startService()
            self.sender.startService()
            self._sweeper.start(self.config.reassembly.check_interval, now=True)

    def _listen_admin(self) -> None:
        admin = self.config.admin
        try:
            self.admin_port = self.reactor.listenTCP(
                admin.port, Site(admin_resource(self)), interface=admin.address
            )
        except CannotListenError as e:
            self.log.error(
                "admin endpoint cannot listen on {address}:{port}: {error}; "
                "running without it",
                address=admin.address,
                port=admin.port,
                error=str(e.socketError),
            )
            return
        self.log.info(
            "admin endpoint on http://{address}:{port}/ (healthz, readyz, metrics); "
            "{access}",
            address=admin.address,
            port=self.admin_port.getHost().port,
            access=(
                "a bearer token is required except for /healthz"
                if admin.token is not None
                else "no token: open to anyone who can reach it"
            ),
        )

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        if self.ready is not None:
            yield self.ready
        while self._reloading:
            finished: Deferred = Deferred()
            self._reload_waiters.append(finished)
            yield finished
        if self._sweeper.running:
            self._sweeper.stop()
        # The sender first: the submit_sm under way need their binds up.
        if self.sender.running:
            yield self.sender.stopService()
        if self.binds.running:
            yield self.binds.stopService()
        if self.dispatcher.running:
            yield self.dispatcher.stopService()
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        yield self.spool.close()
        self.log.info("stopped")

    # --- reloading the configuration ----------------------------------------

    def reload(self) -> Deferred[Changes | None]:
        """
        Read `config_path` again and apply what changed; fires with the
        `Changes` applied, or None if the file was refused (the error is
        logged and the configuration in use stays as it was).  A reload
        asked for while one runs is done once more after it.
        """
        if self.config_path is None:
            raise ValueError("this connector was not given the config_path to reload")
        waiter: Deferred[Changes | None] = Deferred()
        if not self._reloading:
            self._reloading = True
            self._reload_waiters = [waiter]
            self._run_reload()
        elif self._queued_waiters is None:
            self._queued_waiters = [waiter]
        else:
            self._queued_waiters.append(waiter)
        return waiter

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._reload_on_signal)

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading {path}", path=str(self.config_path))
        self.reload()

    def _run_reload(self) -> None:
        running = self._reload()
        running.addErrback(self._reload_failed)
        running.addCallback(self._reload_ended)

    def _reload_failed(self, failure) -> None:
        self.log.failure(
            "reload of {path} failed part way; the configuration in use is "
            "partly the new one: fix the cause, then reload or restart",
            failure,
            path=str(self.config_path),
        )

    def _reload_ended(self, changes: Changes | None) -> None:
        waiters, self._reload_waiters = self._reload_waiters, []
        if self._queued_waiters is not None:
            self._reload_waiters, self._queued_waiters = self._queued_waiters, None
            self._run_reload()
        else:
            self._reloading = False
        for waiter in waiters:
            waiter.callback(changes)

    @inlineCallbacks
    def _reload(self):
        path = self.config_path
        if self.ready is not None:
            yield self.ready
        if not self.running:
            return None
        try:
            new = load(path, admin_port=self.admin_port_given)
        except ConfigError as e:
            self.log.error(
                "cannot reload {path}: {error}; still running on the "
                "configuration loaded before, unchanged",
                path=str(path),
                error=str(e),
            )
            return None

        old = self.config
        changes = diff(old, new, binds=self.role != "dispatcher")
        config = effective(old, new)
        for key in changes.restart_needed:
            self.log.warn(
                "{key} changed in {path}: it keeps its old value until the "
                "daemon restarts",
                key=key,
                path=str(path),
            )

        # What the next PDU and the next post read, first: new binds must
        # find their routes and webhooks in place.
        self.dispatcher.reconfigure(config.webhooks)
        self.dispatcher.shutdown_timeout = config.shutdown_timeout
        self.intake.reconfigure(config)
        self.sender.reconfigure(config)
        self.sender.shutdown_timeout = config.shutdown_timeout
        self.spool.set_bounds(**spool_bounds(config.limits))
        self.config = config
        if config.reassembly.check_interval != old.reassembly.check_interval:
            self._restart_sweeper()
        for name in changes.webhooks_removed:
            self.log.warn(
                "webhook {webhook} removed: it takes no new events, and its "
                "undelivered events stay in the spool until a webhook of that "
                "name is configured again",
                webhook=name,
            )

        yield self._replace_binds(changes)
        self.log.info(
            "reloaded {path}: binds {binds_added} added, {binds_removed} removed, "
            "{binds_restarted} restarted, {binds_kept} kept; webhooks "
            "{webhooks_added} added, {webhooks_removed} removed, "
            "{webhooks_changed} changed",
            path=str(path),
            **changes.summary(),
        )
        return changes

    @inlineCallbacks
    def _replace_binds(self, changes: Changes):
        """Unbind the removed and changed binds, then start the new ones."""
        gone = {bind.name for bind in (*changes.binds_removed, *changes.binds_changed)}
        for bind in changes.binds_removed:
            self.log.info("bind {bind} removed: unbinding", bind=bind.name)
        for bind in changes.binds_changed:
            self.log.info(
                "bind {bind} changed: unbinding to bind again with its new settings",
                bind=bind.name,
            )
        # Limitation: a changed bind is down from its unbind until its new
        # bind; an operator with one bind has no bind for that moment.
        stopping = [
            service.disownServiceParent()
            for service in list(self.binds)
            if service.bind.name in gone
        ]
        yield gatherResults([d for d in stopping if d is not None])

        for bind in (*changes.binds_added, *changes.binds_changed):
            if bind in changes.binds_added:
                self.log.info("bind {bind} added", bind=bind.name)
            self._bind_service(bind).setServiceParent(self.binds)

    def _restart_sweeper(self) -> None:
        if not self._sweeper.running:
            return
        # A fresh LoopingCall: stopping one whose call is under way and
        # starting it again would leave two schedules running.
        self._sweeper.stop()
        self._sweeper = self._new_sweeper()
        self._sweeper.start(self.config.reassembly.check_interval, now=False)

    def _replies_queued(self) -> None:
        # A dispatcher-only process sends nothing: the receivers' senders
        # find the replies when they next look (within a second).
        if self.sender.running:
            self.sender.wake()

    def _on_event(self, event) -> None:
        self._wake(event.webhook)

    def _wake(self, webhook: str, within: float = 0.0) -> None:
        if self.dispatcher.running:
            self.dispatcher.wake(webhook, within=within)

    def _woken(self, webhook: str) -> None:
        # A receiver publishes once per store, up to a thousand times a
        # second per webhook; a look that waits a moment takes several
        # stores' events in one read instead of one each.
        self.metrics.wakeups.inc()
        self._wake(webhook, within=WOKEN_LOOK_WITHIN)

    @inlineCallbacks
    def _expire_orphans(self):
        cutoff = self.reactor.seconds() - self.config.reassembly.timeout
        try:
            events = yield self.spool.expire(cutoff)
        except SpoolError as e:
            self.metrics.spool_errors["expire"].inc()
            self.log.error("could not expire orphan segments: {error}", error=str(e))
            return
        for event in events:
            self.log.warn(
                "reassembly timed out: {id} delivered incomplete to {webhook}",
                id=event.id,
                webhook=event.webhook,
            )
        if events and self.dispatcher.running:
            self.dispatcher.wake()
