"""
The HTTP side of webhook delivery: the retry schedule and ``Retry-After``,
how a failed post is described and which answers are retried, and the
plumbing `p2a_connector.dispatcher.Dispatcher` posts through: Twisted's Agent
on a persistent pool, a body written at once, answers read to a bound,
endpoints made once per host, URLs encoded once per webhook.

treq is not used for the posts: under load its request path (the URL parsed
and IDNA-encoded, cookie and content-decoding agents, on every post) took
about a fifth of the daemon's reactor thread.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from hyperlink import EncodedURL
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

# Seconds to wait before attempts 1 to 10: the Standard Webhooks schedule.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


# A receiver's Retry-After may lengthen a wait up to this, never beyond.
MAX_RETRY_AFTER = 86400.0


# How far a scheduled wait is spread either way, so that events that failed
# together do not all come back together.
JITTER = 0.2


_RETRIED_STATUSES = (408, 429)


def retry_delay(
    schedule: Sequence[float],
    attempts: int,
    random: Callable[[], float] = _random.random,
    retry_after: float | None = None,
) -> float | None:
    """
    Seconds to wait after ``attempts`` failed attempts, or None to give up.

    The scheduled wait gets ±`JITTER`; a ``Retry-After`` from the receiver
    may lengthen it, up to `MAX_RETRY_AFTER`, but never shortens it.
    """
    if attempts >= len(schedule):
        return None
    delay = schedule[attempts] * (1 - JITTER + 2 * JITTER * random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return max(delay, 0.0)


def parse_retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delay or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _retried(status: int) -> bool:
    return status in _RETRIED_STATUSES or 500 <= status <= 599


def _describe(failure: Failure, timeout: float) -> str:
    """A short, operator-readable reason for a failed post."""
    if failure.check(TimeoutError):
        return f"no response within {timeout:g}s"
    if failure.check(DNSLookupError):
        return f"cannot resolve the host: {failure.value}"
    if failure.check(ConnectError):
        return f"cannot connect: {failure.getErrorMessage().rstrip('.')}"
    if failure.check(ResponseNeverReceived):
        reasons = failure.value.reasons
        inner = reasons[0].getErrorMessage() if reasons else "connection lost"
        return f"no response: {inner}"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


class _Collect(Protocol):
    """
    Reads a response body to its end, keeping at most ``keep`` bytes of it:
    a bigger body is read and thrown away, and comes out as None.
    """

    def __init__(self, done: Deferred[bytes | None], keep: int):
        self.done = done
        self._keep = keep
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= self._keep:
            self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            kept = self._size <= self._keep
            self.done.callback(b"".join(self._chunks) if kept else None)


@implementer(IBodyProducer)
class _Body:
    """
    An event's body, written as soon as the request asks for it.

    A FileBodyProducer (what treq makes of bytes) writes them a
    cooperator turn later, as a second small TCP segment after the headers;
    written at once, headers and body leave together.
    """

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def request_url(url: str) -> bytes:
    """
    A webhook URL as the Agent takes it, encoded once per webhook (IDNA host,
    percent-encoded path), not on every post as treq would.
    """
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The agent's endpoints, one per scheme, host and port, made on first use
    rather than for every post (each costs a host name encoding, and for
    https a TLS policy lookup).
    """

    def __init__(self, reactor: Any):
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
            if uri.scheme == b"https":
                creator = self._tls.creatorForNetloc(uri.host, uri.port)
                endpoint = wrapClientTLS(creator, endpoint)
            self._made[key] = endpoint
        return endpoint


def _drain(
    response: IResponse, timeout: float, reactor: IReactorTime, keep: int = 0
) -> Deferred[bytes | None]:
    """
    Consume the body so the connection can carry the next request, and fire
    with it when it is at most ``keep`` bytes (else None); a body that does
    not end within ``timeout`` has its connection closed, and is None too.
    """

    def abort(_: Deferred) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()

    done: Deferred[bytes | None] = Deferred(abort)
    protocol = _Collect(done, keep)
    response.deliverBody(protocol)
    done.addTimeout(max(timeout, 0.0), reactor)
    done.addErrback(lambda _: None)
    return done
