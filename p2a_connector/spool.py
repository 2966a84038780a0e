"""
What every spool offers: the items it keeps and the interface the intake and
the dispatcher use.

A spool holds segments waiting for their siblings, events waiting for
delivery, and dead letters.  Its one promise: `Spool.store` fires only once
the item is durable, so anything acknowledged to an SMSC survives a crash.
It also bounds what the peers make it hold: past a limit, `Spool.store`
refuses a segment with `SpoolLimit`, and the SMSC is asked to retry.
`p2a_connector.sqlite_spool.SqliteSpool` is the embedded implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from p2a_connector.outbound import Outbound, OutboundState


class SpoolError(Exception):
    """The spool cannot be used (disk full, locked, corrupt, closed...)."""


class SpoolLimit(SpoolError):
    """
    A segment was refused: keeping it would take the spool past a bound.

    :ivar limit: the bound's name, as in the ``[limits]`` table.
    :ivar bound: its value.
    :ivar operator: the operator whose segment it was.
    """

    def __init__(self, limit: str, bound: int, operator: str):
        super().__init__(
            f"limits.{limit} = {bound} reached: refused a segment from "
            f"operator {operator!r}"
        )
        self.limit = limit
        self.bound = bound
        self.operator = operator


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@attrs.frozen
class Event:
    """
    A complete event, ready to post.

    :ivar id: the ``webhook-id``, the same on every attempt and after restarts.
    :ivar body: the compact JSON envelope, posted byte for byte on every attempt.
    :ivar trail: the steps before it was stored (its PDUs received), which the
        spool keeps with it; see `p2a_connector.trail`.
    :ivar conversation: for a ``message.received``, the key of its
        conversation (`p2a_connector.conversation.conversation_key`); the
        spool assigns the conversation's id and turn as it stores the event
        and puts them in the body's placeholder.
    :ivar ussd: for a USSD message with a session id, ``(key, info)``
        (`p2a_connector.conversation.keys`): the session it opens or
        refreshes, or closes when ``info["session"]["end"]`` is set.
    """

    id: str
    type: str
    webhook: str
    body: bytes
    created_at: float
    trail: tuple[dict, ...] = attrs.field(default=(), eq=False, repr=False)
    conversation: str | None = attrs.field(default=None, eq=False, repr=False)
    ussd: tuple[str, Mapping[str, Any]] | None = attrs.field(
        default=None, eq=False, repr=False
    )


@attrs.frozen
class Segment:
    """
    One segment of a concatenated message.

    :ivar key: identifies the message the segment belongs to; opaque here.
    :ivar record: what the assembler needs of this segment; JSON-serialisable.
    :ivar operator: whose bind it came in on; reassemblies are bounded per
        operator.
    :ivar conversation: the conversation key of the message it is part of
        (`p2a_connector.conversation.conversation_key`), by which a sharded
        spool keeps the message's segments with its conversation.
    :ivar parsed: what the assembler may be given in place of ``record`` by
        a spool assembling segments in the process that made them: the
        record as the intake already read it.  Never stored.
    """

    key: str
    seqnum: int = attrs.field(validator=_positive)
    total: int = attrs.field(validator=_positive)
    record: dict
    webhook: str
    received_at: float
    operator: str = ""
    conversation: str | None = attrs.field(default=None, eq=False, repr=False)
    parsed: object = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.seqnum > self.total:
            raise ValueError(
                f"segment {self.seqnum} of {self.total}: the sequence number "
                "is greater than the total"
            )


@attrs.frozen
class Reassemblies:
    """
    The messages waiting for segments: how many, per operator, and the bytes
    their segments take in the spool.  A value: each change makes a new one.
    """

    count: int = 0
    bytes: int = 0
    by_operator: Mapping[str, int] = attrs.field(factory=dict)

    def opened(self, operator: str) -> Reassemblies:
        by_operator = dict(self.by_operator)
        by_operator[operator] = by_operator.get(operator, 0) + 1
        return Reassemblies(self.count + 1, self.bytes, by_operator)

    def grown(self, size: int) -> Reassemblies:
        return Reassemblies(self.count, self.bytes + size, self.by_operator)

    def closed(self, operator: str, size: int) -> Reassemblies:
        by_operator = dict(self.by_operator)
        left = by_operator.pop(operator, 0) - 1
        if left > 0:
            by_operator[operator] = left
        return Reassemblies(self.count - 1, self.bytes - size, by_operator)


@attrs.frozen
class PendingEvent:
    """An undelivered event; ``attempt`` is how many attempts were made."""

    id: str
    type: str
    webhook: str
    body: bytes
    attempt: int
    created_at: float


Assembler = Callable[[list[Any], bool], tuple[str, str, bytes]]
"""
Turns the records of one message, sorted by seqnum, into (id, type, body).
A record may come as its segment's ``parsed`` instead, where the spool
still holds the Segment the intake gave it.

The flag says whether every segment is present (False when the reassembly
timed out).  The id must be new for every message: an id already in the
spool is taken to be the same message, and the new one is not kept.

It is called in the spool's thread, inside the transaction that completes
or expires the message, so it must be pure: no reactor calls, no I/O.
"""


class Spool(Protocol):
    """What the dispatcher and the intake need of a spool."""

    def open(self) -> Deferred[None]: ...

    def close(self) -> Deferred[None]: ...

    def watch(self, wake: Callable[[str], None]) -> None:
        """
        Call ``wake`` with a webhook's name when another process stores
        events for it, until the spool closes: a hint to look now, which
        may come late or not at all.
        """

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        """Errbacks with `SpoolLimit` for a segment past a bound."""

    def expire(self, older_than: float) -> Deferred[list[Event]]: ...

    def pending(self) -> int: ...

    def reassemblies(self) -> Reassemblies: ...

    def set_bounds(self, **bounds: int | None) -> None:
        """Replace the ``max_reassembl*`` bounds (a configuration reload)."""

    def due(
        self,
        now: float,
        limit: int,
        exclude: Collection[str] = (),
        *,
        webhook: str | None = None,
    ) -> Deferred[list[PendingEvent]]: ...

    def next_due(
        self, *, webhook: str | None = None, exclude: Collection[str] = ()
    ) -> Deferred[float | None]: ...

    # ``note`` adds the dispatcher's facts (HTTP status, duration) to the
    # step each of these writes to the event's trail.
    def delivered(
        self,
        event_id: str,
        note: Mapping[str, Any] | None = None,
        replies: Sequence[Outbound] = (),
    ) -> Deferred[None]:
        """
        Forget a delivered event and queue the replies its webhook answered
        with, in one write; the replies are queued (by id, once) even when
        the event was already delivered.
        """

    def retry(
        self,
        event_id: str,
        attempt: int,
        next_at: float,
        error: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]: ...

    def dead(
        self,
        event_id: str,
        attempt: int,
        reason: str,
        note: Mapping[str, Any] | None = None,
    ) -> Deferred[None]: ...

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]: ...

    def dead_letter_count(self) -> Deferred[int]: ...

    def trail(self, event_id: str) -> Deferred[list[dict]]:
        """The event's steps in time order; empty if unknown or forgotten."""

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]: ...

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]: ...

    # --- two-way messaging: outbound messages, conversations, USSD sessions
    # (p2a_connector.outbound, p2a_connector.conversation).  Every write is
    # durable before its Deferred fires, and atomic across instances.

    def queue(self, messages: Sequence[Outbound]) -> Deferred[int]:
        """Keep messages to send, due now; fires with how many were new."""

    def outbound_due(
        self,
        now: float,
        limit: int,
        *,
        operators: Collection[str] | None = None,
        lease: float = 60.0,
    ) -> Deferred[list[OutboundState]]:
        """Take queued messages due at ``now``; not due again for ``lease``."""

    def next_outbound_due(
        self, *, operators: Collection[str] | None = None
    ) -> Deferred[float | None]: ...

    def outbound_progress(
        self,
        outbound_id: str,
        *,
        reference: int,
        parts_sent: int,
        message_ids: Sequence[str],
        operator: str,
    ) -> Deferred[None]: ...

    def outbound_sent(
        self,
        outbound_id: str,
        *,
        reference: int,
        message_ids: Sequence[str],
        operator: str,
    ) -> Deferred[None]: ...

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
    ) -> Deferred[None]: ...

    def outbound_failed(
        self, outbound_id: str, attempt: int, reason: str, event: Event
    ) -> Deferred[None]:
        """Fail a message for good and store its ``reply.failed`` event."""

    def outbound(self, outbound_id: str) -> Deferred[OutboundState | None]: ...

    def reply_for(self, message_id: str, operator: str) -> Deferred[str | None]:
        """
        The outbound id whose part the operator's SMSC accepted as
        ``message_id`` (the one its receipts name).
        """

    def outbound_pending(self) -> int:
        """Queued outbound messages, without I/O."""

    def conversation_of(self, key: str) -> Deferred[dict | None]: ...

    def end_session(self, key: str) -> Deferred[None]:
        """Close a USSD session without a ``session.ended`` event."""
