"""
The durable spool: segments waiting for their siblings, events waiting for
delivery, and dead letters, kept in one sqlite file.

The spool is what makes acknowledging a deliver_sm safe.  `SqliteSpool.store`
fires only after the transaction holding the item has been committed with a
full fsync, so anything acknowledged to an SMSC survives a SIGKILL or a power
cut.  To keep that affordable under load, writes arriving close together are
group-committed: they share one transaction and so one fsync.

All sqlite work runs in one dedicated thread, so the reactor never waits on
the disk, and the connection is only ever used by that thread.

The segment side (reassembly and its bounds) is
`p2a_connector.sqlite_reassembly`.  It implements `p2a_connector.spool.Spool`,
which other backends (a Redis spool shared by several instances) implement
too.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2a_connector import conversation, sqlite_outbound, sqlite_reassembly, trail
from p2a_connector import outbound as outbound_
from p2a_connector.outbound import Outbound, OutboundState
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
)
from p2a_connector.sqlite_outbound import note as _note

SCHEMA_VERSION = 1

# Every event row is either pending (waiting for delivery) or dead (a dead
# letter, kept until replayed or purged).  Delivered events are deleted.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS event (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    webhook TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    next_at REAL NOT NULL,
    error TEXT,
    failed_at REAL
);
CREATE INDEX IF NOT EXISTS event_due ON event (next_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS event_due_by_webhook ON event (webhook, next_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS event_dead ON event (failed_at)
    WHERE state = 'dead';

CREATE TABLE IF NOT EXISTS trail (
    event_id TEXT NOT NULL,
    at REAL NOT NULL,
    step TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trail_event ON trail (event_id);
CREATE INDEX IF NOT EXISTS trail_age ON trail (at);
"""

_EVENT_COLUMNS = "id, type, webhook, body, attempt, created_at"


@attrs.frozen
class _Recount:
    pending: int
    outbound: int | None = None


@attrs.frozen
class _Delta:
    """How a write changed the counts of pending events and queued messages."""

    pending: int = 0
    outbound: int = 0


# A write runs inside a group transaction and returns its result together
# with how it changed the number of pending events (or both counts), or
# their new values.
_Write = Callable[[sqlite3.Connection], tuple[Any, "int | _Delta | _Recount"]]


class SqliteSpool:
    """
    The spool in one sqlite file, for a single connector instance.

    Writes (`store`, `expire`, `delivered`, `retry`, `dead`, `replay`,
    `purge`) are group-committed; each Deferred fires after the COMMIT that
    holds it, or errbacks with `SpoolError` if that COMMIT failed, in which
    case none of the writes in that transaction happened.  A write whose own
    code fails (an assembler raising, say, or a segment past a bound raising
    `SpoolLimit`) is undone alone and errbacks with that error; the others in
    its transaction still commit.

    Reads (`due`, `next_due`, `dead_letters`) see every write whose Deferred
    has fired.

    :param reactor: provides IReactorTime, IReactorThreads and IReactorCore.
    :param commit_interval: how long a write waits for others to share its
        transaction.
    :param completed_ttl: how long a completed message's segments are still
        recognised (and ignored) when an SMSC sends them again.
    :param busy_timeout: how long a write waits for another process's lock on
        the file before failing.
    :param max_reassemblies: messages waiting for segments, in all; past it a
        segment opening another is refused with `SpoolLimit`.  None: no bound.
    :param max_reassemblies_per_operator: the same, for each operator.
    :param max_reassembly_bytes: what the waiting segments may take in the
        file, counted as stored; past it a segment that does not complete
        its message is refused with `SpoolLimit`.
    :param trail_keep: how long each step of an event's trail is kept
        (`p2a_connector.trail`); None keeps no trail.
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
        path: str,
        assembler: Assembler,
        reactor: Any,
        *,
        commit_interval: float = 0.002,
        completed_ttl: float = 600.0,
        busy_timeout: float = 2.0,
        max_reassemblies: int | None = None,
        max_reassemblies_per_operator: int | None = None,
        max_reassembly_bytes: int | None = None,
        trail_keep: float | None = trail.DEFAULT_KEEP,
        conversation_idle: float = conversation.DEFAULT_IDLE,
        ussd_idle: float = conversation.DEFAULT_USSD_IDLE,
        outbound_keep: float = outbound_.DEFAULT_KEEP,
        receipt_keep: float = outbound_.DEFAULT_RECEIPT_KEEP,
    ):
        self.path = str(path)
        self._trail_keep = trail_keep
        self._conversation_idle = conversation_idle
        self._ussd_idle = ussd_idle
        self._outbound_keep = outbound_keep
        self._receipt_keep = receipt_keep
        self._outbound = 0
        self.commits = 0
        self._reactor = reactor
        self._commit_interval = commit_interval
        self._busy_timeout = busy_timeout
        self._segments = sqlite_reassembly.Reassembly(
            assembler,
            completed_ttl=completed_ttl,
            max_reassemblies=max_reassemblies,
            max_reassemblies_per_operator=max_reassemblies_per_operator,
            max_reassembly_bytes=max_reassembly_bytes,
        )
        self._db: sqlite3.Connection | None = None
        self._open = False
        self._threads: ThreadPool | None = None
        self._shutdown: Any = None
        self._pending = 0
        self._queue: list[tuple[_Write, bool, Deferred]] = []
        self._timer: Any = None
        self._committing = False
        self._drained: list[Deferred[None]] = []

    # --- lifecycle --------------------------------------------------------

    def open(self) -> Deferred[None]:
        """Create or resume the spool file; errback with SpoolError if unusable."""
        self._threads = ThreadPool(minthreads=1, maxthreads=1, name="spool")
        self._threads.start()
        # The thread would keep the process alive if close() were never called.
        self._shutdown = self._reactor.addSystemEventTrigger(
            "after", "shutdown", self._reactor_stopped
        )
        d = self._in_thread(self._connect)
        d.addCallback(self._opened)
        d.addErrback(self._stop_threads)
        return d

    def _opened(self, counts: tuple[int, int]) -> None:
        self._open = True
        pending, self._outbound = counts
        self._pending = pending
        self.log.info(
            "spool {path} open with {pending} pending events and {reassemblies} "
            "messages waiting for segments",
            path=self.path,
            pending=pending,
            reassemblies=self._segments.held.count,
        )

    def close(self) -> Deferred[None]:
        """Commit what is queued, then close the file and stop the thread."""
        if not self._open:
            self._stop_threads(None)
            return succeed(None)
        self._open = False
        d = self._flushed()
        d.addCallback(lambda _: self._in_thread(self._disconnect))
        d.addBoth(self._stop_threads)
        return d

    def _reactor_stopped(self) -> None:
        self._shutdown = None
        self._stop_threads(None)

    def _stop_threads(self, result: Any) -> Any:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None
        if self._shutdown is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown)
            self._shutdown = None
        if isinstance(result, Failure):
            return result
        return None

    def _flushed(self) -> Deferred[None]:
        if not self._queue and not self._committing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _connect(self) -> tuple[int, int]:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise SpoolError(
                f"spool {self.path}: cannot create the directory {directory}: "
                f"{e.strerror}"
            ) from None

        try:
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout,
            )
        except sqlite3.Error as e:
            raise SpoolError(f"spool {self.path}: cannot open: {e}") from None

        try:
            # WAL lets reads run beside the writer.  FULL fsyncs the WAL on
            # every COMMIT, so an acknowledged item survives a power cut, not
            # only a killed process (which is all NORMAL would give us).
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.path}: written by a newer version "
                    f"(schema {version}, this one knows {SCHEMA_VERSION}); "
                    "upgrade the connector or use another file"
                )
            db.execute("BEGIN IMMEDIATE")
            _create_schema(db)
            sqlite_reassembly.add_operator_column(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
            counts = (_count_pending(db), sqlite_outbound.count_queued(db))
            self._segments.load(db)
        except sqlite3.Error as e:
            db.close()
            raise SpoolError(
                f"spool {self.path}: cannot use the file: {e}; "
                "check that it is a spool file and that no other process locks it"
            ) from None
        except BaseException:
            db.close()
            raise

        self._db = db
        return counts

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred:
        if self._threads is None:
            return fail(SpoolError(f"spool {self.path}: the spool is not open"))
        return deferToThreadPool(self._reactor, self._threads, f, *args)

    # --- group commit -----------------------------------------------------

    def _write(self, write: _Write, *, single: bool = False) -> Deferred:
        """
        Queue a write for the next group commit.

        ``single``: the write is one statement (and maybe the rows of its
        trail, inserted after it), so it needs no savepoint of its own to be
        undone alone; a statement is applied whole or not at all, and a
        sqlite error fails the whole transaction anyway.  Each
        savepoint costs two more statements, and the spool thread one more
        wait for the interpreter lock apiece.
        """
        if not self._open:
            return fail(SpoolError(f"spool {self.path}: the spool is not open"))
        d: Deferred = Deferred()
        self._queue.append((write, single, d))
        if not self._committing and self._timer is None:
            self._timer = self._reactor.callLater(self._commit_interval, self._commit)
        return d

    def _commit(self) -> None:
        self._timer = None
        batch, self._queue = self._queue, []
        self._committing = True
        writes = [(write, single) for write, single, _ in batch]
        d = self._in_thread(self._transaction, writes)
        d.addBoth(self._committed, [d for _, _, d in batch])

    def _transaction(
        self, writes: list[tuple[_Write, bool]]
    ) -> list[tuple[bool, Any, Any]]:
        db = self._db
        if db is None:
            raise SpoolError(f"spool {self.path}: the spool is not open")
        segments = self._segments
        outcomes: list[tuple[bool, Any, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for write, single in writes:
                if single:
                    try:
                        value, delta = write(db)
                    except sqlite3.Error:
                        raise
                    except Exception:  # noqa: BLE001 - its one statement did not run
                        outcomes.append((False, Failure(), 0))
                    else:
                        outcomes.append((True, value, delta))
                    continue
                before = segments.working
                db.execute("SAVEPOINT item")
                try:
                    value, delta = write(db)
                except sqlite3.Error:
                    raise
                except Exception:  # noqa: BLE001 - a bug or a limit fails one write
                    db.execute("ROLLBACK TO item")
                    db.execute("RELEASE item")
                    segments.working = before
                    outcomes.append((False, Failure(), 0))
                else:
                    db.execute("RELEASE item")
                    outcomes.append((True, value, delta))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.rollback()
            segments.working = segments.held
            raise SpoolError(f"spool {self.path}: cannot commit: {e}") from None
        segments.held = segments.working
        return outcomes

    def _committed(self, result: Any, batch: list[Deferred]) -> None:
        self._committing = False
        if isinstance(result, Failure):
            if not result.check(SpoolError):
                result = Failure(SpoolError(f"spool {self.path}: {result.value}"))
            self.log.error(
                "spool {path}: {count} writes failed: {error}",
                path=self.path,
                count=len(batch),
                error=result.value,
            )
            for d in batch:
                d.errback(result)
        else:
            self.commits += 1
            for d, (ok, value, change) in zip(batch, result):
                if isinstance(change, _Recount):
                    self._pending = change.pending
                    if change.outbound is not None:
                        self._outbound = change.outbound
                elif isinstance(change, _Delta):
                    self._pending += change.pending
                    self._outbound += change.outbound
                else:
                    self._pending += change
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)

        if self._queue:
            self._commit()
        elif self._timer is None:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    # --- writes -----------------------------------------------------------

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        """
        Keep an event or a segment; fire once it is committed.

        Fires with the event this call added for delivery: the Event itself
        if it was new, the assembled Event if the segment completed its
        message, and None otherwise (a repeated event or segment, a segment
        of a message completed within ``completed_ttl``, or a message still
        missing segments).  Errbacks with `SpoolLimit` for a segment past a
        bound; nothing of it is kept.
        """
        now = self._reactor.seconds()
        if isinstance(item, Event):
            # A conversation or a session adds statements after the insert.
            return self._write(
                lambda db: self._insert_event(db, item, now),
                single=item.conversation is None and item.ussd is None,
            )
        if isinstance(item, Segment):
            return self._write(lambda db: self._add_segment(db, item, now))
        raise TypeError(f"the spool stores Event or Segment, not {type(item)!r}")

    def _add_segment(
        self, db: sqlite3.Connection, segment: Segment, now: float
    ) -> tuple[Event | None, int]:
        event = self._segments.add(db, segment, now)
        if event is None:
            return None, 0
        return self._insert_event(db, event, now)

    def _insert_event(
        self, db: sqlite3.Connection, event: Event, now: float
    ) -> tuple[Event | None, int]:
        done = trail.stored(now, webhook=event.webhook, type=event.type)
        steps = self._trail_rows(event.id, *event.trail, done)
        body, turn = event.body, None
        if event.conversation is not None:
            turn = conversation.next_turn(
                sqlite_outbound.conversation(db, event.conversation),
                event.created_at,
                self._conversation_idle,
                conversation.new_conversation_id(now),
            )
            body = conversation.fill(body, conversation.as_json(*turn[:3]))
        added = db.execute(
            "INSERT OR IGNORE INTO event"
            " (id, type, webhook, body, created_at, state, attempt, next_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?)",
            (event.id, event.type, event.webhook, body, event.created_at, now),
        ).rowcount
        if not added:
            return None, 0
        _note(db, steps)
        if turn is not None:
            sqlite_outbound.keep_conversation(db, event.conversation, turn)
            event = attrs.evolve(event, body=body)
        if event.ussd is not None:
            key, info = event.ussd
            sqlite_outbound.touch_session(
                db,
                key,
                info,
                webhook=event.webhook,
                event_id=event.id,
                at=event.created_at,
            )
        return event, 1

    def _trail_rows(self, event_id: str, *steps: dict) -> list[tuple]:
        """
        Trail rows to insert with the write that makes the steps true.

        They are encoded before that write runs any statement, so a write
        made of one statement and its `_note` can fail only as a whole.
        """
        if self._trail_keep is None:
            return []
        return [
            (event_id, s["at"], line) for s, line in zip(steps, trail.encode(steps))
        ]

    def expire(self, older_than: float) -> Deferred[list[Event]]:
        """
        Give up waiting for the missing segments of messages whose first
        segment arrived before ``older_than``: each becomes an incomplete
        event.

        A message whose assembler fails keeps its segments, is logged, and is
        tried again by the next call.

        Meant to run periodically, it also forgets completed messages older
        than ``completed_ttl`` and recounts `pending` from the file.
        """
        now = self._reactor.seconds()
        d = self._write(lambda db: self._expire(db, older_than, now))
        d.addCallback(self._expired)
        return d

    def _expire(
        self, db: sqlite3.Connection, older_than: float, now: float
    ) -> tuple[tuple[list[Event], list[tuple[str, Failure]]], _Recount]:
        assembled, failures = self._segments.expire(db, older_than, now)
        events = []
        for event in assembled:
            stored, _ = self._insert_event(db, event, now)
            if stored is not None:
                events.append(stored)
        events.extend(self._end_idle_sessions(db, now))
        if self._trail_keep is not None:
            db.execute(
                "DELETE FROM trail INDEXED BY trail_age WHERE at < ?",
                (now - self._trail_keep,),
            )
        sqlite_outbound.forget(db, now, self._outbound_keep, self._receipt_keep)
        sqlite_outbound.forget_conversations(db, now - self._conversation_idle)
        recount = _Recount(_count_pending(db), sqlite_outbound.count_queued(db))
        return (events, failures), recount

    def _end_idle_sessions(self, db: sqlite3.Connection, now: float) -> list[Event]:
        """Close the USSD sessions silent past ``ussd_idle``; their events."""
        ended = []
        idle = sqlite_outbound.idle_sessions(db, now - self._ussd_idle)
        for key, webhook, info, last_message_id in idle:
            sqlite_outbound.end_session(db, key)
            event = conversation.session_ended(
                conversation.new_event_id(now),
                now,
                webhook=webhook,
                info=info,
                last_message_id=last_message_id,
            )
            stored, _ = self._insert_event(db, event, now)
            if stored is not None:
                ended.append(stored)
        return ended

    def _expired(
        self, result: tuple[list[Event], list[tuple[str, Failure]]]
    ) -> list[Event]:
        events, failures = result
        for key, failure in failures:
            self.log.failure(
                "cannot assemble the expired message {key}; its segments are kept",
                failure,
                key=key,
            )
        return events

    def delivered(
        self,
        event_id: str,
        note: Mapping[str, Any] | None = None,
        replies: Sequence[Outbound] = (),
    ) -> Deferred[None]:
        """
        Forget a delivered event, its trail staying, and queue ``replies``
        in the same transaction.  Replies are queued by id, once, even when
        the event was delivered already: that attempt was answered too.
        """
        now = self._reactor.seconds()
        done = trail.step(now, "delivered", **(note or {}))
        steps = self._trail_rows(event_id, done)
        queued = self._queued_rows(replies, now)

        def write(db: sqlite3.Connection) -> tuple[None, _Delta]:
            removed = db.execute(
                "DELETE FROM event WHERE id = ? AND state = 'pending'", (event_id,)
            ).rowcount
            if removed:
                _note(db, steps)
            added = sqlite_outbound.queue(db, replies, now, queued)
            return None, _Delta(-removed, added)

        return self._write(write, single=not replies)

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
        steps = self._trail_rows(event_id, failed)

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            changed = db.execute(
                "UPDATE event SET attempt = ?, next_at = ?, error = ?"
                " WHERE id = ? AND state = 'pending'",
                (attempt, next_at, error, event_id),
            ).rowcount
            if changed:
                _note(db, steps)
            return None, 0

        return self._write(write, single=True)

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
        steps = self._trail_rows(event_id, dead)

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            moved = db.execute(
                "UPDATE event SET state = 'dead', attempt = ?, error = ?,"
                " failed_at = ? WHERE id = ? AND state = 'pending'",
                (attempt, reason, now, event_id),
            ).rowcount
            if moved:
                _note(db, steps)
            return None, -moved

        return self._write(write, single=True)

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Make dead letters (all, or those named) pending again, due now."""
        now = self._reactor.seconds()
        sql = (
            "UPDATE event SET state = 'pending', attempt = 0, next_at = ?,"
            " error = NULL, failed_at = NULL WHERE state = 'dead' AND id = ?"
        )

        def write(db: sqlite3.Connection) -> tuple[int, int]:
            count = self._letters(db, ids, sql, (now,), trail.step(now, "replayed"))
            return count, count

        return self._write(write)

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Delete dead letters (all, or those named) for good; their trail stays."""
        now = self._reactor.seconds()
        sql = "DELETE FROM event WHERE state = 'dead' AND id = ?"

        def write(db: sqlite3.Connection) -> tuple[int, int]:
            return self._letters(db, ids, sql, (), trail.step(now, "purged")), 0

        return self._write(write)

    def _letters(
        self,
        db: sqlite3.Connection,
        ids: Sequence[str] | None,
        sql: str,
        args: tuple,
        done: dict,
    ) -> int:
        """Run ``sql`` on each dead letter named (or all); note each one done."""
        if ids is None:
            ids = [
                i for (i,) in db.execute("SELECT id FROM event WHERE state = 'dead'")
            ]
        count = 0
        for event_id in ids:
            if db.execute(sql, (*args, event_id)).rowcount:
                _note(db, self._trail_rows(event_id, done))
                count += 1
        return count

    # --- reads ------------------------------------------------------------

    def pending(self) -> int:
        """
        How many events wait for delivery, without touching the disk.

        Changes made by another process on the same file (the command line
        replaying dead letters, say) are counted from the next `expire`.
        """
        return self._pending

    def reassemblies(self) -> Reassemblies:
        """The messages waiting for segments, as of the last commit."""
        return self._segments.held

    def set_bounds(self, **bounds: int | None) -> None:
        """The ``max_reassembl*`` bounds, anew, from the next segment on."""
        self._segments.set_bounds(**bounds)

    def due(
        self,
        now: float,
        limit: int,
        exclude: Collection[str] = (),
        *,
        webhook: str | None = None,
    ) -> Deferred[list[PendingEvent]]:
        """
        Pending events whose next attempt is due at ``now``, those waiting
        longest first, leaving out ``exclude`` (the ones in flight).
        """
        where, args = _pending_filter(webhook, exclude)
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM event WHERE {where} AND next_at <= ?"
            " ORDER BY next_at, rowid LIMIT ?"
        )

        def read() -> list[PendingEvent]:
            rows = self._read(sql, (*args, now, limit))
            return [PendingEvent(*row) for row in rows]

        return self._in_thread(read)

    def next_due(
        self, *, webhook: str | None = None, exclude: Collection[str] = ()
    ) -> Deferred[float | None]:
        """When the next pending event not in ``exclude`` is due, or None."""
        where, args = _pending_filter(webhook, exclude)
        sql = f"SELECT next_at FROM event WHERE {where} ORDER BY next_at LIMIT 1"

        def read() -> float | None:
            rows = self._read(sql, args)
            return rows[0][0] if rows else None

        return self._in_thread(read)

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]:
        """Dead letters, oldest failure first."""
        sql = (
            "SELECT id, type, webhook, error, attempt, created_at, failed_at"
            " FROM event WHERE state = 'dead' ORDER BY failed_at, rowid LIMIT ?"
        )
        names = ("id", "type", "webhook", "reason", "attempts")
        names += ("created_at", "failed_at")

        def read() -> list[dict]:
            return [dict(zip(names, row)) for row in self._read(sql, (limit,))]

        return self._in_thread(read)

    def dead_letter_count(self) -> Deferred[int]:
        """How many dead letters the spool holds."""
        sql = "SELECT count(*) FROM event INDEXED BY event_dead WHERE state = 'dead'"
        return self._in_thread(lambda: self._read(sql, ())[0][0])

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        """The event's trail, oldest step first; empty if unknown or forgotten."""
        sql = "SELECT step FROM trail WHERE event_id = ? ORDER BY at, rowid"

        def read() -> list[dict]:
            return trail.decode_steps(line for (line,) in self._read(sql, (event_id,)))

        return self._in_thread(read)

    def _read(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        db = self._db
        if db is None:
            raise SpoolError(f"spool {self.path}: the spool is not open")
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise SpoolError(f"spool {self.path}: cannot read: {e}") from None

    # --- outbound messages, conversations, USSD sessions ---------------------

    def _queued_rows(
        self, messages: Sequence[Outbound], now: float
    ) -> dict[str, list[tuple]]:
        return {
            message.id: self._trail_rows(
                message.id,
                trail.step(
                    now,
                    "queued",
                    operator=message.operator,
                    in_reply_to=message.in_reply_to,
                ),
            )
            for message in messages
        }

    def queue(self, messages: Sequence[Outbound]) -> Deferred[int]:
        """
        Keep messages to send, due now; one whose id is kept already is left
        as it is.  Fires with how many were new, once they are committed.
        """
        now = self._reactor.seconds()
        queued = self._queued_rows(messages, now)

        def write(db: sqlite3.Connection) -> tuple[int, _Delta]:
            added = sqlite_outbound.queue(db, messages, now, queued)
            return added, _Delta(outbound=added)

        return self._write(write)

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
        given), oldest first: they are not due again for ``lease`` seconds,
        by which time the sender has reported on them or died.
        """

        def write(db: sqlite3.Connection) -> tuple[list[OutboundState], int]:
            return sqlite_outbound.take(db, now, limit, operators, now + lease), 0

        return self._write(write)

    def next_outbound_due(
        self, *, operators: Collection[str] | None = None
    ) -> Deferred[float | None]:
        """When the next queued message (of ``operators``) is due, or None."""
        if operators is not None and not operators:
            return succeed(None)
        sql, args = sqlite_outbound.next_due_sql(operators)
        return self._in_thread(lambda: self._read(sql, args)[0][0])

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
        now = self._reactor.seconds()
        args = (reference, parts_sent, json.dumps(list(message_ids)))
        steps = self._trail_rows(
            outbound_id, trail.step(now, "part_sent", parts_sent=parts_sent)
        )

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            assignments = "reference = ?, parts_sent = ?, message_ids = ?"
            if sqlite_outbound.update(db, outbound_id, assignments, args):
                sqlite_outbound.index_receipts(db, outbound_id, message_ids, now)
                _note(db, steps)
            return None, 0

        return self._write(write)

    def outbound_sent(
        self, outbound_id: str, *, reference: int, message_ids: Sequence[str]
    ) -> Deferred[None]:
        """Every part was accepted; each message_id now finds the message."""
        now = self._reactor.seconds()
        steps = self._trail_rows(
            outbound_id, trail.step(now, "sent", parts=len(message_ids))
        )
        args = (reference, len(message_ids), json.dumps(list(message_ids)), now, now)

        def write(db: sqlite3.Connection) -> tuple[None, _Delta]:
            if not sqlite_outbound.update(
                db,
                outbound_id,
                "state = 'sent', reference = ?, parts_sent = ?, message_ids = ?,"
                " error = NULL, sent_at = ?, done_at = ?",
                args,
            ):
                return None, _Delta()
            sqlite_outbound.index_receipts(db, outbound_id, message_ids, now)
            _note(db, steps)
            return None, _Delta(outbound=-1)

        return self._write(write)

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
            "attempt = ?, next_at = ?, error = ?, reference = ?, parts_sent = ?,"
            " message_ids = ?",
            (
                attempt,
                next_at,
                error,
                reference,
                parts_sent,
                json.dumps(list(message_ids)),
            ),
            step,
        )

    def _outbound_update(
        self, outbound_id: str, assignments: str, args: tuple, step: dict
    ) -> Deferred[None]:
        steps = self._trail_rows(outbound_id, step)

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            if sqlite_outbound.update(db, outbound_id, assignments, args):
                _note(db, steps)
            return None, 0

        return self._write(write, single=True)

    def outbound_failed(
        self, outbound_id: str, attempt: int, reason: str, event: Event
    ) -> Deferred[None]:
        """
        The message will not be sent: state ``failed`` with ``reason``, and
        ``event`` (its ``reply.failed``) stored for delivery in the same
        transaction.  Nothing happens to a message no longer queued.
        """
        now = self._reactor.seconds()
        steps = self._trail_rows(
            outbound_id, trail.step(now, "failed", attempt=attempt, reason=reason)
        )

        def write(db: sqlite3.Connection) -> tuple[None, _Delta]:
            if not sqlite_outbound.update(
                db,
                outbound_id,
                "state = 'failed', attempt = ?, error = ?, done_at = ?",
                (attempt, reason, now),
            ):
                return None, _Delta()
            _note(db, steps)
            _, added = self._insert_event(db, event, now)
            return None, _Delta(added, -1)

        return self._write(write)

    def outbound(self, outbound_id: str) -> Deferred[OutboundState | None]:
        """Where a message is, or None if unknown or forgotten."""
        sql = f"SELECT {sqlite_outbound.COLUMNS} FROM outbound WHERE id = ?"

        def read() -> OutboundState | None:
            rows = self._read(sql, (outbound_id,))
            return sqlite_outbound.state(rows[0]) if rows else None

        return self._in_thread(read)

    def reply_for(self, message_id: str) -> Deferred[str | None]:
        """The outbound id of the part the SMSC accepted as ``message_id``."""
        sql = "SELECT outbound_id FROM receipt WHERE message_id = ? AND at >= ?"
        since = self._reactor.seconds() - self._receipt_keep

        def read(db: sqlite3.Connection) -> tuple[str | None, int]:
            rows = db.execute(sql, (message_id, since)).fetchall()
            return (rows[0][0] if rows else None), 0

        # Queued behind the writes, not read at once: a receipt can arrive
        # while the write recording its part's message_id waits to commit.
        return self._write(read, single=True)

    def outbound_pending(self) -> int:
        """How many outbound messages are queued, without touching the disk."""
        return self._outbound

    def conversation_of(self, key: str) -> Deferred[dict | None]:
        """A conversation's id, turn, started_at and last_at, or None."""
        names = ("id", "turn", "started_at", "last_at")
        sql = "SELECT id, turn, started_at, last_at FROM conversation WHERE key = ?"

        def read() -> dict | None:
            rows = self._read(sql, (key,))
            return dict(zip(names, rows[0])) if rows else None

        return self._in_thread(read)

    def end_session(self, key: str) -> Deferred[None]:
        """Close a USSD session (a reply ended it): no ``session.ended``."""

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            sqlite_outbound.end_session(db, key)
            return None, 0

        return self._write(write, single=True)


def _count_pending(db: sqlite3.Connection) -> int:
    sql = "SELECT count(*) FROM event WHERE state = 'pending'"
    return db.execute(sql).fetchone()[0]


def _create_schema(db: sqlite3.Connection) -> None:
    # executescript() would COMMIT the transaction opened around it.
    schema = _SCHEMA + sqlite_reassembly.SCHEMA + sqlite_outbound.SCHEMA
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)


def _pending_filter(
    webhook: str | None, exclude: Collection[str]
) -> tuple[str, list[Any]]:
    where = ["state = 'pending'"]
    args: list[Any] = []
    if webhook is not None:
        where.append("webhook = ?")
        args.append(webhook)
    if exclude:
        where.append(f"id NOT IN ({', '.join('?' * len(exclude))})")
        args.extend(exclude)
    return " AND ".join(where), args
