"""
Reassembly inside the sqlite spool: segments waiting for their siblings,
messages completed recently, and the bounds on what peers make it hold.

`Reassembly` works on the spool's connection, in the spool's thread, inside
the transaction `p2a_connector.sqlite_spool.SqliteSpool` opened; it never
commits.  It keeps the counts of open reassemblies in memory: loaded from the
file once at open, then changed by the same writes that change the rows, so a
bound costs nothing per segment but a comparison.
"""

from __future__ import annotations

import sqlite3

import orjson
from twisted.python.failure import Failure

from p2a_connector import conversation, trail
from p2a_connector.spool import Assembler, Event, Reassemblies, Segment, SpoolLimit

SCHEMA = """
CREATE TABLE IF NOT EXISTS segment (
    key TEXT NOT NULL,
    seqnum INTEGER NOT NULL,
    total INTEGER NOT NULL,
    record TEXT NOT NULL,
    webhook TEXT NOT NULL,
    received_at REAL NOT NULL,
    operator TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, seqnum)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segment_age ON segment (received_at);

CREATE TABLE IF NOT EXISTS completed (
    key TEXT PRIMARY KEY,
    completed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS completed_age ON completed (completed_at);
"""

# Records are stored as ASCII JSON, so length() counts their bytes.
_COUNT = """
SELECT operator, count(*), sum(held) FROM (
    SELECT min(operator) AS operator, sum(length(record)) AS held
    FROM segment GROUP BY key
) GROUP BY operator
"""


def add_operator_column(db: sqlite3.Connection) -> None:
    """
    Give a file from before per-operator bounds its ``operator`` column.

    Versions without the column ignore it, so the file stays usable by them.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(segment)")}
    if "operator" in columns:
        return
    db.execute("ALTER TABLE segment ADD COLUMN operator TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT key, seqnum, record FROM segment").fetchall()
    for key, seqnum, record in rows:
        operator = orjson.loads(record).get("operator", "")
        db.execute(
            "UPDATE segment SET operator = ? WHERE key = ? AND seqnum = ?",
            (str(operator), key, seqnum),
        )


class Reassembly:
    """
    The segment tables of the spool file and the bounds on them.

    A bound left as None is not enforced.

    :ivar held: the open reassemblies as of the last COMMIT.  Only the
        spool's thread assigns it; the value is immutable, so the reactor
        may read it.
    :ivar working: the same, with the writes of the open transaction.
    """

    def __init__(
        self,
        assembler: Assembler,
        *,
        completed_ttl: float,
        max_reassemblies: int | None = None,
        max_reassemblies_per_operator: int | None = None,
        max_reassembly_bytes: int | None = None,
    ):
        self._assembler = assembler
        self._completed_ttl = completed_ttl
        self._max_reassemblies = max_reassemblies
        self._max_per_operator = max_reassemblies_per_operator
        self._max_bytes = max_reassembly_bytes
        self.held = Reassemblies()
        self.working = self.held

    def set_bounds(
        self,
        *,
        max_reassemblies: int | None,
        max_reassemblies_per_operator: int | None,
        max_reassembly_bytes: int | None,
    ) -> None:
        """New bounds for the next segment (a configuration reload)."""
        # Each is one attribute the spool's thread reads whole, so the
        # reactor may replace it while a transaction runs.
        self._max_reassemblies = max_reassemblies
        self._max_per_operator = max_reassemblies_per_operator
        self._max_bytes = max_reassembly_bytes

    def load(self, db: sqlite3.Connection) -> None:
        """Count what the file holds; once, when the spool opens."""
        count, size, by_operator = 0, 0, {}
        for operator, reassemblies, held in db.execute(_COUNT):
            by_operator[operator] = reassemblies
            count += reassemblies
            size += held
        self.held = self.working = Reassemblies(count, size, by_operator)

    def add(self, db: sqlite3.Connection, segment: Segment, now: float) -> Event | None:
        """
        Keep a segment; return its message's event if it completed it.

        :raises SpoolLimit: keeping it would go past a bound.  The segment
            was inserted; the caller's savepoint must undo it.
        """
        recently = db.execute(
            "SELECT 1 FROM completed WHERE key = ? AND completed_at >= ?",
            (segment.key, now - self._completed_ttl),
        ).fetchone()
        if recently:
            return None

        record = orjson.dumps(segment.record).decode()
        added = db.execute(
            "INSERT OR IGNORE INTO segment"
            " (key, seqnum, total, record, webhook, received_at, operator)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                segment.key,
                segment.seqnum,
                segment.total,
                record,
                segment.webhook,
                segment.received_at,
                segment.operator,
            ),
        ).rowcount
        if not added:
            return None

        rows, present = db.execute(
            "SELECT count(*), sum(seqnum BETWEEN 1 AND ?) FROM segment WHERE key = ?",
            (segment.total, segment.key),
        ).fetchone()
        opened = rows == 1
        held = self.working.opened(segment.operator) if opened else self.working
        held = held.grown(len(record))

        if present < segment.total:
            self._check(held, segment.operator, opened)
            self.working = held
            return None

        # A completing segment frees what its message held: no bound refuses it.
        event, self.working = self._assemble(
            db, held, segment.key, complete=True, now=now
        )
        db.execute(
            "INSERT OR REPLACE INTO completed (key, completed_at) VALUES (?, ?)",
            (segment.key, now),
        )
        return event

    def _check(self, held: Reassemblies, operator: str, opened: bool) -> None:
        if opened and _over(held.by_operator[operator], self._max_per_operator):
            raise SpoolLimit(
                "max_reassemblies_per_operator", self._max_per_operator, operator
            )
        if opened and _over(held.count, self._max_reassemblies):
            raise SpoolLimit("max_reassemblies", self._max_reassemblies, operator)
        if _over(held.bytes, self._max_bytes):
            raise SpoolLimit("max_reassembly_bytes", self._max_bytes, operator)

    def expire(
        self, db: sqlite3.Connection, older_than: float, now: float
    ) -> tuple[list[Event], list[tuple[str, Failure]]]:
        """
        Assemble, incomplete, the messages whose first segment arrived before
        ``older_than``, and forget completed messages past ``completed_ttl``.

        A message whose assembler fails keeps its segments and is returned
        among the failures with its key.
        """
        db.execute(
            "DELETE FROM completed WHERE completed_at < ?",
            (now - self._completed_ttl,),
        )
        keys = [
            key
            for (key,) in db.execute(
                "SELECT DISTINCT key FROM segment INDEXED BY segment_age"
                " WHERE received_at < ?",
                (older_than,),
            )
        ]
        events: list[Event] = []
        failures: list[tuple[str, Failure]] = []
        for key in keys:
            db.execute("SAVEPOINT expire")
            try:
                event, held = self._assemble(
                    db, self.working, key, complete=False, now=now
                )
            except sqlite3.Error:
                raise
            except Exception:  # noqa: BLE001 - one bad message must not block the rest
                db.execute("ROLLBACK TO expire")
                failures.append((key, Failure()))
            else:
                self.working = held
                events.append(event)
            db.execute("RELEASE expire")
        return events, failures

    def _assemble(
        self,
        db: sqlite3.Connection,
        held: Reassemblies,
        key: str,
        *,
        complete: bool,
        now: float,
    ) -> tuple[Event, Reassemblies]:
        rows = db.execute(
            "SELECT record, webhook, operator FROM segment WHERE key = ?"
            " ORDER BY seqnum",
            (key,),
        ).fetchall()
        records = [orjson.loads(record) for record, _, _ in rows]
        event_id, event_type, body = self._assembler(records, complete)
        conversation_key, ussd = conversation.keys_of_body(event_type, body)
        event = Event(
            id=event_id,
            type=event_type,
            webhook=rows[0][1],
            body=body,
            created_at=now,
            trail=trail.assembled(records, complete, now),
            conversation=conversation_key,
            ussd=ussd,
        )
        db.execute("DELETE FROM segment WHERE key = ?", (key,))
        operator = min(operator for _, _, operator in rows)
        return event, held.closed(operator, sum(len(record) for record, _, _ in rows))


def _over(value: int, bound: int | None) -> bool:
    return bound is not None and value > bound
