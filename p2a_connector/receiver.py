"""
A real webhook receiver for tests: a twisted.web server on 127.0.0.1 that
records every request and answers as it is told.

    receiver = Receiver()
    await receiver.start()
    receiver.script(503, Reply(429, headers=[("Retry-After", "1")]), Reply.hang())
    ...                                   # post to receiver.url
    await receiver.wait_for(3)
    receiver.requests[0].verify(secret)   # standardwebhooks' own check
    await receiver.stop()

Requests beyond the script get ``default`` (200 unless told otherwise).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from standardwebhooks import Webhook
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


@attrs.frozen
class Reply:
    """
    How to answer one request.

    :ivar delay: seconds to wait before answering.
    :ivar hold: answer only when `Receiver.release` is called (never, if it
        is not: the request hangs until the receiver stops).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple)
    body: bytes = b""
    delay: float = 0.0
    hold: bool = False

    @classmethod
    def hang(cls) -> Reply:
        return cls(hold=True)


@attrs.frozen
class ReceivedRequest:
    """One request as the receiver saw it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def verify(self, secret: str) -> Any:
        """The JSON payload, once standardwebhooks has checked the signature."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """A scripted webhook receiver; see the module docstring."""

    def __init__(self, reactor: Any = None, default: Reply = Reply()):
        self.reactor = reactor or default_reactor
        self.default = default
        self.requests: list[ReceivedRequest] = []
        self.active = 0
        self.peak = 0
        self._script: deque[Reply] = deque()
        self._held: list[tuple[Request, Reply]] = []
        self._timers: list[Any] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._connections: WrappingFactory | None = None
        self._port: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.getHost().port}/hook"

    def script(self, *replies: int | Reply) -> None:
        """Answer the next requests with these, in order."""
        for reply in replies:
            self._script.append(Reply(reply) if isinstance(reply, int) else reply)

    def start(self) -> Deferred[None]:
        # The wrapper keeps track of open connections, so stop() can drop them.
        self._connections = WrappingFactory(_Site(_Hook(self)))
        self._port = self.reactor.listenTCP(0, self._connections, interface="127.0.0.1")
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection, held requests included."""
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        for connection in list(self._connections.protocols):
            connection.transport.abortConnection()
        return self._port.stopListening()

    def wait_for(self, count: int, timeout: float = 5.0) -> Deferred[None]:
        """Fire once ``count`` requests have arrived."""
        d: Deferred[None] = Deferred()
        self._waiters.append((count, d))
        self._notify()
        return d.addTimeout(timeout, self.reactor)

    def release(self) -> None:
        """Answer every held request."""
        held, self._held = self._held, []
        for request, reply in held:
            self._answer(request, reply)

    def payloads(self, secret: str) -> list[Any]:
        """Every request's payload, each verified with ``secret``."""
        return [request.verify(secret) for request in self.requests]

    # --- the server side --------------------------------------------------

    def _received(self, request: Request) -> int | bytes:
        body = request.content.read()
        self.requests.append(
            ReceivedRequest(
                method=request.method.decode(),
                path=request.path.decode(),
                headers={
                    name.decode().lower(): values[-1].decode()
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=body,
                received_at=self.reactor.seconds(),
            )
        )
        reply = self._script.popleft() if self._script else self.default

        self.active += 1
        self.peak = max(self.peak, self.active)
        request.notifyFinish().addBoth(self._done)
        self._notify()

        if reply.hold:
            self._held.append((request, reply))
        elif reply.delay:
            timer = self.reactor.callLater(reply.delay, self._answer, request, reply)
            self._timers.append(timer)
        else:
            self._answer(request, reply)
        return NOT_DONE_YET

    def _answer(self, request: Request, reply: Reply) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(reply.status)
        for name, value in reply.headers:
            request.setHeader(name, value)
        request.setHeader("content-length", str(len(reply.body)))
        request.write(reply.body)
        request.finish()

    def _done(self, _: Any) -> None:
        self.active -= 1

    def _notify(self) -> None:
        waiting = []
        for count, d in self._waiters:
            if len(self.requests) >= count:
                if not d.called:
                    d.callback(None)
            else:
                waiting.append((count, d))
        self._waiters = waiting


class _Hook(Resource):
    isLeaf = True

    def __init__(self, receiver: Receiver):
        super().__init__()
        self.receiver = receiver

    def render(self, request: Request) -> int | bytes:
        return self.receiver._received(request)


class _Site(Site):
    noisy = False
    displayTracebacks = False

    def log(self, request: Request) -> None:
        pass
