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
`p2a_connector.sqlite_reassembly`; the group commit itself is
`p2a_connector.sqlite_commit`, the outbound queue, conversations and USSD
sessions `p2a_connector.sqlite_twoway` (their SQL in
`p2a_connector.sqlite_outbound`), and the dead letters
`p2a_connector.sqlite_dead_letters`: base classes of `SqliteSpool` working on
its connection and its write queue.  It implements `p2a_connector.spool.Spool`,
which other backends (a Redis spool shared by several instances) implement
too.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2a_connector import conversation, sqlite_outbound, sqlite_reassembly, trail
from p2a_connector import outbound as outbound_
from p2a_connector.outbound import Outbound
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
)
from p2a_connector.sqlite_commit import GroupCommit, _Delta, _Recount, _Write
from p2a_connector.sqlite_dead_letters import DeadLetters
from p2a_connector.sqlite_outbound import note as _note
from p2a_connector.sqlite_twoway import TwoWay

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


class SqliteSpool(GroupCommit, TwoWay, DeadLetters):
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

    def watch(self, wake: Callable[[str], None]) -> None:
        """
        Nothing: one process stores and delivers, and its intake wakes its
        dispatcher itself (`RedisSpool.watch` serves several).
        """

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
                conversation.conversation_id_for(event.id),
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
        failed = trail.attempt_failed(
            self._reactor.seconds(), attempt, error, next_at, note
        )
        return self._outcome(
            "UPDATE event SET attempt = ?, next_at = ?, error = ?"
            " WHERE id = ? AND state = 'pending'",
            (attempt, next_at, error, event_id),
            self._trail_rows(event_id, failed),
            leaves_pending=False,
        )

    def _outcome(
        self, sql: str, args: tuple, steps: list, *, leaves_pending: bool
    ) -> Deferred[None]:
        """
        Record an attempt's outcome: one statement on a pending event and,
        if it matched, its trail steps; ``leaves_pending`` when the event is
        no longer pending afterwards.
        """

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            changed = db.execute(sql, args).rowcount
            if changed:
                _note(db, steps)
            return None, -changed if leaves_pending else 0

        return self._write(write, single=True)

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

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        """The event's trail, oldest step first; empty if unknown or forgotten."""
        sql = "SELECT step FROM trail WHERE event_id = ? ORDER BY at, rowid"

        def read() -> list[dict]:
            return trail.decode_steps(line for (line,) in self._read(sql, (event_id,)))

        return self._in_thread(read)


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
