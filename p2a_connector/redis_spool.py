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
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import txredisapi
from twisted.internet import task
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    fail,
    gatherResults,
)
from twisted.internet.defer import (
    TimeoutError as DeferredTimeout,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from p2a_connector import conversation, trail
from p2a_connector import outbound as outbound_
from p2a_connector import redis_outbound as outbound_scripts
from p2a_connector import redis_scripts as scripts
from p2a_connector.config import parse_redis_url as parse_url
from p2a_connector.decode import iso_time
from p2a_connector.outbound import Outbound, OutboundState
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
    :param trail_keep: how long an event's trail (`p2a_connector.trail`) is
        kept after its last step; None keeps no trail.
    :param conversation_idle: seconds of silence after which a person's next
        message starts a new conversation (`p2a_connector.conversation`).
    :param ussd_idle: seconds of silence after which `expire` ends a USSD
        session with a ``session.ended`` event.
    :param outbound_keep: how long a sent or failed outbound message is kept.
    :param receipt_keep: how long `reply_for` finds a sent part's message_id.
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
    ):
        self.url = url
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
            for script in (*scripts.ALL, *outbound_scripts.ALL):
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
        """
        Run a script replying (status, counts, pending, extra, outbound); keep
        the counts.
        """
        reply = await self._script_keys(script, keys, *args)
        status, counts, pending, extra, queued = reply
        self._pending = int(pending)
        self._outbound = int(queued)
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
            return ensureDeferred(self._replicated(self._store_event(item)))
        if isinstance(item, Segment):
            return ensureDeferred(self._replicated(self._store_segment(item)))
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

    async def _store_event(self, event: Event) -> Event | None:
        status, extra = await self._counted(
            scripts.STORE, (), *self._event_args(event, self._reactor.seconds())
        )
        return _filled(event, extra) if status == "stored" else None

    def _event_args(self, event: Event, now: float) -> tuple:
        done = trail.stored(now, webhook=event.webhook, type=event.type)
        return (
            self._keys,
            GROUP,
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
        fresh = conversation.new_conversation_id(now) if key else ""
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
            status, extra = await self._finish(keys, token, event, "complete")
            if status != "stale":
                return _filled(event, extra) if status == "stored" else None
        raise SpoolError(
            f"spool {self.where}: the message {segment.key} kept changing while "
            "its segment was added; the SMSC will send it again"
        )

    def _assemble(self, records: list[str], webhook: str, complete: bool) -> Event:
        segments = [json.loads(record) for record in records]
        event_id, event_type, body = self._assembler(segments, complete)
        now = self._reactor.seconds()
        conversation_key, ussd = conversation.keys_of_body(event_type, body)
        return Event(
            id=event_id,
            type=event_type,
            webhook=webhook,
            body=body,
            created_at=now,
            trail=trail.assembled(segments, complete, now),
            conversation=conversation_key,
            ussd=ussd,
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
            status, extra = await self._finish((seg, done), token, event, "expire")
            if status == "stored":
                events.append(_filled(event, extra))
        events.extend(await self._end_idle_sessions())
        await self._counted(scripts.RECOUNT, (), self._keys)
        return events

    async def _end_idle_sessions(self) -> list[Event]:
        """End the USSD sessions silent past ``ussd_idle``; their events."""
        now = self._reactor.seconds()
        idle = await self._command(
            "ZRANGEBYSCORE",
            self._keys + "ussd",
            "-inf",
            "(" + _number(now - self._ussd_idle),
        )
        ended = []
        for member in idle:
            key = _text(member)
            fields = await self._command(
                "HMGET",
                self._keys + "ussd:" + key,
                "webhook",
                "info",
                "last_message_id",
                "last_at",
            )
            if fields[0] is None:
                continue
            webhook, info, last_message_id, last_at = map(_text, fields)
            event = conversation.session_ended(
                conversation.new_event_id(now),
                now,
                webhook=webhook,
                info=json.loads(info),
                last_message_id=last_message_id,
            )
            args = self._event_args(event, now)
            status, _ = await self._counted(
                outbound_scripts.END_IDLE_SESSION,
                (),
                *args[:2],
                key,
                last_at,
                *args[2:],
            )
            if status == "stored":
                ended.append(event)
        return ended

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

        async def run() -> None:
            await self._counted(
                scripts.DELIVERED,
                (),
                self._keys,
                GROUP,
                event_id,
                self._steps(done),
                self._trail_keep,
                _number(now),
                *self._queued_args(replies, now),
            )

        return ensureDeferred(run())

    def retry(
        self,
        event_id: str,
        attempt: int,
        next_at: float,
        error: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        """Record a failed attempt; the event is due again at ``next_at``."""
        failed = trail.step(
            self._reactor.seconds(),
            "attempt_failed",
            **({"attempt": attempt} | dict(note or {})),
            error=error,
            next_at=next_at,
        )
        return self._done(
            scripts.RETRY,
            event_id,
            attempt,
            _number(next_at),
            error,
            self._steps(failed),
        )

    def dead(
        self,
        event_id: str,
        attempt: int,
        reason: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        """Move an event to the dead letters, with why it will not be retried."""
        now = self._reactor.seconds()
        dead = trail.step(
            now,
            "dead_lettered",
            **({"attempt": attempt} | dict(note or {})),
            reason=reason,
        )
        return self._done(
            scripts.DEAD, event_id, attempt, reason, _number(now), self._steps(dead)
        )

    def _done(self, script: scripts.Script, *args: Any) -> Deferred[None]:
        async def run() -> None:
            await self._counted(script, (), self._keys, GROUP, *args, self._trail_keep)

        return ensureDeferred(run())

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Make dead letters (all, or those named) pending again, due now."""
        now = self._reactor.seconds()
        replayed = self._steps(trail.step(now, "replayed"))
        return self._letters(
            scripts.REPLAY, ids, _number(now), replayed, self._trail_keep
        )

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Delete dead letters (all, or those named) for good; their trail stays."""
        purged = self._steps(trail.step(self._reactor.seconds(), "purged"))
        return self._letters(scripts.PURGE, ids, purged, self._trail_keep)

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

    def dead_letter_count(self) -> Deferred[int]:
        """How many dead letters the spool holds."""
        return self._command("XLEN", self._keys + "dead").addCallback(int)

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        """The event's trail, oldest step first; empty if unknown or forgotten."""
        d = self._command("LRANGE", self._keys + "trail:" + event_id, 0, -1)
        return d.addCallback(lambda lines: trail.decode_steps(map(_text, lines)))

    # --- outbound messages, conversations, USSD sessions ---------------------

    def _queued_args(self, messages: Sequence[Outbound], now: float) -> list[str]:
        """Four script arguments per message to queue (queue_all)."""
        args = []
        for message in messages:
            queued = trail.step(
                now,
                "queued",
                operator=message.operator,
                in_reply_to=message.in_reply_to,
            )
            args += [message.id, message.operator, message.dumps(), self._steps(queued)]
        return args

    def queue(self, messages: Sequence[Outbound]) -> Deferred[int]:
        """
        Keep messages to send, due now; one whose id is kept already is left
        as it is.  Fires with how many were new, once Redis has them.
        """
        now = self._reactor.seconds()

        async def run() -> int:
            _, extra = await self._counted(
                outbound_scripts.QUEUE,
                (),
                self._keys,
                _number(now),
                self._trail_keep,
                *self._queued_args(messages, now),
            )
            return int(extra[0])

        return ensureDeferred(run())

    def outbound_due(
        self,
        now: float,
        limit: int,
        *,
        operators: Collection[str] | None = None,
        lease: float = 60.0,
    ) -> Deferred[list[OutboundState]]:
        """
        Take the queued messages due at ``now`` (of ``operators`` only, if
        given), oldest first: no instance takes them again for ``lease``
        seconds, by which time the sender has reported on them or died.
        """

        async def run() -> list[OutboundState]:
            if operators is not None and not operators:
                return []
            rows = await self._script(
                outbound_scripts.OUTBOUND_DUE,
                self._keys,
                _number(now),
                limit,
                _number(now + lease),
                *_operator_args(operators),
            )
            return [_outbound_state(row[1:]) for row in rows]

        return ensureDeferred(run())

    def next_outbound_due(
        self, *, operators: Collection[str] | None = None
    ) -> Deferred[float | None]:
        """When the next queued message (of ``operators``) is due, or None."""

        async def run() -> float | None:
            if operators is not None and not operators:
                return None
            at = await self._script(
                outbound_scripts.NEXT_OUTBOUND_DUE,
                self._keys,
                *_operator_args(operators),
            )
            return None if at is None else float(at)

        return ensureDeferred(run())

    def _outbound_update(
        self, outbound_id: str, step: dict, queue_at: str, **fields: Any
    ) -> Deferred[None]:
        pairs = [str(value) for item in fields.items() for value in item]

        async def run() -> None:
            await self._counted(
                outbound_scripts.OUTBOUND_UPDATE,
                (),
                self._keys,
                outbound_id,
                self._steps(step),
                self._trail_keep,
                queue_at,
                *pairs,
            )

        return ensureDeferred(run())

    def outbound_progress(
        self,
        outbound_id: str,
        *,
        reference: int,
        parts_sent: int,
        message_ids: Sequence[str],
    ) -> Deferred[None]:
        """
        Some parts were accepted: a retry goes on from ``parts_sent``, and
        their message_ids find the message already (a receipt can overtake
        the last part).
        """
        step = trail.step(self._reactor.seconds(), "part_sent", parts_sent=parts_sent)
        # Sent before the update, on the same connection, so that a receipt
        # looked up after this call returns finds them.  True whatever the
        # update does: the SMSC did accept these parts.
        indexed = [
            self._command(
                "SET",
                self._keys + "rcpt:" + message_id,
                outbound_id,
                "PX",
                self._receipt_keep,
            )
            for message_id in message_ids
        ]
        updated = self._outbound_update(
            outbound_id,
            step,
            "",
            reference=reference,
            parts_sent=parts_sent,
            message_ids=json.dumps(list(message_ids)),
        )
        return gatherResults([*indexed, updated], consumeErrors=True).addCallbacks(
            lambda _: None, lambda failure: failure.value.subFailure
        )

    def outbound_retry(
        self,
        outbound_id: str,
        attempt: int,
        next_at: float,
        error: str,
        *,
        reference: int,
        parts_sent: int,
        message_ids: Sequence[str],
    ) -> Deferred[None]:
        """A failed attempt; the message is due again at ``next_at``."""
        step = trail.step(
            self._reactor.seconds(),
            "retry",
            attempt=attempt,
            error=error,
            next_at=next_at,
            parts_sent=parts_sent,
        )
        return self._outbound_update(
            outbound_id,
            step,
            _number(next_at),
            attempt=attempt,
            next_at=_number(next_at),
            error=error,
            reference=reference,
            parts_sent=parts_sent,
            message_ids=json.dumps(list(message_ids)),
        )

    def outbound_sent(
        self, outbound_id: str, *, reference: int, message_ids: Sequence[str]
    ) -> Deferred[None]:
        """Every part was accepted; each message_id now finds the message."""
        now = self._reactor.seconds()
        sent = trail.step(now, "sent", parts=len(message_ids))

        async def run() -> None:
            await self._counted(
                outbound_scripts.OUTBOUND_SENT,
                (),
                self._keys,
                outbound_id,
                self._steps(sent),
                self._trail_keep,
                _number(now),
                reference,
                len(message_ids),
                json.dumps(list(message_ids)),
                self._outbound_keep,
                self._receipt_keep,
                *message_ids,
            )

        return ensureDeferred(run())

    def outbound_failed(
        self, outbound_id: str, attempt: int, reason: str, event: Event
    ) -> Deferred[None]:
        """
        The message will not be sent: state ``failed`` with ``reason``, and
        ``event`` (its ``reply.failed``) stored for delivery in the same
        script.  Nothing happens to a message no longer queued.
        """
        now = self._reactor.seconds()
        failed = trail.step(now, "failed", attempt=attempt, reason=reason)
        args = self._event_args(event, now)

        async def run() -> None:
            await self._counted(
                outbound_scripts.OUTBOUND_FAILED,
                (),
                *args[:2],
                outbound_id,
                attempt,
                reason,
                self._outbound_keep,
                self._steps(failed),
                self._trail_keep,
                *args[2:],
            )

        return ensureDeferred(run())

    def outbound(self, outbound_id: str) -> Deferred[OutboundState | None]:
        """Where a message is, or None if unknown or forgotten."""
        d = self._command("HMGET", self._keys + "ob:" + outbound_id, *_FIELDS)
        return d.addCallback(
            lambda row: None if row[0] is None else _outbound_state(row)
        )

    def reply_for(self, message_id: str) -> Deferred[str | None]:
        """The outbound id of the part the SMSC accepted as ``message_id``."""
        d = self._command("GET", self._keys + "rcpt:" + message_id)
        return d.addCallback(lambda value: None if value is None else _text(value))

    def outbound_pending(self) -> int:
        """Queued outbound messages, all instances, as of the last write."""
        return self._outbound

    def conversation_of(self, key: str) -> Deferred[dict | None]:
        """A conversation's id, turn, started_at and last_at, or None."""
        d = self._command(
            "HMGET", self._keys + "cnv:" + key, "id", "turn", "started_at", "last_at"
        )

        def read(row: list) -> dict | None:
            if row[0] is None:
                return None
            return {
                "id": _text(row[0]),
                "turn": int(row[1]),
                "started_at": float(row[2]),
                "last_at": float(row[3]),
            }

        return d.addCallback(read)

    def end_session(self, key: str) -> Deferred[None]:
        """Close a USSD session (a reply ended it): no ``session.ended``."""
        d = ensureDeferred(self._script(outbound_scripts.END_SESSION, self._keys, key))
        return d.addCallback(lambda _: None)


_FIELDS = (
    "message",
    "state",
    "attempt",
    "next_at",
    "reference",
    "parts_sent",
    "message_ids",
    "error",
    "sent_at",
)


def _outbound_state(row: Sequence[Any]) -> OutboundState:
    message, state, attempt, next_at, reference, parts, ids, error, sent = row
    return OutboundState(
        message=Outbound.loads(message),
        state=_text(state),
        attempt=int(attempt),
        next_at=float(next_at),
        reference=int(reference),
        parts_sent=int(parts),
        message_ids=tuple(json.loads(ids)),
        error=None if error is None else _text(error),
        sent_at=None if sent is None else float(sent),
    )


def _operator_args(operators: Collection[str] | None) -> list[str]:
    return ["1"] if operators is None else ["0", *operators]


def _filled(event: Event, extra: Sequence[Any]) -> Event:
    """The event with the conversation a script gave it in its body."""
    given = _text(extra[0]) if extra else ""
    if not given:
        return event
    return attrs.evolve(event, body=conversation.fill(event.body, given.encode()))


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
