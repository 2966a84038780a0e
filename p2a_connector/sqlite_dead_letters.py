"""
Dead letters in the sqlite spool: an event moved there, listed, counted,
made pending again (replay) or deleted (purge).

`DeadLetters` is a base class of `p2a_connector.sqlite_spool.SqliteSpool`;
its writes go through the spool's group commit and note the spool's trail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from p2a_connector import trail
from p2a_connector.sqlite_outbound import note as _note


class DeadLetters:
    """The events the dispatcher gave up on, kept until replayed or purged."""

    def dead(
        self,
        event_id: str,
        attempt: int,
        reason: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        """Move an event to the dead letters, with why it will not be retried."""
        now = self._reactor.seconds()
        dead = trail.dead_lettered(now, attempt, reason, note)
        return self._outcome(
            "UPDATE event SET state = 'dead', attempt = ?, error = ?,"
            " failed_at = ? WHERE id = ? AND state = 'pending'",
            (attempt, reason, now, event_id),
            self._trail_rows(event_id, dead),
            leaves_pending=True,
        )

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
