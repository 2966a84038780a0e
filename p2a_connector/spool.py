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
    """

    id: str
    type: str
    webhook: str
    body: bytes
    created_at: float


@attrs.frozen
class Segment:
    """
    One segment of a concatenated message.

    :ivar key: identifies the message the segment belongs to; opaque here.
    :ivar record: what the assembler needs of this segment; JSON-serialisable.
    :ivar operator: whose bind it came in on; reassemblies are bounded per
        operator.
    """

    key: str
    seqnum: int = attrs.field(validator=_positive)
    total: int = attrs.field(validator=_positive)
    record: dict
    webhook: str
    received_at: float
    operator: str = ""

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


Assembler = Callable[[list[dict], bool], tuple[str, str, bytes]]
"""
Turns the records of one message, sorted by seqnum, into (id, type, body).

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

    def store(self, item: Event | Segment) -> Deferred[Event | None]:
        """Errbacks with `SpoolLimit` for a segment past a bound."""

    def expire(self, older_than: float) -> Deferred[list[Event]]: ...

    def pending(self) -> int: ...

    def reassemblies(self) -> Reassemblies: ...

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

    def delivered(self, event_id: str) -> Deferred[None]: ...

    def retry(
        self, event_id: str, attempt: int, next_at: float, error: str
    ) -> Deferred[None]: ...

    def dead(self, event_id: str, attempt: int, reason: str) -> Deferred[None]: ...

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]: ...

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]: ...

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]: ...
