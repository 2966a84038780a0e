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

import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2a_connector import sqlite_reassembly
from p2a_connector.spool import (
    Assembler,
    Event,
    PendingEvent,
    Reassemblies,
    Segment,
    SpoolError,
)

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
"""

_EVENT_COLUMNS = "id, type, webhook, body, attempt, created_at"


@attrs.frozen
class _Recount:
    pending: int


# A write runs inside a group transaction and returns its result together
# with how it changed the number of pending events, or their new count.
_Write = Callable[[sqlite3.Connection], tuple[Any, "int | _Recount"]]


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
    ):
        self.path = str(path)
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

    def _opened(self, pending: int) -> None:
        self._open = True
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

    def _connect(self) -> int:
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
            pending = _count_pending(db)
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
        return pending

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

        ``single``: the write is one statement, so it needs no savepoint of
        its own to be undone alone; a statement is applied whole or not at
        all, and a sqlite error fails the whole transaction anyway.  Each
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
            return self._write(lambda db: _insert_event(db, item, now), single=True)
        if isinstance(item, Segment):
            return self._write(lambda db: self._add_segment(db, item, now))
        raise TypeError(f"the spool stores Event or Segment, not {type(item)!r}")

    def _add_segment(
        self, db: sqlite3.Connection, segment: Segment, now: float
    ) -> tuple[Event | None, int]:
        event = self._segments.add(db, segment, now)
        if event is None:
            return None, 0
        return _insert_event(db, event, now)

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
        events = [e for e in assembled if _insert_event(db, e, now)[0] is not None]
        return (events, failures), _Recount(_count_pending(db))

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

    def delivered(self, event_id: str) -> Deferred[None]:
        """Forget a delivered event."""

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            removed = db.execute(
                "DELETE FROM event WHERE id = ? AND state = 'pending'", (event_id,)
            ).rowcount
            return None, -removed

        return self._write(write, single=True)

    def retry(
        self, event_id: str, attempt: int, next_at: float, error: str
    ) -> Deferred[None]:
        """Record a failed attempt; the event is due again at ``next_at``."""

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            db.execute(
                "UPDATE event SET attempt = ?, next_at = ?, error = ?"
                " WHERE id = ? AND state = 'pending'",
                (attempt, next_at, error, event_id),
            )
            return None, 0

        return self._write(write, single=True)

    def dead(self, event_id: str, attempt: int, reason: str) -> Deferred[None]:
        """Move an event to the dead letters, with why it will not be retried."""
        now = self._reactor.seconds()

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            moved = db.execute(
                "UPDATE event SET state = 'dead', attempt = ?, error = ?,"
                " failed_at = ? WHERE id = ? AND state = 'pending'",
                (attempt, reason, now, event_id),
            ).rowcount
            return None, -moved

        return self._write(write, single=True)

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Make dead letters (all, or those named) pending again, due now."""
        now = self._reactor.seconds()
        sql = (
            "UPDATE event SET state = 'pending', attempt = 0, next_at = ?,"
            " error = NULL, failed_at = NULL WHERE state = 'dead'"
        )

        def write(db: sqlite3.Connection) -> tuple[int, int]:
            if ids is None:
                count = db.execute(sql, (now,)).rowcount
            else:
                count = sum(
                    db.execute(sql + " AND id = ?", (now, i)).rowcount for i in ids
                )
            return count, count

        return self._write(write)

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Delete dead letters (all, or those named) for good."""
        sql = "DELETE FROM event WHERE state = 'dead'"

        def write(db: sqlite3.Connection) -> tuple[int, int]:
            if ids is None:
                return db.execute(sql).rowcount, 0
            return sum(db.execute(sql + " AND id = ?", (i,)).rowcount for i in ids), 0

        return self._write(write)

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

    def _read(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        db = self._db
        if db is None:
            raise SpoolError(f"spool {self.path}: the spool is not open")
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise SpoolError(f"spool {self.path}: cannot read: {e}") from None


def _count_pending(db: sqlite3.Connection) -> int:
    sql = "SELECT count(*) FROM event WHERE state = 'pending'"
    return db.execute(sql).fetchone()[0]


def _create_schema(db: sqlite3.Connection) -> None:
    # executescript() would COMMIT the transaction opened around it.
    for statement in (_SCHEMA + sqlite_reassembly.SCHEMA).split(";"):
        if statement.strip():
            db.execute(statement)


def _insert_event(
    db: sqlite3.Connection, event: Event, now: float
) -> tuple[Event | None, int]:
    added = db.execute(
        "INSERT OR IGNORE INTO event"
        " (id, type, webhook, body, created_at, state, attempt, next_at)"
        " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?)",
        (event.id, event.type, event.webhook, event.body, event.created_at, now),
    ).rowcount
    return (event if added else None), added


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
