"""
Wake-ups between the processes on one Redis spool.

The scripts that store events end by publishing the names of the webhooks
they stored events for, as one JSON array, on the spool's channel
(``{p2a}:stored``; a cluster shard's on its own).  A process that stores
nothing itself, a dispatcher, subscribes to it and looks at those webhooks
within a few milliseconds instead of at its next poll, so an event waits
for a post, not for a poll interval.

A wake-up is a hint, never the record: one lost while the subscription
reconnects, or published with nobody listening, only leaves the event to
the poll, which finds every event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import txredisapi
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from p2a_connector.redis_commands import reconnecting

# The channel's name after the spool's key prefix; the Lua side is in
# redis_scripts (counted).
CHANNEL = "stored"


class _Subscriber(txredisapi.SubscriberProtocol):
    """Subscribes once connected (again after each reconnection)."""

    log = Logger()

    def connectionMade(self) -> Any:
        # The library's connectionMade authenticates first, then fires.
        made = super().connectionMade()
        made.addCallback(self._subscribe)
        return made

    def _subscribe(self, _: Any) -> Any:
        if not self.connected:
            return None
        subscribed = self.subscribe(list(self.factory.channels))
        return subscribed.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        # The poll still finds the events; the next connection tries again.
        self.log.warn(
            "cannot subscribe to the spool's wake-ups: {error}",
            error=failure.getErrorMessage(),
        )

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        try:
            names = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if not isinstance(names, list):
            return
        for name in names:
            if isinstance(name, str):
                self.factory.wake(name)


def subscribe(
    endpoint: Any,
    channels: Sequence[str],
    wake: Callable[[str], None],
    **options: Any,
) -> Any:
    """
    A connection through ``endpoint`` subscribed to ``channels``, calling
    ``wake`` with each webhook name published there, reconnecting on its
    own; ``disconnect()`` ends it.
    """
    factory = reconnecting(_Subscriber, None, None, **options)
    factory.channels = tuple(channels)
    factory.wake = wake
    factory.startConnecting(endpoint)
    return factory


@implementer(IStreamClientEndpoint)
class InTurn:
    """
    Connects through the first of ``endpoints`` that takes the connection,
    beginning with the one that last did: a subscription to a cluster,
    where any node passes on what every other publishes, moves to another
    node when its own goes down.
    """

    def __init__(self, endpoints: Iterable[Any]):
        self._endpoints = tuple(endpoints)
        if not self._endpoints:
            raise ValueError("no endpoint to connect through")
        self._first = 0

    def connect(self, factory: Any) -> Deferred:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        count = len(self._endpoints)
        for step in range(count):
            index = (self._first + step) % count
            try:
                protocol = await self._endpoints[index].connect(factory)
            except (CancelledError, ConnectingCancelledError):
                # Given up (the spool closing): no next endpoint.
                raise
            except Exception:
                if step == count - 1:
                    raise
                continue
            self._first = index
            return protocol
