"""
Group commit for the sqlite spool: writes arriving close together share one
transaction, and so one fsync, in the spool's single thread.

`GroupCommit` is a base class of `p2a_connector.sqlite_spool.SqliteSpool`
and works on its state: the connection (``_db``), the thread pool
(``_threads``), the queue of writes and the in-memory counts a commit
updates.  A write is a function of the connection, run inside the open
transaction, that returns its result and how it changed the counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from p2a_connector.spool import SpoolError


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


class GroupCommit:
    """
    The spool's write queue, its transactions and its reads, all in the
    spool's one thread; see `p2a_connector.sqlite_spool.SqliteSpool` for
    what a write's Deferred promises.
    """

    def _flushed(self) -> Deferred[None]:
        if not self._queue and not self._committing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred:
        if self._threads is None:
            return fail(SpoolError(f"spool {self.path}: the spool is not open"))
        return deferToThreadPool(self._reactor, self._threads, f, *args)

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

    def _read(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        db = self._db
        if db is None:
            raise SpoolError(f"spool {self.path}: the spool is not open")
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise SpoolError(f"spool {self.path}: cannot read: {e}") from None
