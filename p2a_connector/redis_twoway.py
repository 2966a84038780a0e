"""
The two-way side of the Redis spool: the outbound queue
(`p2a_connector.outbound`), the receipt index, conversations and USSD
sessions (`p2a_connector.conversation`).

`TwoWay` is a base class of `p2a_connector.redis_spool.RedisSpool`: its
methods are part of the `p2a_connector.spool.Spool` protocol the spool
implements, and run the Lua scripts of `p2a_connector.redis_outbound`
through the spool's connection, as the spool's own methods do.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from p2a_connector import conversation, trail
from p2a_connector import redis_outbound as outbound_scripts
from p2a_connector.outbound import Outbound, OutboundState, receipt_key
from p2a_connector.redis_commands import GROUP, _number, _text
from p2a_connector.spool import Event


class TwoWay:
    """Outbound messages, conversations and USSD sessions in Redis."""

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
                self._keys,
                GROUP,
                key,
                last_at,
                *args,
            )
            if status == "stored":
                ended.append(event)
        return ended

    def _queued_args(self, messages: Sequence[Outbound], now: float) -> list[str]:
        """Four script arguments per message to queue (queue_all)."""
        args = []
        for message in messages:
            queued = trail.queued(
                now, operator=message.operator, in_reply_to=message.in_reply_to
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
        operator: str,
    ) -> Deferred[None]:
        """
        Some parts were accepted: a retry goes on from ``parts_sent``, and
        their message_ids find the message already (a receipt can overtake
        the last part).
        """
        step = trail.step(self._reactor.seconds(), "part_sent", parts_sent=parts_sent)
        # Sent before the update, on the spool's one connection, so that a
        # receipt looked up after this call returns finds them.  True whatever the
        # update does: the SMSC did accept these parts.
        indexed = [
            self._command(
                "SET",
                self._keys + "rcpt:" + receipt_key(operator, message_id),
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
        step = trail.outbound_retry(
            self._reactor.seconds(), attempt, error, next_at, parts_sent
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
        self,
        outbound_id: str,
        *,
        reference: int,
        message_ids: Sequence[str],
        operator: str,
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
                *(receipt_key(operator, message_id) for message_id in message_ids),
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
                self._keys,
                GROUP,
                outbound_id,
                attempt,
                reason,
                self._outbound_keep,
                self._steps(failed),
                self._trail_keep,
                *args,
            )

        return ensureDeferred(run())

    def outbound(self, outbound_id: str) -> Deferred[OutboundState | None]:
        """Where a message is, or None if unknown or forgotten."""
        d = self._command("HMGET", self._keys + "ob:" + outbound_id, *_FIELDS)
        return d.addCallback(
            lambda row: None if row[0] is None else _outbound_state(row)
        )

    def reply_for(self, message_id: str, operator: str) -> Deferred[str | None]:
        """The outbound id of the part the SMSC accepted as ``message_id``."""
        d = self._command(
            "GET", self._keys + "rcpt:" + receipt_key(operator, message_id)
        )
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
