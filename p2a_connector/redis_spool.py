"""
The spool in Redis, shared by several connector instances.

Same promise as `p2a_connector.sqlite_spool.SqliteSpool`: `RedisSpool.store`
fires only once Redis has answered the write, which with the AOF enabled
(``appendfsync everysec`` or ``always``) means the write is in the AOF.  Every
change is one Lua script (`p2a_connector.redis_scripts`), so instances never
see half of another's work, and the counts behind the limits live in Redis,
where all instances share them.

Events wait in one Redis Stream per webhook, read through a consumer group:
`RedisSpool.due` hands this instance its own unacknowledged entries, entries
another instance has held for ``claim_idle`` seconds without acknowledging
(it died, most likely), and new ones.  A failed attempt takes the event out
of the stream into a sorted set by next attempt time, from which `due` moves
it back once it is due.

Reassembly takes two scripts, because the assembler is Python: the first
adds the segment and, if it completes its message, replies every record
without writing; the second stores the assembled event and closes the
reassembly, unless another instance closed it first (the completed marker is
set) or it changed meanwhile (its token differs), so one message makes one
event however many instances complete it at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Collection, Sequence
from typing import Any

import txredisapi
from twisted.internet import task
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    fail,
)
from twisted.internet.defer import (
    TimeoutError as DeferredTimeout,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from p2a_connector import redis_scripts as scripts
from p2a_connector.config import parse_redis_url as parse_url
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
    SpoolLimit,
)

GROUP = "dispatchers"

# A completion that finds its reassembly changed (it expired, say) starts
# over; past this many rounds the store fails and the SMSC retries.
_ROUNDS = 3


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float) -> str:
    return repr(float(value))


class RedisSpool:
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
        timeout: float = 1.0,
        refresh_interval: float = 5.0,
        completed_ttl: float = 600.0,
        max_reassemblies: int | None = None,
        max_reassemblies_per_operator: int | None = None,
        max_reassembly_bytes: int | None = None,
    ):
        self.url = url
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
        self._refresher: task.LoopingCall | None = None
        self._pending = 0
        self._reassemblies = Reassemblies()

    @property
    def where(self) -> str:
        """The spool's location for messages, without any password."""
        host, port, db, _, _ = parse_url(self.url)
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
            for script in scripts.ALL:
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
        host, port, db, username, password = parse_url(self.url)
        options = {
            "charset": None,
            "password": password,
            "username": username,
            "convertNumbers": False,
            "replyTimeout": self._timeout * 5,
        }
        if self._sentinels:
            self._sentinel = txredisapi.Sentinel(list(self._sentinels))
            endpoint = _MasterEndpoint(
                self._reactor, self._sentinel, self._sentinel_master, self._timeout
            )
        else:
            endpoint = HostnameEndpoint(
                self._reactor, host, port, timeout=self._timeout
            )
        factory = txredisapi.RedisFactory(
            f"{host}:{port}", db, 2, isLazy=True, **options
        )
        # Redis coming back is noticed within a couple of seconds, not the
        # ten the library would wait at most between attempts.
        factory.maxDelay = 2.0
        factory.startConnecting(endpoint)
        self._redis = factory.handler

    def close(self) -> Deferred[None]:
        """Stop refreshing and close the connections."""
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        self._refresher = None
        return ensureDeferred(self._disconnect())

    async def _disconnect(self) -> None:
        redis, self._redis = self._redis, None
        sentinel, self._sentinel = self._sentinel, None
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

    # --- talking to Redis ---------------------------------------------------

    def _command(self, *args: Any) -> Deferred:
        if self._redis is None:
            return fail(SpoolError(f"spool {self.where}: the spool is not open"))
        d = self._redis.execute_command(*args)
        d.addTimeout(self._timeout, self._reactor)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> Any:
        error = failure.value
        if isinstance(error, SpoolError):
            return failure
        if isinstance(error, txredisapi.ResponseError):
            raise SpoolError(f"spool {self.where}: Redis refused: {error}")
        if isinstance(
            error,
            (
                CancelledError,
                DeferredTimeout,
                ConnectTimeout,
                txredisapi.ConnectionError,
            ),
        ):
            raise SpoolError(
                f"spool {self.where}: Redis did not answer within "
                f"{self._timeout:g} s; check that it runs and is reachable"
            )
        return failure

    async def _script(self, script: scripts.Script, *args: Any) -> Any:
        """Run a script by hash, sending it whole if Redis forgot it."""
        try:
            reply = await self._command("EVALSHA", script.sha, 0, *args)
        except SpoolError as e:
            if "NOSCRIPT" not in str(e):
                raise
            reply = await self._command("EVAL", script.source, 0, *args)
        return reply

    async def _counted(self, script: scripts.Script, keys: Sequence[str], *args):
        """Run a script replying (status, counts, pending, extra); keep counts."""
        reply = await self._script_keys(script, keys, *args)
        status, counts, pending, extra = reply
        self._pending = int(pending)
        self._reassemblies = _reassemblies(counts)
        return _text(status), extra

    async def _script_keys(self, script: scripts.Script, keys: Sequence[str], *args):
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except SpoolError as e:
            if "NOSCRIPT" not in str(e):
                raise
            return await self._command("EVAL", script.source, len(keys), *keys, *args)

    # --- writes -----------------------------------------------------------

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        """
        Keep an event or a segment; fire once Redis has it.

        Fires as `SqliteSpool.store` does: the new Event, the Event the
        segment completed, or None.  Errbacks with `SpoolLimit` for a segment
        past a bound, and with `SpoolError` when Redis does not answer.
        """
        if isinstance(item, Event):
            return ensureDeferred(self._store_event(item))
        if isinstance(item, Segment):
            return ensureDeferred(self._store_segment(item))
        raise TypeError(f"the spool stores Event or Segment, not {type(item)!r}")

    async def _store_event(self, event: Event) -> Event | None:
        status, _ = await self._counted(
            scripts.STORE, (), *self._event_args(event, self._reactor.seconds())
        )
        return event if status == "stored" else None

    def _event_args(self, event: Event, now: float) -> tuple:
        return (
            self._keys,
            GROUP,
            event.id,
            event.type,
            event.webhook,
            event.body,
            _number(event.created_at),
            _number(now),
        )

    def _segment_keys(self, key: str) -> tuple[str, str]:
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self._keys + "seg:" + digest, self._keys + "done:" + digest

    async def _store_segment(self, segment: Segment) -> Event | None:
        keys = self._segment_keys(segment.key)
        record = json.dumps(segment.record, separators=(",", ":"))
        bounds = [
            -1 if bound is None else bound
            for bound in (
                self._bounds["max_reassemblies"],
                self._bounds["max_reassemblies_per_operator"],
                self._bounds["max_reassembly_bytes"],
            )
        ]
        for _ in range(_ROUNDS):
            status, extra = await self._counted(
                scripts.ADD_SEGMENT,
                keys,
                self._keys,
                segment.seqnum,
                segment.total,
                record,
                segment.webhook,
                _number(segment.received_at),
                segment.operator,
                segment.key,
                *bounds,
                os.urandom(8).hex(),
            )
            if status == "limit":
                name = _text(extra[0])
                raise SpoolLimit(name, self._bounds[name], segment.operator)
            if status != "complete":
                return None

            token, webhook, *records = (_text(value) for value in extra)
            event = self._assemble(records, webhook, complete=True)
            status, _ = await self._finish(keys, token, event, "complete")
            if status != "stale":
                return event if status == "stored" else None
        raise SpoolError(
            f"spool {self.where}: the message {segment.key} kept changing while "
            "its segment was added; the SMSC will send it again"
        )

    def _assemble(self, records: list[str], webhook: str, complete: bool) -> Event:
        event_id, event_type, body = self._assembler(
            [json.loads(record) for record in records], complete
        )
        return Event(
            id=event_id,
            type=event_type,
            webhook=webhook,
            body=body,
            created_at=self._reactor.seconds(),
        )

    async def _finish(
        self, keys: Sequence[str], token: str, event: Event, mode: str
    ) -> tuple[str, Any]:
        ttl = round(self._completed_ttl * 1000) if mode == "complete" else 0
        now = self._reactor.seconds()
        args = self._event_args(event, now)
        return await self._counted(
            scripts.FINISH, keys, *args[:2], token, ttl, mode, *args[2:]
        )

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
            read = await self._script_keys(scripts.READ_SEGMENTS, (seg,))
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
            status, _ = await self._finish((seg, done), token, event, "expire")
            if status == "stored":
                events.append(event)
        await self._counted(scripts.RECOUNT, (), self._keys)
        return events

    def delivered(self, event_id: str) -> Deferred[None]:
        """Forget a delivered event, acknowledging its stream entry."""
        return self._done(scripts.DELIVERED, event_id)

    def retry(
        self, event_id: str, attempt: int, next_at: float, error: str
    ) -> Deferred[None]:
        """Record a failed attempt; the event is due again at ``next_at``."""
        return self._done(scripts.RETRY, event_id, attempt, _number(next_at), error)

    def dead(self, event_id: str, attempt: int, reason: str) -> Deferred[None]:
        """Move an event to the dead letters, with why it will not be retried."""
        now = _number(self._reactor.seconds())
        return self._done(scripts.DEAD, event_id, attempt, reason, now)

    def _done(self, script: scripts.Script, *args: Any) -> Deferred[None]:
        async def run() -> None:
            await self._counted(script, (), self._keys, GROUP, *args)

        return ensureDeferred(run())

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Make dead letters (all, or those named) pending again, due now."""
        now = _number(self._reactor.seconds())
        return self._letters(scripts.REPLAY, ids, now)

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Delete dead letters (all, or those named) for good."""
        return self._letters(scripts.PURGE, ids)

    def _letters(
        self, script: scripts.Script, ids: Sequence[str] | None, *args: Any
    ) -> Deferred[int]:
        async def run() -> int:
            every = "1" if ids is None else "0"
            _, extra = await self._counted(
                script, (), self._keys, GROUP, every, *args, *(ids or ())
            )
            return int(extra[0])

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
        return ensureDeferred(self._due(now, limit, tuple(exclude), webhook))

    async def _due(
        self, now: float, limit: int, exclude: tuple[str, ...], webhook: str | None
    ) -> list[PendingEvent]:
        events: list[tuple[float, PendingEvent]] = []
        for name in await self._webhooks(webhook):
            rows = await self._script(
                scripts.DUE,
                self._keys,
                GROUP,
                self.consumer,
                name,
                _number(now),
                limit - len(events),
                round(self._claim_idle * 1000),
                *exclude,
            )
            for row in rows:
                event_id, event_type, hook, body, attempt, created, next_at = row
                pending = PendingEvent(
                    id=_text(event_id),
                    type=_text(event_type),
                    webhook=_text(hook),
                    body=bytes(body),
                    attempt=int(attempt),
                    created_at=float(created),
                )
                events.append((float(next_at), pending))
            if len(events) >= limit:
                break
        events.sort(key=lambda pair: pair[0])
        return [pending for _, pending in events]

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
                *exclude,
            )
            if at is not None:
                times.append(float(at))
        return min(times, default=None)

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]:
        """Dead letters, oldest failure first."""

        async def read() -> list[dict]:
            rows = await self._script(scripts.DEAD_LETTERS, self._keys, limit)
            letters = []
            for row in rows:
                event_id, event_type, hook, reason, attempt, created, failed = row
                letters.append(
                    {
                        "id": _text(event_id),
                        "type": _text(event_type),
                        "webhook": _text(hook),
                        "reason": _text(reason),
                        "attempts": int(attempt),
                        "created_at": float(created),
                        "failed_at": float(failed),
                    }
                )
            return letters

        return ensureDeferred(read())


def _reassemblies(counts: bytes) -> Reassemblies:
    # An empty hash arrives as cjson's empty table, ``{}``.
    flat = json.loads(counts) or []
    fields = dict(zip(flat[::2], flat[1::2]))
    by_operator = {}
    for name, value in fields.items():
        if name.startswith("op:") and int(value) > 0:
            by_operator[name[3:]] = int(value)
    return Reassemblies(
        count=int(fields.get("count", 0)),
        bytes=int(fields.get("bytes", 0)),
        by_operator=by_operator,
    )


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
