"""
The daemon as one Twisted service: spool, binds, dispatcher, orphan sweeper.

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

from twisted.application.service import MultiService, Service
from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.server import Site

from p2a_connector.admin import admin_resource
from p2a_connector.bind import BindService
from p2a_connector.config import ROLES, Config
from p2a_connector.dispatcher import Dispatcher
from p2a_connector.intake import Intake
from p2a_connector.spool import SpoolError
from p2a_connector.spools import location, spool_from_config

# A dispatcher-only process is never woken by its own intake: it looks at
# the shared spool this often instead.
DISPATCHER_POLL = 0.05


class Connector(Service):
    """Everything one p2a-connector process runs, for its role."""

    log = Logger()

    def __init__(self, config: Config, reactor, role: str = "all"):
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        self.config = config
        self.reactor = reactor
        self.role = role
        self.intake = Intake(config, None, reactor, on_event=self._on_event)
        self.spool = spool_from_config(
            config.spool,
            self.intake.assemble,
            reactor,
            config.limits,
            completed_ttl=config.reassembly.timeout,
        )
        self.intake.spool = self.spool
        self.dispatcher = Dispatcher(
            self.spool,
            config.webhooks,
            reactor,
            shutdown_timeout=config.shutdown_timeout,
            **({"idle_check": DISPATCHER_POLL} if role == "dispatcher" else {}),
        )
        self.binds = MultiService()
        for operator in config.operators if role != "dispatcher" else ():
            for bind in operator.binds:
                BindService(bind, self.intake.handler(bind), reactor).setServiceParent(
                    self.binds
                )
        self.admin_port = None
        self._sweeper = task.LoopingCall(self._expire_orphans)
        self._sweeper.clock = reactor
        self.ready = None

    def startService(self) -> None:
        super().startService()
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
        if self.role != "dispatcher":
            self.binds.startService()
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
            "admin endpoint on http://{address}:{port}/ (healthz, readyz, metrics)",
            address=admin.address,
            port=self.admin_port.getHost().port,
        )

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        if self.ready is not None:
            yield self.ready
        if self._sweeper.running:
            self._sweeper.stop()
        if self.binds.running:
            yield self.binds.stopService()
        if self.dispatcher.running:
            yield self.dispatcher.stopService()
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        yield self.spool.close()
        self.log.info("stopped")

    def _on_event(self, event) -> None:
        if self.dispatcher.running:
            self.dispatcher.wake(event.webhook)

    @inlineCallbacks
    def _expire_orphans(self):
        cutoff = self.reactor.seconds() - self.config.reassembly.timeout
        try:
            events = yield self.spool.expire(cutoff)
        except SpoolError as e:
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
