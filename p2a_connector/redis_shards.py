"""
The Redis spool on a Redis Cluster: the spool split into shards, each a
whole `p2a_connector.redis_spool.RedisSpool` under its own hash tag
(``{p2a:0}``, ``{p2a:1}``, ...), so each shard lives in one hash slot and
its Lua scripts run whole on one master, while the shards spread over the
cluster's masters.

A message goes to the shard of its conversation (operator, sender and
number written to), and so do its segments, its conversation and USSD
session, the replies to it and the receipts' index of those replies: all
that one script must see together is in one shard.  Everything else is
asked of every shard and added up: the counts behind the limits, the
events due, the dead letters.

An event or outbound message handed out by `ShardedSpool.due` or
`ShardedSpool.outbound_due` is remembered with its shard until it is
reported on; an id this process has not handed out (an operator's replay,
a trail looked up) is looked for in every shard.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint

from p2a_connector import redis_wakeups as wakeups
from p2a_connector.config import parse_redis_url
from p2a_connector.conversation import conversation_key
from p2a_connector.outbound import Outbound, OutboundState
from p2a_connector.redis_cluster import Address, Cluster
from p2a_connector.redis_spool import RedisSpool, connection_options
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
)

_BOUNDS = ("max_reassemblies", "max_reassemblies_per_operator", "max_reassembly_bytes")


def shard_of(key: str, shards: int) -> int:
    """The shard that keeps what belongs to ``key``, the same in every process."""
    return zlib.crc32(key.encode()) % shards


def _split(bounds: Mapping[str, Any], shards: int) -> dict[str, Any]:
    """
    The reassembly bounds each shard enforces: an equal part of each, so
    the shards together never hold more than the whole bound.
    """
    # Limitation: a shard that gets more than its share of concatenated
    # traffic refuses new reassemblies before the total reaches the bound;
    # enforcing the total exactly would take a count outside the shards'
    # slots, which their scripts cannot change atomically.
    return {
        name: None if value is None else max(1, -(-value // shards))
        for name, value in bounds.items()
    }


class _Known(OrderedDict):
    """
    Ids and the shard that keeps each, as this process learnt them: a hint
    that spares looking in every shard, so the oldest are dropped past
    ``size`` (the ones another process reports on are never removed here).
    """

    def __init__(self, size: int = 100_000):
        super().__init__()
        self._size = size

    def learn(self, item_id: str, shard: RedisSpool) -> None:
        self[item_id] = shard
        self.move_to_end(item_id)
        if len(self) > self._size:
            self.popitem(last=False)


def _all(calls: list[Deferred]) -> Deferred[list]:
    return gatherResults(calls, consumeErrors=True).addErrback(
        lambda failure: failure.value.subFailure
    )


class ShardedSpool:
    """
    The `p2a_connector.spool.Spool` of several Redis spool shards on one
    Redis Cluster.

    :param seeds: ``(host, port)`` of some of the cluster's nodes.
    :param url: ``redis://[[user]:password@]host[:port]``; only the user and
        password are used, and the database must be 0, the only one a
        cluster has.
    :param shards: how many shards; every process sharing the spool must
        use the same number.  Several per master spread the load, but each
        dispatcher's look for due events asks every shard.
    :param options: as `RedisSpool` takes them, for every shard; the
        reassembly bounds are shared out equally between the shards.
    """

    def __init__(
        self,
        seeds: Sequence[Address],
        url: str,
        assembler: Assembler,
        reactor: Any,
        *,
        shards: int = 4,
        prefix: str = "p2a",
        timeout: float = 1.0,
        **options: Any,
    ):
        _, _, db, username, password = parse_redis_url(url)
        if db != 0:
            raise ValueError(f"a Redis Cluster has database 0 only, not {db}")
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        self.url = url
        self.prefix = prefix
        self._reactor = reactor
        self._timeout = timeout
        self._options = connection_options(username, password, timeout)
        self._watcher: Any = None
        self.cluster = Cluster(seeds, reactor, timeout=timeout, options=self._options)
        bounds = {name: options.pop(name, None) for name in _BOUNDS}
        self.shards = [
            RedisSpool(
                url,
                assembler,
                reactor,
                prefix=f"{prefix}:{index}",
                timeout=timeout,
                route=self.cluster.route("{" + f"{prefix}:{index}" + "}"),
                **_split(bounds, shards),
                **options,
            )
            for index in range(shards)
        ]
        # Which shard each event and outbound message handed out is in.
        self._events = _Known()
        self._outbound = _Known()
        self._next_first = 0
        # Due events the shards handed out past a look's limit, kept for the
        # next look: (due time, shard index, event, kept at).  Passed to the
        # shards as excluded, so that they do not read them back from the
        # stream.  One kept for half of claim_idle is let go: another
        # instance may claim it soon, and the shard's own reading finds it
        # while it is still this instance's.
        self._kept: list[tuple[float, int, PendingEvent, float]] = []
        self._keep_for = options.get("claim_idle", 60.0) / 2
        self._taking: set[str] = set()

    @property
    def where(self) -> str:
        seeds = ",".join(f"{host}:{port}" for host, port in self.cluster.seeds)
        return f"redis cluster {seeds} prefix {self.prefix} ({len(self.shards)} shards)"

    def _home(self, key: str) -> RedisSpool:
        return self.shards[shard_of(key, len(self.shards))]

    def _each(self, call: Callable[[RedisSpool], Deferred]) -> Deferred[list]:
        return _all([call(shard) for shard in self.shards])

    def _rotated(self) -> list[RedisSpool]:
        """The shards, from a different one each call: no shard waits for the rest."""
        first = self._next_first
        self._next_first = (first + 1) % len(self.shards)
        return self.shards[first:] + self.shards[:first]

    # --- lifecycle --------------------------------------------------------

    def open(self) -> Deferred[None]:
        return ensureDeferred(self._open())

    async def _open(self) -> None:
        try:
            await self.cluster.start()
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            await self.cluster.disconnect()
            raise SpoolError(f"spool {self.where}: {e}") from None
        opened = []
        try:
            for shard in self.shards:
                await shard.open()
                opened.append(shard)
        except SpoolError:
            for shard in opened:
                await shard.close()
            await self.cluster.disconnect()
            raise

    def close(self) -> Deferred[None]:
        async def run() -> None:
            watcher, self._watcher = self._watcher, None
            if watcher is not None:
                await watcher.disconnect()
            await self._each(lambda shard: shard.close())
            await self.cluster.disconnect()

        return ensureDeferred(run())

    def watch(self, wake: Callable[[str], None]) -> None:
        """
        `RedisSpool.watch` for every shard, on one connection to a seed: a
        cluster passes each message published on one node to all.  When
        that node goes down, the connection moves to the next seed that
        answers; meanwhile the poll alone finds new events.
        """
        if self._watcher is None:
            seeds = wakeups.InTurn(
                HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
                for host, port in self.cluster.seeds
            )
            self._watcher = wakeups.subscribe(
                seeds,
                [shard.wake_channel for shard in self.shards],
                wake,
                **self._options,
            )

    # --- events -----------------------------------------------------------

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        key = item.conversation or (item.key if isinstance(item, Segment) else item.id)
        return self._home(key).store(item)

    def expire(self, older_than: float) -> Deferred[list[Event]]:
        d = self._each(lambda shard: shard.expire(older_than))
        return d.addCallback(lambda lists: [event for got in lists for event in got])

    def pending(self) -> int:
        return sum(shard.pending() for shard in self.shards)

    def reassemblies(self) -> Reassemblies:
        count = size = 0
        by_operator: dict[str, int] = {}
        for shard in self.shards:
            held = shard.reassemblies()
            count += held.count
            size += held.bytes
            for operator, open_ in held.by_operator.items():
                by_operator[operator] = by_operator.get(operator, 0) + open_
        return Reassemblies(count=count, bytes=size, by_operator=by_operator)

    def set_bounds(self, **bounds: int | None) -> None:
        shares = _split(bounds, len(self.shards))
        for shard in self.shards:
            shard.set_bounds(**shares)

    def due(
        self,
        now: float,
        limit: int,
        exclude: Collection[str] = (),
        *,
        webhook: str | None = None,
    ) -> Deferred[list[PendingEvent]]:
        async def run() -> list[PendingEvent]:
            # The kept events this look may hand out leave the list now, so
            # that a look for another webhook running meanwhile keeps them
            # out of its own reading too.
            excluded = set(exclude)
            taken, others = [], []
            for entry in self._kept:
                event, kept_at = entry[2], entry[3]
                if now - kept_at > self._keep_for:
                    continue
                mine = webhook is None or event.webhook == webhook
                (taken if mine and event.id not in excluded else others).append(entry)
            self._kept = others
            taking = {entry[2].id for entry in taken}
            self._taking |= taking

            # Each shard may hold all the longest waiting, so each is asked
            # for what the kept ones leave of the limit; those past it are
            # kept, at most the limit times the shards less one.
            wanted = max(limit - len(taken), 0)
            try:
                found = []
                if wanted:
                    held = (
                        *exclude,
                        *(entry[2].id for entry in self._kept),
                        *self._taking,
                    )
                    found = await self._each(
                        lambda shard: ensureDeferred(
                            shard.due_since(now, wanted, held, webhook)
                        )
                    )
            except BaseException:
                self._kept.extend(taken)
                raise
            finally:
                self._taking -= taking

            events = taken + [
                (at, index, event, now)
                for index, got in enumerate(found)
                for at, event in got
            ]
            events.sort(key=lambda entry: entry[:2])
            self._kept.extend(events[limit:])
            for _, index, event, _ in events[:limit]:
                self._events.learn(event.id, self.shards[index])
            return [entry[2] for entry in events[:limit]]

        return ensureDeferred(run())

    def next_due(
        self, *, webhook: str | None = None, exclude: Collection[str] = ()
    ) -> Deferred[float | None]:
        d = self._each(lambda shard: shard.next_due(webhook=webhook, exclude=exclude))
        return d.addCallback(_earliest)

    def delivered(
        self,
        event_id: str,
        note: Mapping[str, Any] | None = None,
        replies: Sequence[Outbound] = (),
    ) -> Deferred[None]:
        def deliver(shard: RedisSpool) -> Deferred[None]:
            for message in replies:
                self._outbound.learn(message.id, shard)
            return shard.delivered(event_id, note, replies)

        return self._on_event(event_id, deliver)

    def retry(
        self,
        event_id: str,
        attempt: int,
        next_at: float,
        error: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        return self._on_event(
            event_id, lambda s: s.retry(event_id, attempt, next_at, error, note)
        )

    def dead(
        self,
        event_id: str,
        attempt: int,
        reason: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        return self._on_event(
            event_id, lambda s: s.dead(event_id, attempt, reason, note)
        )

    def _on_event(
        self, event_id: str, call: Callable[[RedisSpool], Deferred]
    ) -> Deferred:
        """``call`` on the event's shard; the event is reported on."""
        return self._on(self._events, "ev", event_id, True, call)

    def _on_outbound(
        self,
        outbound_id: str,
        call: Callable[[RedisSpool], Deferred],
        done: bool = True,
    ) -> Deferred:
        """``call`` on the outbound message's shard."""
        return self._on(self._outbound, "ob", outbound_id, done, call)

    def _on(
        self,
        known: _Known,
        kind: str,
        item_id: str,
        done: bool,
        call: Callable[[RedisSpool], Deferred],
    ) -> Deferred:
        """
        ``call`` on the shard that keeps ``item_id``: the one it was handed
        out from, else the one found holding it (``kind``, as
        `RedisSpool.holds` takes it), else the id's own, where the call finds
        nothing to change.  ``done``: the id is reported on and forgotten.
        """
        shard = known.pop(item_id, None) if done else known.get(item_id)
        if shard is not None:
            return call(shard)

        async def run() -> Any:
            return await call(await self._holder(kind, item_id))

        return ensureDeferred(run())

    async def _holder(self, kind: str, item_id: str) -> RedisSpool:
        held = await self._each(lambda shard: shard.holds(kind, item_id))
        for shard, holds in zip(self.shards, held):
            if holds:
                return shard
        return self._home(item_id)

    # --- dead letters and trails -----------------------------------------

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]:
        def merged(lists: list[list[dict]]) -> list[dict]:
            letters = [letter for got in lists for letter in got]
            letters.sort(key=lambda letter: letter["failed_at"])
            return letters[:limit]

        return self._each(lambda shard: shard.dead_letters(limit)).addCallback(merged)

    def dead_letter_count(self) -> Deferred[int]:
        return self._each(lambda shard: shard.dead_letter_count()).addCallback(sum)

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        def found(trails: list[list[dict]]) -> list[dict]:
            return next((steps for steps in trails if steps), [])

        return self._each(lambda shard: shard.trail(event_id)).addCallback(found)

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        return self._each(lambda shard: shard.replay(ids)).addCallback(sum)

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        return self._each(lambda shard: shard.purge(ids)).addCallback(sum)

    # --- two-way ----------------------------------------------------------

    def queue(self, messages: Sequence[Outbound]) -> Deferred[int]:
        by_shard: dict[int, list[Outbound]] = {}
        for message in messages:
            index = shard_of(_conversation_of(message), len(self.shards))
            by_shard.setdefault(index, []).append(message)
            self._outbound.learn(message.id, self.shards[index])
        queued = [self.shards[index].queue(group) for index, group in by_shard.items()]
        return _all(queued).addCallback(sum)

    def outbound_due(
        self,
        now: float,
        limit: int,
        *,
        operators: Collection[str] | None = None,
        lease: float = 60.0,
    ) -> Deferred[list[OutboundState]]:
        async def run() -> list[OutboundState]:
            taken: list[OutboundState] = []
            for shard in self._rotated():
                if len(taken) >= limit:
                    break
                got = await shard.outbound_due(
                    now, limit - len(taken), operators=operators, lease=lease
                )
                for state in got:
                    self._outbound.learn(state.message.id, shard)
                taken.extend(got)
            return taken

        return ensureDeferred(run())

    def next_outbound_due(
        self, *, operators: Collection[str] | None = None
    ) -> Deferred[float | None]:
        d = self._each(lambda shard: shard.next_outbound_due(operators=operators))
        return d.addCallback(_earliest)

    def outbound_progress(self, outbound_id: str, **report: Any) -> Deferred[None]:
        return self._on_outbound(
            outbound_id,
            lambda s: s.outbound_progress(outbound_id, **report),
            done=False,
        )

    def outbound_sent(self, outbound_id: str, **report: Any) -> Deferred[None]:
        return self._on_outbound(
            outbound_id, lambda s: s.outbound_sent(outbound_id, **report)
        )

    def outbound_retry(
        self, outbound_id: str, attempt: int, next_at: float, error: str, **report: Any
    ) -> Deferred[None]:
        return self._on_outbound(
            outbound_id,
            lambda s: s.outbound_retry(outbound_id, attempt, next_at, error, **report),
        )

    def outbound_failed(
        self, outbound_id: str, attempt: int, reason: str, event: Event
    ) -> Deferred[None]:
        return self._on_outbound(
            outbound_id,
            lambda s: s.outbound_failed(outbound_id, attempt, reason, event),
        )

    def outbound(self, outbound_id: str) -> Deferred[OutboundState | None]:
        def found(states: list[OutboundState | None]) -> OutboundState | None:
            return next((state for state in states if state is not None), None)

        return self._each(lambda shard: shard.outbound(outbound_id)).addCallback(found)

    def reply_for(self, message_id: str, operator: str) -> Deferred[str | None]:
        d = self._each(lambda shard: shard.reply_for(message_id, operator))
        return d.addCallback(lambda ids: next((i for i in ids if i is not None), None))

    def outbound_pending(self) -> int:
        return sum(shard.outbound_pending() for shard in self.shards)

    def conversation_of(self, key: str) -> Deferred[dict | None]:
        return self._home(key).conversation_of(key)

    def end_session(self, key: str) -> Deferred[None]:
        return self._each(lambda shard: shard.end_session(key)).addCallback(
            lambda _: None
        )


def _earliest(times: list[float | None]) -> float | None:
    return min((at for at in times if at is not None), default=None)


def _conversation_of(message: Outbound) -> str:
    """The conversation key of the person an outbound message is sent to."""
    return conversation_key(
        message.operator,
        str(message.destination.get("address", "")),
        str(message.source.get("address", "")),
    )
