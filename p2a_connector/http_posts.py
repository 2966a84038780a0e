"""
Webhook posts over persistent HTTP/1.1 connections: a request written in
one piece, its answer parsed by httptools (llhttp), the connection kept for
the next post to the same host.

`Posts` is what `p2a_connector.webhook_lane.Lane` posts through.  It speaks
just the HTTP a webhook needs: one POST at a time per connection, answers
with a length, chunked or ending with the connection, informational (1xx)
answers skipped, ``Connection: close`` honoured.  Twisted's Agent is not
used: building its request, pool and response objects took about half of a
dispatcher's reactor thread under load (py-spy), for features a webhook
post does not use.

A post has one deadline, from asking for a connection to the end of the
answer.  Past it, an answer whose status and headers arrived counts as that
answer, without its body; otherwise the post fails with TimeoutError.  A
post on a kept connection that closes before a byte of the answer arrived
is sent once more on a new connection: the receiver closed an idle
connection just as the post went out, a race no receiver can avoid, and a
webhook-id seen twice is what at-least-once delivery allows.
"""

from __future__ import annotations

from typing import Any

import attrs
import httptools
from hyperlink import EncodedURL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
)
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, BrowserLikePolicyForHTTPS

# How long a kept connection may stay idle before it is closed: below the
# keep-alive timeouts of common servers (nginx 75 s), so that the connector,
# not the receiver, usually closes it.
IDLE_TIMEOUT = 60.0


class AnswerLost(Exception):
    """The connection ended before the answer did."""


class NotHTTP(Exception):
    """The receiver answered with something that is not HTTP/1.x."""


@attrs.frozen
class Target:
    """Where a webhook's posts go: a URL parsed and encoded once."""

    scheme: bytes
    host: bytes
    port: int
    path: bytes
    # What the Host header says: made once, not on every post.
    host_header: bytes = attrs.field(init=False)
    # The connections a post may reuse are the ones kept under this.
    key: tuple[bytes, bytes, int] = attrs.field(init=False)

    @host_header.default
    def _host_header(self) -> bytes:
        host = self.host
        if isIPv6Address(host.decode("ascii")):
            host = b"[" + host + b"]"
        if (self.scheme, self.port) in ((b"http", 80), (b"https", 443)):
            return host
        return b"%b:%d" % (host, self.port)

    @key.default
    def _key(self) -> tuple[bytes, bytes, int]:
        return (self.scheme, self.host, self.port)

    @classmethod
    def of(cls, url: str) -> Target:
        """The target of an ``http://`` or ``https://`` URL (IDNA host,
        percent-encoded path)."""
        given = EncodedURL.from_text(url)
        host = given.host
        if not (isIPAddress(host) or isIPv6Address(host)):
            host = given.to_uri().host
        # The path and query percent-encoded, the host left out of it: an
        # IPv6 address is no IDNA name.
        rest = given.replace(host="h").to_uri().to_text().encode("ascii")
        parsed = URI.fromBytes(rest)
        return cls(parsed.scheme, host.encode("ascii"), parsed.port, parsed.originForm)


@attrs.frozen
class Answer:
    """
    A receiver's answer: its status, its headers (lower-case names, the last
    value of each) and its body, or None where the body was longer than the
    post wanted kept or did not end before the deadline.
    """

    code: int
    headers: dict[bytes, bytes]
    body: bytes | None


def request(target: Target, headers: dict[bytes, list[bytes]], body: bytes) -> bytes:
    """
    A POST of ``body`` to ``target``, head and body as one string to write.

    Header names and values are written as given: the caller's are the
    signature headers and configured ones, which the configuration checked
    (`p2a_connector.config_sections`).  A configured ``Host`` replaces the
    one the URL gives.
    """
    lines = [b"POST " + target.path + b" HTTP/1.1"]
    if b"host" not in headers:
        lines.append(b"Host: " + target.host_header)
    lines.append(b"Content-Length: %d" % len(body))
    for name, values in headers.items():
        for value in values:
            lines.append(name + b": " + value)
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


class _Connection(Protocol):
    """One connection to a receiver, carrying one exchange at a time."""

    def __init__(self, posts: Posts, key: tuple[bytes, bytes, int]):
        self.key = key
        self._posts = posts
        self._exchange: _Exchange | None = None
        self.idle_timer: IDelayedCall | None = None
        self.ended: Deferred[None] = Deferred()

    def send(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self.transport.write(exchange.request)

    def abort(self) -> None:
        self._exchange = None
        self.transport.abortConnection()

    def stop_idle_timer(self) -> None:
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            # Nothing was asked: a receiver that talks out of turn cannot be
            # trusted with the next post.
            self.transport.abortConnection()
            return
        try:
            exchange.feed(data)
        except httptools.HttpParserError as e:
            self.abort()
            if exchange.complete:
                # Whatever came after a whole answer makes the connection
                # unfit for the next post, not the answer wrong.
                exchange.finish()
            else:
                exchange.lost(NotHTTP(f"the answer is not HTTP/1.1: {e}"))
            return
        if exchange.complete:
            self._exchange = None
            if exchange.keep_alive:
                self._posts._release(self)
            else:
                self.transport.loseConnection()
            exchange.finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._posts._forget(self)
        self.ended.callback(None)
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        if exchange.ends_with_connection():
            exchange.finish()
        else:
            exchange.lost(AnswerLost(reason.getErrorMessage()))


class _Exchange:
    """One request's answer, as llhttp parses it (its callbacks)."""

    def __init__(self, post: _Post, request: bytes, keep: int):
        self.request = request
        self.complete = False
        self.keep_alive = False
        self.started = False
        self.code = 0
        self.headers: dict[bytes, bytes] = {}
        self._post = post
        self._keep = keep
        self._chunks: list[bytes] = []
        self._size = 0
        self._parser = httptools.HttpResponseParser(self)

    @property
    def has_head(self) -> bool:
        return self.code >= 200

    def feed(self, data: bytes) -> None:
        self.started = True
        self._parser.feed_data(data)

    def ends_with_connection(self) -> bool:
        """An answer with neither a length nor chunks ends when its
        connection does: llhttp waits for an end it has no way to be told."""
        if self.complete:
            return True
        return (
            self.has_head
            and b"content-length" not in self.headers
            and b"transfer-encoding" not in self.headers
        )

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.code = self._parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= self._keep:
            self._chunks.append(data)

    def on_message_complete(self) -> None:
        if self.code < 200:
            # 100 Continue and the like: the answer is still to come.
            self.code = 0
            self.headers = {}
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()

    def answer(self, whole: bool = True) -> Answer:
        kept = whole and self._size <= self._keep
        return Answer(self.code, self.headers, b"".join(self._chunks) if kept else None)

    def finish(self) -> None:
        self._post.answered(self.answer())

    def lost(self, error: Exception) -> None:
        self._post.lost(self, error)

    def release(self) -> None:
        """Let go of the parser and the post, which both point back here."""
        self._parser = None
        self._post = None


class _Post:
    """One post, from finding a connection to its answer or its failure."""

    def __init__(self, posts: Posts, target: Target, request: bytes, keep: int):
        self.done: Deferred[Answer] | None = Deferred(
            lambda _: self.stop(CancelledError())
        )
        self._posts = posts
        self._target = target
        self._request = request
        self._keep = keep
        self._connecting: Deferred[_Connection] | None = None
        self._connection: _Connection | None = None
        self._exchange: _Exchange | None = None
        self._deadline: IDelayedCall | None = None
        self._over = False
        # Whether the request went out on a new connection: only a kept one
        # earns a second try.
        self._fresh = False

    def start(self, timeout: float) -> None:
        self._deadline = self._posts.reactor.callLater(
            max(timeout, 0.0), self.stop, TimeoutError(f"no response in {timeout:g}s")
        )
        kept = self._posts._reuse(self._target)
        if kept is None:
            self._connect()
        else:
            self._send(kept, reused=True)

    def _connect(self) -> None:
        self._connecting = self._posts._connect(self._target)
        self._connecting.addCallbacks(self._connected, self._unreachable)

    def _connected(self, connection: _Connection) -> None:
        self._connecting = None
        if self._over:
            connection.transport.loseConnection()
            return
        self._send(connection, reused=False)

    def _unreachable(self, failure: Failure) -> None:
        self._connecting = None
        if self._over:
            return
        self._end().errback(failure)

    def _send(self, connection: _Connection, reused: bool) -> None:
        self._connection = connection
        self._fresh = self._fresh or not reused
        self._exchange = _Exchange(self, self._request, self._keep)
        connection.send(self._exchange)

    def answered(self, answer: Answer) -> None:
        if not self._over:
            self._end().callback(answer)

    def lost(self, exchange: _Exchange, error: Exception) -> None:
        if self._over or exchange is not self._exchange:
            return
        if not exchange.started and not self._fresh:
            exchange.release()
            self._exchange = None
            self._connect()
            return
        self._end().errback(error)

    def stop(self, error: Exception) -> None:
        """The deadline passed, or the post was cancelled."""
        if self._over:
            return
        exchange, connection = self._exchange, self._connection
        done = self._end()
        if exchange is not None and connection is not None:
            connection.abort()
        if exchange is not None and exchange.has_head:
            done.callback(exchange.answer(whole=False))
        else:
            done.errback(error)

    def _end(self) -> Deferred[Answer]:
        """
        The post is over: stop its deadline and its connecting, and give the
        Deferred to fire.  What points back at the post (the Deferred's
        canceller, the deadline, the exchange and its parser) is let go, so
        that reference counting frees a post: left in cycles, a busy
        dispatcher's posts were the cyclic garbage the collector paused
        the reactor for, some 20 ms every few seconds.
        """
        self._over = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._exchange is not None:
            self._exchange.release()
            self._exchange = None
        done, self.done = self.done, None
        return done


class Posts:
    """
    Posts to webhooks over connections kept per scheme, host and port.

    :param max_idle: how many idle connections are kept per host; grow it
        with the posts made at a time to one host.
    :param idle_timeout: how long an idle connection is kept.
    """

    def __init__(
        self, reactor: Any, *, max_idle: int = 8, idle_timeout: float = IDLE_TIMEOUT
    ):
        self.reactor = reactor
        self.max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}

    def post(
        self,
        target: Target,
        headers: dict[bytes, list[bytes]],
        body: bytes,
        *,
        timeout: float,
        keep: int = 0,
    ) -> Deferred[Answer]:
        """
        POST ``body`` to ``target`` and fire with the `Answer`, its body kept
        if it is at most ``keep`` bytes.  Cancelling it closes its connection.

        :raises TimeoutError: no answer within ``timeout`` seconds.
        :raises AnswerLost: the connection ended before the answer did.
        :raises NotHTTP: the answer was not HTTP.
        """
        post = _Post(self, target, request(target, headers, body), keep)
        done = post.done
        post.start(timeout)
        return done

    def close(self) -> Deferred[None]:
        """Close the idle connections; fires once they are closed."""
        idle = [c for connections in self._idle.values() for c in connections]
        self._idle.clear()
        for connection in idle:
            connection.transport.loseConnection()
        return DeferredList([c.ended for c in idle]).addCallback(lambda _: None)

    def _connect(self, target: Target) -> Deferred[_Connection]:
        key = target.key
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(
                self.reactor, target.host.decode("ascii"), target.port
            )
            if target.scheme == b"https":
                creator = self._tls.creatorForNetloc(target.host, target.port)
                endpoint = wrapClientTLS(creator, endpoint)
            self._endpoints[key] = endpoint
        return connectProtocol(endpoint, _Connection(self, key))

    def _reuse(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target.key)
        if not idle:
            return None
        # The most recently used: the least likely to have been closed.
        connection = idle.pop()
        connection.stop_idle_timer()
        return connection

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle:
            connection.transport.loseConnection()
            return
        idle.append(connection)
        connection.idle_timer = self.reactor.callLater(
            self._idle_timeout, connection.transport.loseConnection
        )

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
        connection.stop_idle_timer()
