"""
The spool in Redis, shared by several connector instances.

Same promise as `p2a_connector.sqlite_spool.SqliteSpool`: `RedisSpool.store`
fires only once Redis has answered the write, which with the AOF enabled
(``appendfsync everysec`` or ``always``) means the write is in the AOF.  Every
change is one Lua script (`p2a_connector.redis_scripts`), so instances never
see half of another's work, and the counts behind the limits live in Redis,
where all instances share them.  The writes that every message makes
(stores, deliveries, segments) are gathered per reactor turn and sent as
one script call that does them all in order
(`p2a_connector.redis_commands.ScriptBatch`).

Events wait in one Redis Stream per webhook, read through a consumer group:
`RedisSpool.due` hands this instance its own unacknowledged entries, entries
another instance has held for ``claim_idle`` seconds without acknowledging
(it died, most likely), and new ones.  A failed attempt takes the event out
of the stream into a sorted set by next attempt time, from which `due` moves
it back once it is due.

The parts are base classes of `RedisSpool`: commands and scripts with
their timeout (`p2a_connector.redis_commands`), reassembly
(`p2a_connector.redis_reassembly`), the outbound queue, conversations and
USSD sessions (`p2a_connector.redis_twoway`, their Lua in
`p2a_connector.redis_outbound`) and dead letters
(`p2a_connector.redis_dead_letters`); Sentinel discovery is
`p2a_connector.redis_sentinel`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import orjson
import txredisapi
from twisted.internet import task
from twisted.internet.defer import (
    Deferred,
    ensureDeferred,
    fail,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from p2a_connector import conversation, trail
from p2a_connector import outbound as outbound_
from p2a_connector import redis_outbound as outbound_scripts
from p2a_connector import redis_reassembly_scripts as reassembly_scripts
from p2a_connector import redis_scripts as scripts
from p2a_connector import redis_wakeups as wakeups
from p2a_connector.config import parse_redis_url as parse_url
from p2a_connector.decode import iso_time
from p2a_connector.outbound import Outbound
from p2a_connector.redis_commands import (
    GROUP,
    RedisCommands,
    ScriptBatch,
    _filled,
    _number,
    _text,
    connect,
)
from p2a_connector.redis_dead_letters import DeadLetters
from p2a_connector.redis_reassembly import HeldHere, Reassembly
from p2a_connector.redis_sentinel import _MasterEndpoint
from p2a_connector.redis_twoway import TwoWay
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
)

# The most time between two looks for other instances' idle entries; with a
# short claim_idle, a quarter of it.
CLAIM_EVERY = 1.0


def connection_options(
    username: str | None, password: str | None, timeout: float
) -> dict[str, Any]:
    """What every txredisapi connection of the spool is given."""
    return {
        "charset": None,
        "password": password,
        "username": username,
        "convertNumbers": False,
        "replyTimeout": timeout * 5,
    }


class RedisSpool(RedisCommands, Reassembly, TwoWay, DeadLetters):
    """
    The spool in Redis, for any number of connector instances.

    Every Redis command gets ``timeout`` seconds; a command that gets no
    answer in time (Redis down, unreachable, failing over) errbacks with
    `SpoolError`, and the connection is re-established in the background, so
    the spool works again when Redis does, without being reopened.

    :param url: ``redis://[[user]:password@]host[:port][/db]``.
    :param prefix: begins every key, as a hash tag (``{p2a}:...``); instances
        sharing a prefix share the spool.
    :param sentinels: ``(host, port)`` of Redis Sentinels; when given, the
        master of ``sentinel_master`` is asked for, and ``url`` gives only
        the database and password.
    :param consumer: this instance's name in the consumer group; unique per
        process by default.
    :param claim_idle: seconds after which an event another instance took
        and never acknowledged is handed to this one.  Keep it above the
        longest webhook timeout, or a slow post is made twice.
    :param refresh_interval: how often `pending` and `reassemblies` are
        refreshed from Redis, to see the other instances' work.
    :param trail_keep: how long an event's trail (`p2a_connector.trail`) is
        kept after its last step; None keeps no trail.
    :param conversation_idle: seconds of silence after which a person's next
        message starts a new conversation (`p2a_connector.conversation`).
    :param ussd_idle: seconds of silence after which `expire` ends a USSD
        session with a ``session.ended`` event.
    :param outbound_keep: how long a sent or failed outbound message is kept.
    :param receipt_keep: how long `reply_for` finds a sent part's message_id.
    :param route: a `p2a_connector.redis_cluster.Route` to send every command
        through instead of a connection of its own: a shard of the spool in
        a Redis Cluster (`p2a_connector.redis_shards`); ``url`` then gives
        only the password.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        assembler: Assembler,
        reactor: Any,
        *,
        prefix: str = "p2a",
        sentinels: Sequence[tuple[str, int]] = (),
        sentinel_master: str = "mymaster",
        consumer: str | None = None,
        claim_idle: float = 60.0,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
        timeout: float = 1.0,
        refresh_interval: float = 5.0,
        completed_ttl: float = 600.0,
        max_reassemblies: int | None = None,
        max_reassemblies_per_operator: int | None = None,
        max_reassembly_bytes: int | None = None,
        trail_keep: float | None = trail.DEFAULT_KEEP,
        conversation_idle: float = conversation.DEFAULT_IDLE,
        ussd_idle: float = conversation.DEFAULT_USSD_IDLE,
        outbound_keep: float = outbound_.DEFAULT_KEEP,
        receipt_keep: float = outbound_.DEFAULT_RECEIPT_KEEP,
        route: Any = None,
    ):
        self.url = url
        self._route = route
        self._conversation_idle = _number(conversation_idle)
        self._ussd_idle = ussd_idle
        self._outbound_keep = str(round(outbound_keep * 1000))
        self._receipt_keep = str(round(receipt_keep * 1000))
        self._outbound = 0
        self._trail_keep = "0" if trail_keep is None else str(round(trail_keep * 1000))
        self.prefix = prefix
        self._keys = "{" + prefix + "}:"
        self._assembler = assembler
        self._reactor = reactor
        self._sentinels = tuple(sentinels)
        self._sentinel_master = sentinel_master
        self.consumer = consumer or (
            f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        )
        self._claim_idle = claim_idle
        # What `due` handed out and no outcome has been recorded for yet, by
        # webhook, and the webhooks whose own stream entries were read to the
        # end once: while every handed-out event is in flight (excluded), the
        # own entries hold nothing else, and `due` does not read them.
        self._handed: dict[str, str] = {}
        self._own_read: set[str] = set()
        # Other instances' idle entries are looked for at most this often
        # in each webhook's stream: each look scans its unacknowledged
        # entries.  When each stream may be looked at next, by webhook.
        self._claim_every = min(claim_idle / 4, CLAIM_EVERY)
        self._next_claim: dict[str, float] = {}
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout
        self._timeout = timeout
        self._refresh_interval = refresh_interval
        self._completed_ttl = completed_ttl
        self._bounds = {
            "max_reassemblies": max_reassemblies,
            "max_reassemblies_per_operator": max_reassemblies_per_operator,
            "max_reassembly_bytes": max_reassembly_bytes,
        }
        self._redis: Any = None
        self._sentinel: Any = None
        self._watcher: Any = None
        self._refresher: task.LoopingCall | None = None
        self._pending = 0
        self._reassemblies = Reassemblies()
        # The hot writes, one script call per reactor turn for all messages.
        self._stores = ScriptBatch(self._store_batch, reactor)
        self._deliveries = ScriptBatch(self._delivered_batch, reactor)
        self._segment_adds = ScriptBatch(self._segment_batch, reactor)
        self._held_here = HeldHere()
        self._finishes = ScriptBatch(self._finish_batch, reactor)

    @property
    def where(self) -> str:
        """The spool's location for messages, without any password."""
        host, port, db, _, _ = parse_url(self.url)
        if self._route is not None:
            return f"redis cluster slot {self._route.slot} prefix {self.prefix}"
        if self._sentinels:
            return f"redis sentinel master {self._sentinel_master} db {db}"
        return f"redis://{host}:{port}/{db} prefix {self.prefix}"

    # --- lifecycle --------------------------------------------------------

    def open(self) -> Deferred[None]:
        """Connect and load the scripts; errback with SpoolError if unusable."""
        try:
            self._connect()
        except ValueError as e:
            return fail(SpoolError(f"spool {self.url}: {e}"))
        return ensureDeferred(self._open())

    async def _open(self) -> None:
        try:
            for script in (
                *scripts.ALL,
                *reassembly_scripts.ALL,
                *outbound_scripts.ALL,
            ):
                await self._command("SCRIPT", "LOAD", script.source)
            await self._counted(scripts.COUNTS, (), self._keys)
        except SpoolError:
            await self._disconnect()
            raise
        self._refresher = task.LoopingCall(self._refresh)
        self._refresher.clock = self._reactor
        self._refresher.start(self._refresh_interval, now=False)
        self.log.info(
            "spool {where} open with {pending} pending events and {reassemblies} "
            "messages waiting for segments",
            where=self.where,
            pending=self._pending,
            reassemblies=self._reassemblies.count,
        )

    def _connect(self) -> None:
        if self._route is not None:
            self._redis = self._route
            return
        host, port, db, _, _ = parse_url(self.url)
        if self._sentinels:
            self._sentinel = txredisapi.Sentinel(list(self._sentinels))
        # One connection carries every command, pipelined: Redis runs them
        # in the order they were sent, so a read sent after a write sees it
        # (a receipt looked up after outbound_progress finds its part), and
        # WAIT, which counts only the writes of its own connection, covers
        # them all.  A pool would spread them over connections and lose both.
        self._redis = connect(self._endpoint(), f"{host}:{port}", db, **self._options())

    def _endpoint(self) -> Any:
        """Where a connection goes: the Sentinels' master, or the url's server."""
        if self._sentinel is not None:
            return _MasterEndpoint(
                self._reactor, self._sentinel, self._sentinel_master, self._timeout
            )
        host, port, _, _, _ = parse_url(self.url)
        return HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)

    def _options(self) -> dict[str, Any]:
        _, _, _, username, password = parse_url(self.url)
        return connection_options(username, password, self._timeout)

    @property
    def wake_channel(self) -> str:
        """Where this spool's scripts name the webhooks they stored events for."""
        return self._keys + wakeups.CHANNEL

    def watch(self, wake: Callable[[str], None]) -> None:
        """
        Call ``wake`` with a webhook's name whenever any process stores
        events for it (`p2a_connector.redis_wakeups`), from now until the
        spool closes; for a process that stores none itself.  A cluster
        shard leaves this to its `ShardedSpool`.
        """
        if self._route is None and self._watcher is None:
            self._watcher = wakeups.subscribe(
                self._endpoint(), [self.wake_channel], wake, **self._options()
            )

    def close(self) -> Deferred[None]:
        """Stop refreshing and close the connections."""
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        self._refresher = None
        return ensureDeferred(self._disconnect())

    async def _disconnect(self) -> None:
        redis, self._redis = self._redis, None
        sentinel, self._sentinel = self._sentinel, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.disconnect()
        if redis is not None:
            await redis.disconnect()
        if sentinel is not None:
            await sentinel.disconnect()

    async def _refresh(self) -> None:
        try:
            await self._counted(scripts.COUNTS, (), self._keys)
        except SpoolError as e:
            self.log.warn(
                "spool {where}: cannot refresh the counts: {error}",
                where=self.where,
                error=str(e),
            )

    # --- writes -----------------------------------------------------------

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        """
        Keep an event or a segment; fire once Redis has it.

        Fires as `SqliteSpool.store` does: the new Event, the Event the
        segment completed, or None.  Errbacks with `SpoolLimit` for a segment
        past a bound, and with `SpoolError` when Redis does not answer.
        """
        if isinstance(item, Event):
            now = self._reactor.seconds()
            stored = self._stores.add(self._event_args(item, now))
            return stored.addCallback(
                lambda result: _filled(item, result) if result else None
            )
        if isinstance(item, Segment):
            stored = self._store_segment(item)
            if self._wait_replicas:
                stored = self._replicated(stored)
            return ensureDeferred(stored)
        raise TypeError(f"the spool stores Event or Segment, not {type(item)!r}")

    async def _replicated(self, stored: Any) -> Event | None:
        """
        What ``stored`` gives, once ``wait_replicas`` replicas have every write
        this connection made (Redis WAIT); else SpoolError, so the SMSC is
        answered the busy status and offers the PDU again.  A segment offered
        again is recognised; a single message is stored again, so it may be
        delivered twice: that, not a loss, is the price of a slow replica.
        """
        result = await stored
        if self._wait_replicas == 0:
            return result
        acknowledged = await self._command(
            "WAIT", self._wait_replicas, round(self._wait_timeout * 1000)
        )
        if int(acknowledged) < self._wait_replicas:
            raise SpoolError(
                f"spool {self.where}: {acknowledged} of {self._wait_replicas} "
                f"replicas had the write within {self._wait_timeout:g} s "
                "(spool.wait_replicas); not acknowledged, the SMSC will retry"
            )
        return result

    async def _store_batch(self, batch: list[tuple]) -> list[tuple | None]:
        """
        Store a batch of events in one script; per event the conversation it
        was given (as _filled takes it), or None if it was kept already.
        """
        stored = self._batched(scripts.STORE, batch, self._keys, GROUP)
        return [
            (conversation,) if status == "stored" else None
            for status, conversation in await self._replicated(stored)
        ]

    def _event_args(self, event: Event, now: float) -> tuple:
        """The fifteen arguments of one event for the store_event scripts."""
        done = trail.stored(now, webhook=event.webhook, type=event.type)
        return (
            event.id,
            event.type,
            event.webhook,
            event.body,
            _number(event.created_at),
            _number(now),
            self._steps(*event.trail, done),
            self._trail_keep,
            *self._context(event, now),
        )

    def _context(self, event: Event, now: float) -> tuple[str, ...]:
        """The conversation and USSD session arguments of a stored event."""
        key = event.conversation or ""
        fresh = conversation.conversation_id_for(event.id) if key else ""
        fresh_iso = iso_time(event.created_at) if key else ""
        ussd, info, ended = "", "", "0"
        if event.ussd is not None:
            ussd, details = event.ussd
            info = json.dumps(details, separators=(",", ":"))
            ended = "1" if (details.get("session") or {}).get("end") else "0"
        return (key, fresh, fresh_iso, self._conversation_idle, ussd, info, ended)

    def _steps(self, *steps: dict) -> str:
        """Trail steps as the scripts take them: JSON lines, or '' for none."""
        if self._trail_keep == "0":
            return ""
        return "\n".join(trail.encode(steps))

    def expire(self, older_than: float) -> Deferred[list[Event]]:
        """
        Deliver, incomplete, the messages whose first segment arrived before
        ``older_than``; a message whose assembler fails keeps its segments and
        is tried again by the next call.  Also recounts `pending`.
        """
        return ensureDeferred(self._expire(older_than))

    async def _expire(self, older_than: float) -> list[Event]:
        stale = await self._command(
            "ZRANGEBYSCORE", self._keys + "open", "-inf", "(" + _number(older_than)
        )
        events = []
        for member in stale:
            seg = _text(member)
            done = self._keys + "done:" + seg.rsplit(":", 1)[1]
            read = await self._script_keys(
                reassembly_scripts.READ_SEGMENTS, (seg,), self._keys
            )
            if not read:
                continue
            token, *records = (_text(value) for value in read)
            webhook = _text(await self._command("HGET", seg, "webhook"))
            try:
                event = self._assemble(records, webhook, complete=False)
            except Exception:  # noqa: BLE001 - one bad message must not block the rest
                self.log.failure(
                    "cannot assemble the expired message {key}; its segments are kept",
                    key=seg,
                )
                continue
            status, extra = await self._finish((seg, done), token, event, "expire")
            if status == "stored":
                events.append(_filled(event, extra))
        events.extend(await self._end_idle_sessions())
        await self._counted(scripts.RECOUNT, (), self._keys)
        return events

    def delivered(
        self,
        event_id: str,
        note: Mapping[str, Any] | None = None,
        replies: Sequence[Outbound] = (),
    ) -> Deferred[None]:
        """
        Forget a delivered event, acknowledging its stream entry, and queue
        ``replies`` in the same script; replies are queued (by id, once)
        even when the event was delivered already.
        """
        now = self._reactor.seconds()
        done = trail.step(now, "delivered", **(note or {}))
        queued = self._queued_args(replies, now)
        recorded = self._deliveries.add(
            (event_id, self._steps(done), _number(now), len(replies), *queued)
        )
        return self._outcome(recorded, event_id)

    async def _delivered_batch(self, batch: list[tuple]) -> list[None]:
        return await self._batched(
            scripts.DELIVERED, batch, self._keys, GROUP, self._trail_keep
        )

    def retry(
        self,
        event_id: str,
        attempt: int,
        next_at: float,
        error: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        """Record a failed attempt; the event is due again at ``next_at``."""
        failed = trail.attempt_failed(
            self._reactor.seconds(), attempt, error, next_at, note
        )
        recorded = self._done(
            scripts.RETRY,
            event_id,
            attempt,
            _number(next_at),
            error,
            self._steps(failed),
        )
        return self._outcome(recorded, event_id)

    def _done(self, script: scripts.Script, *args: Any) -> Deferred[None]:
        async def run() -> None:
            await self._counted(script, (), self._keys, GROUP, *args, self._trail_keep)

        return ensureDeferred(run())

    # --- reads ------------------------------------------------------------

    def pending(self) -> int:
        """
        How many events wait for delivery, all instances together, as of the
        last write or refresh: no I/O.
        """
        return self._pending

    def reassemblies(self) -> Reassemblies:
        """The messages waiting for segments, all instances together."""
        return self._reassemblies

    def set_bounds(self, **bounds: int | None) -> None:
        """The ``max_reassembl*`` bounds, anew, from the next segment on."""
        self._bounds = {**self._bounds, **bounds}

    def due(
        self,
        now: float,
        limit: int,
        exclude: Collection[str] = (),
        *,
        webhook: str | None = None,
    ) -> Deferred[list[PendingEvent]]:
        """
        Events this instance may post now, waiting longest first, leaving out
        ``exclude`` (the ones in flight).  Handed out events stay this
        instance's until acknowledged, or ``claim_idle`` seconds idle.
        """
        d = ensureDeferred(self.due_since(now, limit, tuple(exclude), webhook))
        return d.addCallback(lambda events: [pending for _, pending in events])

    async def due_since(
        self, now: float, limit: int, exclude: Collection[str], webhook: str | None
    ) -> list[tuple[float, PendingEvent]]:
        """`due`, each event with the time it became due, longest waiting first."""
        excluded = set(exclude)
        events: list[tuple[float, PendingEvent]] = []
        for name in await self._webhooks(webhook):
            claim_idle = 0
            if now >= self._next_claim.get(name, 0.0):
                self._next_claim[name] = now + self._claim_every
                claim_idle = round(self._claim_idle * 1000)
            own = name not in self._own_read or any(
                hook == name and event_id not in excluded
                for event_id, hook in self._handed.items()
            )
            reply = await self._script(
                scripts.DUE,
                self._keys,
                GROUP,
                self.consumer,
                name,
                _number(now),
                limit - len(events),
                claim_idle,
                "1" if own else "0",
                *(exclude if own or claim_idle else ()),
            )
            rows, complete = orjson.loads(reply)
            handed = set()
            for row in rows:
                event_id, event_type, hook, body, attempt, created, next_at = row
                pending = PendingEvent(
                    id=event_id,
                    type=event_type,
                    webhook=hook,
                    body=body.encode(),
                    attempt=int(attempt),
                    created_at=float(created),
                )
                events.append((float(next_at), pending))
                handed.add(event_id)
            if complete:
                self._forget_handed(name, excluded | handed)
            self._handed.update((event_id, name) for event_id in handed)
            if len(events) >= limit:
                break
        events.sort(key=lambda pair: pair[0])
        return events

    def _forget_handed(self, webhook: str, kept: set[str]) -> None:
        """The own entries of ``webhook`` were all read: only ``kept`` remain."""
        self._own_read.add(webhook)
        for event_id, hook in list(self._handed.items()):
            if hook == webhook and event_id not in kept:
                del self._handed[event_id]

    def _outcome(self, recorded: Deferred[None], event_id: str) -> Deferred[None]:
        """Once an outcome is recorded, the event's entry is no longer own."""

        def done(result: None) -> None:
            self._handed.pop(event_id, None)
            return result

        return recorded.addCallback(done)

    async def _webhooks(self, webhook: str | None) -> list[str]:
        if webhook is not None:
            return [webhook]
        names = await self._command("SMEMBERS", self._keys + "webhooks")
        return sorted(_text(name) for name in names)

    def next_due(
        self, *, webhook: str | None = None, exclude: Collection[str] = ()
    ) -> Deferred[float | None]:
        """
        When `due` next has something not in ``exclude``, or None; for an
        event another instance holds, when it becomes claimable.
        """
        return ensureDeferred(self._next_due(webhook, tuple(exclude)))

    async def _next_due(
        self, webhook: str | None, exclude: tuple[str, ...]
    ) -> float | None:
        times = []
        for name in await self._webhooks(webhook):
            at = await self._script(
                scripts.NEXT_DUE,
                self._keys,
                GROUP,
                self.consumer,
                name,
                _number(self._reactor.seconds()),
                round(self._claim_idle * 1000),
                _number(self._next_claim.get(name, 0.0)),
                *exclude,
            )
            if at is not None:
                times.append(float(at))
        return min(times, default=None)

    def holds(self, kind: str, item_id: str) -> Deferred[bool]:
        """
        Whether the spool keeps an event (``kind`` ``"ev"``) or an outbound
        message (``"ob"``) of that id: the shard that has it, for
        `p2a_connector.redis_shards`.
        """
        d = self._command("EXISTS", self._keys + kind + ":" + item_id)
        return d.addCallback(lambda count: int(count) > 0)

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        """The event's trail, oldest step first; empty if unknown or forgotten."""
        d = self._command("LRANGE", self._keys + "trail:" + event_id, 0, -1)
        return d.addCallback(lambda lines: trail.decode_steps(map(_text, lines)))
