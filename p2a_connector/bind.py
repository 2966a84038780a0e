"""
Keeps one SMPP bind up for as long as the daemon runs.

A `BindService` connects with Twisted's ClientService, binds in its
``prepareConnection`` hook (so a refused or unanswered bind counts as a
failed connection and backs off like one), and reconnects forever with
exponential backoff and jitter.  On stop it unbinds before closing.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import endpoints, ssl
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2a_connector.config import BindConfig
from p2a_connector.metrics import Metrics
from p2a_connector.session import BindRefused, BindTimeout, ESMEProtocol, MOHandler


class BindService(Service):
    """
    One bind, kept up: connect, bind, reconnect after any loss.

    ``state`` is ``stopped``, ``connecting`` (including waiting to retry),
    ``binding``, ``bound`` or ``unbinding``.
    """

    log = Logger()

    def __init__(
        self,
        bind: BindConfig,
        handler: MOHandler,
        reactor,
        *,
        endpoint: IStreamClientEndpoint | None = None,
        random: Callable[[], float] = _random.random,
        metrics: Metrics | None = None,
    ):
        self.bind = bind
        self.name = f"bind:{bind.name}"
        self.metrics = (metrics or Metrics()).bind(bind.operator, bind.name)
        self.state = "stopped"
        self.session: ESMEProtocol | None = None
        self._handler = handler
        self._reactor = reactor
        self._endpoint = endpoint if endpoint is not None else _endpoint(bind, reactor)
        self._random = random
        self._bound_waiters: list[Deferred[ESMEProtocol]] = []
        self._sessions: _SessionFactory | None = None
        self._client: ClientService | None = None

    def whenBound(self) -> Deferred[ESMEProtocol]:
        """
        The bound session: now if bound, otherwise the next one to bind.
        Fails with CancelledError if the service stops first.
        """
        if self.state == "bound" and self.session is not None:
            return succeed(self.session)
        waiter: Deferred[ESMEProtocol] = Deferred()
        self._bound_waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        bind = self.bind
        # backoffPolicy waits initialDelay * factor ** attempt, and the first
        # retry is attempt 1: halving makes the first wait reconnect_initial.
        policy = backoffPolicy(
            initialDelay=bind.reconnect_initial / 2,
            maxDelay=bind.reconnect_max,
            factor=2,
            jitter=lambda: self._random() * bind.reconnect_initial,
        )
        self._sessions = _SessionFactory(
            bind, self._handler, self._reactor, self.metrics
        )
        self._client = ClientService(
            _HandshakeGuard(self._endpoint, self._sessions, self._connect_failed),
            self._sessions,
            retryPolicy=policy,
            clock=self._reactor,
            prepareConnection=self._prepare,
        )
        self.state = "connecting"
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        client, self._client = self._client, None
        session = self.session if self.state == "bound" else None
        self.state = "unbinding" if session is not None else "stopped"

        waiters, self._bound_waiters = self._bound_waiters, []
        for waiter in waiters:
            waiter.errback(CancelledError(f"bind {self.bind.name} is stopping"))

        unbound = session.unbind() if session is not None else succeed(None)

        def stop(_: object) -> Deferred[None]:
            self.state = "stopped"
            if client is None:
                return succeed(None)
            return client.stopService()

        return unbound.addCallback(stop)

    def _prepare(self, proxy: IProtocol) -> Deferred[None]:
        """ClientService's hook: a connection is usable once it is bound."""
        # ClientService passes its proxy of the session; the session itself
        # is the one the factory built last, as connections come one by one.
        session = self._sessions.last
        self.state = "binding"
        binding = session.bindESME()
        binding.addCallbacks(self._bound, self._not_bound, callbackArgs=(session,))
        return binding

    def _bound(self, _: None, session: ESMEProtocol) -> None:
        self.metrics.binds["bound"].inc()
        self.session = session
        self.state = "bound"
        session.whenClosed().addCallback(self._lost, session)
        waiters, self._bound_waiters = self._bound_waiters, []
        for waiter in waiters:
            waiter.callback(session)

    def _not_bound(self, failure: Failure) -> Failure:
        if failure.check(BindRefused):
            self.metrics.binds["refused"].inc()
        elif not failure.check(CancelledError):
            self.metrics.binds["failed"].inc()
        if self.running:
            self.state = "connecting"
        # The session has already logged refusals and timeouts.
        if not failure.check(BindRefused, BindTimeout, CancelledError):
            self.log.warn(
                "bind {bind} failed: {reason}",
                bind=self.bind.name,
                reason=failure.getErrorMessage(),
            )
        return failure

    def _connect_failed(self, failure: Failure) -> Failure:
        # A connection given up as the service stops fails with the
        # endpoint's ConnectingCancelledError, not CancelledError.
        if not failure.check(CancelledError, ConnectingCancelledError):
            self.metrics.binds["failed"].inc()
        return failure

    def _lost(self, _: None, session: ESMEProtocol) -> None:
        if self.session is session:
            self.session = None
        if self.running and self.state == "bound":
            self.state = "connecting"


def _endpoint(bind: BindConfig, reactor) -> IStreamClientEndpoint:
    tcp = endpoints.HostnameEndpoint(reactor, bind.host, bind.port)
    if not bind.tls:
        return tcp
    if bind.tls_verify:
        options = ssl.optionsForClientTLS(bind.host)
    else:
        BindService.log.warn(
            "bind {bind} does not verify the TLS certificate of {host}",
            bind=bind.name,
            host=bind.host,
        )
        options = ssl.CertificateOptions(verify=False)
    return endpoints.wrapClientTLS(options, tcp)


class _SessionFactory(Factory):
    """Builds the ESMEProtocol for each connection ClientService makes."""

    def __init__(self, bind: BindConfig, handler: MOHandler, clock, metrics):
        self.bind = bind
        self.handler = handler
        self.clock = clock
        self.metrics = metrics
        self.last: ESMEProtocol | None = None

    def buildProtocol(self, addr: IAddress) -> ESMEProtocol:
        self.last = ESMEProtocol(self.bind, self.handler, self.clock, self.metrics)
        return self.last


# ClientService has no transition for a connection that closes while it is
# still connecting (bind in progress) or already waiting to retry (bind
# refused): its state machine raises NoTransition from connectionLost.  The
# guard below stands between the transport and ClientService's protocol
# proxy and tells ClientService about a lost connection only if that
# connection was bound, i.e. only if ClientService counted it as connected.


@implementer(IStreamClientEndpoint)
class _HandshakeGuard:
    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        sessions: _SessionFactory,
        failed: Callable[[Failure], Failure],
    ):
        self._endpoint = endpoint
        self._sessions = sessions
        self._failed = failed

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(_GuardFactory(factory, self._sessions))
        return connecting.addCallbacks(lambda guarded: guarded.proxy, self._failed)


class _GuardFactory(Factory):
    def __init__(self, wrapped: IProtocolFactory, sessions: _SessionFactory):
        self._wrapped = wrapped
        self._sessions = sessions

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        proxy = self._wrapped.buildProtocol(addr)
        session = self._sessions.last
        if proxy is None or session is None:
            return None
        return _Guarded(proxy, session)


class _Guarded(Protocol):
    def __init__(self, proxy: IProtocol, session: ESMEProtocol):
        self.proxy = proxy
        self._session = session

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.proxy.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.proxy.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._session.bound_at is not None:
            self.proxy.connectionLost(reason)
        else:
            self._session.connectionLost(reason)
