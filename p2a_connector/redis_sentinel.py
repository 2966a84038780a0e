"""
Sentinel discovery for the Redis spool: an endpoint that asks the Sentinels
for the current master on every connection attempt, so that
`p2a_connector.redis_spool.RedisSpool` follows a failover by reconnecting.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class _MasterEndpoint:
    """
    Connects to whichever server the Sentinels name as master at that moment,
    so every reconnection after a failover finds the promoted replica.

    txredisapi's own Sentinel connections check the server's role against a
    text string, which never matches when replies are bytes (``charset=None``,
    as this spool needs), so they refuse every master.  Limitation: this
    endpoint trusts the Sentinels' answer and does not check ROLE itself.
    """

    def __init__(self, reactor, sentinel, service: str, timeout: float):
        self._reactor = reactor
        self._sentinel = sentinel
        self._service = service
        self._timeout = timeout

    def connect(self, factory) -> Deferred:
        found = self._sentinel.discover_master(self._service)
        found.addTimeout(self._timeout * 2, self._reactor)

        def dial(address: tuple[str, int]) -> Deferred:
            host, port = address
            endpoint = HostnameEndpoint(
                self._reactor, host, port, timeout=self._timeout
            )
            return endpoint.connect(factory)

        return found.addCallback(dial)
