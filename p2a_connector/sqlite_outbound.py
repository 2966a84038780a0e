"""
The outbound side of the sqlite spool: messages to send
(`p2a_connector.outbound`), the index from the SMSC's message_id of each
part sent back to its message, conversations and USSD sessions
(`p2a_connector.conversation`).

Like `p2a_connector.sqlite_reassembly`, these functions work on the spool's
connection, in the spool's thread, inside the transaction
`p2a_connector.sqlite_spool.SqliteSpool` opened; they never commit.  Trail
rows come encoded from the caller, so a write is whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs

from p2a_connector.outbound import Outbound, OutboundState

# An outbound row is queued (waiting to be sent, or being sent under a lease
# until next_at), sent or failed; the last two are deleted outbound_keep
# seconds after done_at.
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbound (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    reference INTEGER NOT NULL DEFAULT 0,
    parts_sent INTEGER NOT NULL DEFAULT 0,
    message_ids TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    sent_at REAL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS outbound_due ON outbound (next_at)
    WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS outbound_done ON outbound (done_at)
    WHERE state != 'queued';

CREATE TABLE IF NOT EXISTS receipt (
    message_id TEXT PRIMARY KEY,
    outbound_id TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS receipt_age ON receipt (at);

CREATE TABLE IF NOT EXISTS conversation (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversation_age ON conversation (last_at);

CREATE TABLE IF NOT EXISTS ussd_session (
    key TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    info TEXT NOT NULL,
    last_message_id TEXT NOT NULL,
    last_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ussd_session_age ON ussd_session (last_at);
"""

COLUMNS = (
    "message, state, attempt, next_at, reference, parts_sent, message_ids,"
    " error, sent_at"
)


def note(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert trail rows (event or outbound id, at, step JSON)."""
    if rows:
        db.executemany("INSERT INTO trail (event_id, at, step) VALUES (?, ?, ?)", rows)


def state(row: Sequence[Any]) -> OutboundState:
    """An `OutboundState` from a row of `COLUMNS`."""
    message, kind, attempt, next_at, reference, parts_sent, ids, error, sent = row
    return OutboundState(
        message=Outbound.loads(message),
        state=kind,
        attempt=attempt,
        next_at=next_at,
        reference=reference,
        parts_sent=parts_sent,
        message_ids=tuple(json.loads(ids)),
        error=error,
        sent_at=sent,
    )


def count_queued(db: sqlite3.Connection) -> int:
    sql = "SELECT count(*) FROM outbound WHERE state = 'queued'"
    return db.execute(sql).fetchone()[0]


def queue(
    db: sqlite3.Connection,
    messages: Sequence[Outbound],
    now: float,
    steps: Mapping[str, list[tuple]],
) -> int:
    """Insert the messages not kept yet, due now; how many were new."""
    added = 0
    for message in messages:
        if db.execute(
            "INSERT OR IGNORE INTO outbound (id, operator, message, state, next_at)"
            " VALUES (?, ?, ?, 'queued', ?)",
            (message.id, message.operator, message.dumps(), now),
        ).rowcount:
            note(db, steps.get(message.id, []))
            added += 1
    return added


def _operators(operators: Collection[str] | None) -> tuple[str, list[str]]:
    if operators is None:
        return "", []
    names = list(operators)
    return f" AND operator IN ({', '.join('?' * len(names))})", names


def take(
    db: sqlite3.Connection,
    now: float,
    limit: int,
    operators: Collection[str] | None,
    until: float,
) -> list[OutboundState]:
    """The due messages, oldest first; each leased (not due) until ``until``."""
    where, names = _operators(operators)
    if operators is not None and not names:
        return []
    rows = db.execute(
        f"SELECT id, {COLUMNS} FROM outbound INDEXED BY outbound_due"
        f" WHERE state = 'queued' AND next_at <= ?{where}"
        " ORDER BY next_at, rowid LIMIT ?",
        (now, *names, limit),
    ).fetchall()
    db.executemany(
        "UPDATE outbound SET next_at = ? WHERE id = ?",
        [(until, row[0]) for row in rows],
    )
    return [attrs.evolve(state(row[1:]), next_at=until) for row in rows]


def next_due_sql(operators: Collection[str] | None) -> tuple[str, list[str]]:
    where, names = _operators(operators)
    sql = (
        "SELECT min(next_at) FROM outbound INDEXED BY outbound_due"
        f" WHERE state = 'queued'{where}"
    )
    return sql, names


def update(
    db: sqlite3.Connection, outbound_id: str, assignments: str, args: Sequence[Any]
) -> bool:
    """Change a queued message; whether it was queued."""
    return bool(
        db.execute(
            f"UPDATE outbound SET {assignments} WHERE id = ? AND state = 'queued'",
            (*args, outbound_id),
        ).rowcount
    )


def index_receipts(
    db: sqlite3.Connection, outbound_id: str, message_ids: Sequence[str], now: float
) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO receipt (message_id, outbound_id, at) VALUES (?, ?, ?)",
        [(message_id, outbound_id, now) for message_id in message_ids],
    )


def forget(
    db: sqlite3.Connection, now: float, outbound_keep: float, receipt_keep: float
) -> None:
    """Delete sent and failed messages and receipt entries kept long enough."""
    db.execute(
        "DELETE FROM outbound INDEXED BY outbound_done"
        " WHERE state != 'queued' AND done_at < ?",
        (now - outbound_keep,),
    )
    db.execute(
        "DELETE FROM receipt INDEXED BY receipt_age WHERE at < ?",
        (now - receipt_keep,),
    )


# --- conversations and USSD sessions ------------------------------------------


def conversation(
    db: sqlite3.Connection, key: str
) -> tuple[str, int, float, float] | None:
    """(id, turn, started_at, last_at) of the conversation, or None."""
    row = db.execute(
        "SELECT id, turn, started_at, last_at FROM conversation WHERE key = ?",
        (key,),
    ).fetchone()
    return tuple(row) if row else None


def keep_conversation(
    db: sqlite3.Connection, key: str, value: tuple[str, int, float, float]
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO conversation (key, id, turn, started_at, last_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (key, *value),
    )


def forget_conversations(db: sqlite3.Connection, before: float) -> None:
    db.execute(
        "DELETE FROM conversation INDEXED BY conversation_age WHERE last_at < ?",
        (before,),
    )


def touch_session(
    db: sqlite3.Connection,
    key: str,
    info: Mapping[str, Any],
    *,
    webhook: str,
    event_id: str,
    at: float,
) -> None:
    """Open or refresh a USSD session; close it if its message ended it."""
    if (info.get("session") or {}).get("end"):
        end_session(db, key)
        return
    db.execute(
        "INSERT OR REPLACE INTO ussd_session"
        " (key, webhook, info, last_message_id, last_at) VALUES (?, ?, ?, ?, ?)",
        (key, webhook, json.dumps(info, separators=(",", ":")), event_id, at),
    )


def end_session(db: sqlite3.Connection, key: str) -> None:
    db.execute("DELETE FROM ussd_session WHERE key = ?", (key,))


def idle_sessions(db: sqlite3.Connection, before: float) -> list[tuple]:
    """(key, webhook, info, last_message_id) of sessions silent since before."""
    rows = db.execute(
        "SELECT key, webhook, info, last_message_id FROM ussd_session"
        " INDEXED BY ussd_session_age WHERE last_at < ? ORDER BY last_at",
        (before,),
    ).fetchall()
    return [(key, webhook, json.loads(info), last) for key, webhook, info, last in rows]
