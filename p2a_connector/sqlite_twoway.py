"""
The two-way side of the sqlite spool: the outbound queue
(`p2a_connector.outbound`), the receipt index, conversations and USSD
sessions (`p2a_connector.conversation`).

`TwoWay` is a base class of `p2a_connector.sqlite_spool.SqliteSpool`: its
methods are part of the `p2a_connector.spool.Spool` protocol the spool
implements, and go through the spool's group commit (`_write`), reads and
trail like the spool's own.  Their SQL is `p2a_connector.sqlite_outbound`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence

from twisted.internet.defer import Deferred, succeed

from p2a_connector import conversation, sqlite_outbound, trail
from p2a_connector.outbound import Outbound, OutboundState, receipt_key
from p2a_connector.spool import Event
from p2a_connector.sqlite_commit import _Delta
from p2a_connector.sqlite_outbound import note as _note


class TwoWay:
    """Outbound messages, conversations and USSD sessions in the spool file."""

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

    def _queued_rows(
        self, messages: Sequence[Outbound], now: float
    ) -> dict[str, list[tuple]]:
        return {
            message.id: self._trail_rows(
                message.id,
                trail.queued(
                    now, operator=message.operator, in_reply_to=message.in_reply_to
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
        operator: str,
    ) -> Deferred[None]:
        """
        Some parts were accepted: a retry goes on from ``parts_sent``, and
        their message_ids find the message already (a receipt can overtake
        the last part).
        """
        keys = [receipt_key(operator, message_id) for message_id in message_ids]
        now = self._reactor.seconds()
        args = (reference, parts_sent, json.dumps(list(message_ids)))
        steps = self._trail_rows(
            outbound_id, trail.step(now, "part_sent", parts_sent=parts_sent)
        )

        def write(db: sqlite3.Connection) -> tuple[None, int]:
            assignments = "reference = ?, parts_sent = ?, message_ids = ?"
            if sqlite_outbound.update(db, outbound_id, assignments, args):
                sqlite_outbound.index_receipts(db, outbound_id, keys, now)
                _note(db, steps)
            return None, 0

        return self._write(write)

    def outbound_sent(
        self,
        outbound_id: str,
        *,
        reference: int,
        message_ids: Sequence[str],
        operator: str,
    ) -> Deferred[None]:
        """Every part was accepted; each message_id now finds the message."""
        keys = [receipt_key(operator, message_id) for message_id in message_ids]
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
            sqlite_outbound.index_receipts(db, outbound_id, keys, now)
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
        step = trail.outbound_retry(
            self._reactor.seconds(), attempt, error, next_at, parts_sent
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

    def reply_for(self, message_id: str, operator: str) -> Deferred[str | None]:
        """The outbound id of the part the SMSC accepted as ``message_id``."""
        sql = "SELECT outbound_id FROM receipt WHERE message_id = ? AND at >= ?"
        since = self._reactor.seconds() - self._receipt_keep
        key = receipt_key(operator, message_id)

        def read(db: sqlite3.Connection) -> tuple[str | None, int]:
            rows = db.execute(sql, (key, since)).fetchall()
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
