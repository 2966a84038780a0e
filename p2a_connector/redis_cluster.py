"""
Redis Cluster for the Redis spool: which master serves a hash slot, one
pipelined connection per master, and a `Route` per hash tag that sends
every command to the master serving the tag's slot, following the
cluster's MOVED and ASK redirections.

txredisapi speaks to one server, and no Twisted library speaks Cluster;
this is the part of a Cluster client the spool needs.  It routes by a tag
given up front instead of reading keys out of commands, because every key a
shard of the spool (`p2a_connector.redis_shards`) touches carries that
shard's one hash tag: all of a shard lives in one slot, so each of its Lua
scripts runs whole on one master.

When a master fails, Redis Cluster promotes one of its replicas.  Commands
to the failed master time out or lose their connection; each such failure
asks the cluster again which node serves which slot (at most once at a
time), so the spool finds the new master without a restart.

Limitation: a slot must not be resharded while the spool writes to it.
The scripts build most of their keys from the prefix instead of declaring
them, so Redis cannot redirect a script whose keys are half migrated: it
runs on the old master, which no longer has the keys already moved.  A
slot moved whole is followed (MOVED).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector.redis_commands import connect

SLOTS = 16384

# A command redirected more often than this is failed: the cluster is
# resharding faster than the spool can follow, or misconfigured.
MAX_REDIRECTS = 5

Address = tuple[str, int]


def key_slot(key: str | bytes) -> int:
    """
    The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of
    its hash tag, the text between the first ``{`` and the next ``}`` when
    that is not empty, else of the whole key.
    """
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redirection(error: txredisapi.ResponseError) -> tuple[str, Address] | None:
    """``("MOVED" | "ASK", (host, port))`` of a redirection error, else None."""
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0], (host.strip("[]"), int(port))


def _slot_map(reply: Sequence[Any]) -> dict[int, Address]:
    """Slot ranges to masters from a CLUSTER SLOTS reply."""
    masters = {}
    for entry in reply:
        first, last, master = entry[0], entry[1], entry[2]
        address = (_text(master[0]), int(master[1]))
        for slot in range(int(first), int(last) + 1):
            masters[slot] = address
    return masters


class Cluster:
    """
    Connections to the masters of one Redis Cluster, found from ``seeds``.

    :param seeds: ``(host, port)`` of some of the cluster's nodes; any one
        that answers tells where the others are.
    :param options: given to each txredisapi connection (password, charset,
        timeouts).
    """

    log = Logger()

    def __init__(
        self,
        seeds: Sequence[Address],
        reactor: Any,
        *,
        timeout: float,
        options: dict[str, Any],
    ):
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self._seeds = tuple(seeds)
        self._reactor = reactor
        self._timeout = timeout
        self._options = options
        self._masters: dict[int, Address] = {}
        self._connections: dict[Address, Any] = {}
        self._refreshing: Deferred | None = None

    def route(self, tag: str) -> Route:
        """Where the keys with hash tag ``tag`` (``{...}``) are sent."""
        return Route(self, key_slot(tag))

    @property
    def seeds(self) -> tuple[Address, ...]:
        return self._seeds

    @property
    def masters(self) -> list[Address]:
        """The masters serving slots, as last learnt."""
        return sorted(set(self._masters.values()))

    def serving(self, slot: int) -> Address | None:
        """The master that serves ``slot``, as last learnt."""
        return self._masters.get(slot)

    def start(self) -> Deferred[None]:
        """Learn the slot map; errback if no seed answers."""
        return ensureDeferred(self._learn())

    async def _learn(self) -> None:
        """Ask the known masters, then the seeds, which node serves each slot."""
        errors = []
        for address in (*self.masters, *self._seeds):
            where = f"{address[0]}:{address[1]}"
            try:
                reply = await self._ask(address, "CLUSTER", "SLOTS")
            except txredisapi.ResponseError as e:
                errors.append(f"{where}: {e}")
                continue
            except (CancelledError, DeferredTimeout, txredisapi.ConnectionError):
                errors.append(f"{where}: no answer within {self._timeout:g} s")
                continue
            masters = _slot_map(reply)
            if len(masters) < SLOTS:
                errors.append(
                    f"{where}: serves {len(masters)} of {SLOTS} slots; "
                    "the cluster is not fully set up"
                )
                continue
            self._masters = masters
            return
        raise txredisapi.ConnectionError(
            "cannot learn which master serves which slot: "
            + "; ".join(errors)
            + "; check spool.cluster and that the cluster runs"
        )

    def _ask(self, address: Address, *args: Any) -> Deferred:
        d = self._connection(address).execute_command(*args)
        return d.addTimeout(self._timeout, self._reactor)

    def relearn(self) -> None:
        """Learn the slot map again in the background, once at a time."""
        if self._refreshing is not None:
            return

        def done(result: Any) -> None:
            self._refreshing = None
            if isinstance(result, Failure):
                self.log.warn(
                    "cannot learn the Redis Cluster's slot map: {error}",
                    error=str(result.value),
                )

        self._refreshing = ensureDeferred(self._learn())
        self._refreshing.addBoth(done)

    def _connection(self, address: Address) -> Any:
        connection = self._connections.get(address)
        if connection is None:
            host, port = address
            endpoint = HostnameEndpoint(
                self._reactor, host, port, timeout=self._timeout
            )
            connection = self._connections[address] = connect(
                endpoint, f"{host}:{port}", None, **self._options
            )
        return connection

    async def run(self, slot: int, args: tuple) -> Any:
        """A command's reply from the master serving ``slot``."""
        address = self._masters.get(slot, self._seeds[0])
        asking = False
        for _ in range(MAX_REDIRECTS):
            connection = self._connection(address)
            try:
                if asking:
                    # ASKING holds for the next command of this connection
                    # only; both go out together, in order.
                    asked = connection.execute_command("ASKING")
                    asked.addErrback(lambda _: None)  # the command fails too
                return await connection.execute_command(*args)
            except txredisapi.ResponseError as e:
                redirection = _redirection(e)
                if redirection is None:
                    raise
                kind, address = redirection
                asking = kind == "ASK"
                if kind == "MOVED":
                    self._masters[slot] = address
                    self.relearn()
            except (
                CancelledError,
                DeferredTimeout,
                txredisapi.ConnectionError,
            ):
                # The master may have failed over to a replica.
                self.relearn()
                raise
        raise txredisapi.ResponseError(
            f"redirected {MAX_REDIRECTS} times; the cluster keeps moving slot {slot}"
        )

    async def disconnect(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.disconnect()


class Route:
    """
    One hash slot's commands, for a `p2a_connector.redis_spool.RedisSpool`
    in place of its own connection: the same ``execute_command``.
    """

    def __init__(self, cluster: Cluster, slot: int):
        self.cluster = cluster
        self.slot = slot

    def execute_command(self, *args: Any) -> Deferred:
        return ensureDeferred(self.cluster.run(self.slot, args))

    async def disconnect(self) -> None:
        """The cluster's connections are closed by their owner."""
