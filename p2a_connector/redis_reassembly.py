"""
Reassembly in the Redis spool.

The assembler is Python, so a message whose segments this process sent
itself is assembled before its last segment is sent: one script adds that
segment and, if Redis holds exactly the siblings the event was made of,
stores the event (`HeldHere` remembers what was sent).  Otherwise it takes
two scripts: the first adds the segment and, if it completes its message,
replies every record without writing; the second stores the assembled event
and closes the reassembly, unless another instance closed it first (the
completed marker is set) or it changed meanwhile (its token differs).
Either way one message makes one event however many instances complete it
at once.

`Reassembly` is a base class of `p2a_connector.redis_spool.RedisSpool` and
works on its keys, bounds and assembler.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from p2a_connector import conversation, trail
from p2a_connector import redis_reassembly_scripts as scripts
from p2a_connector.redis_commands import GROUP, _filled, _number, _text
from p2a_connector.spool import Event, Segment, SpoolError, SpoolLimit

# A completion that finds its reassembly changed (it expired, say) starts
# over; past this many rounds the store fails and the SMSC retries.
_ROUNDS = 3


class HeldHere:
    """
    The segments this process sent to Redis, by message key, for messages
    not known to be complete: the segment that completes one of them is
    assembled before it is sent, and added with its event in one script
    call.  Redis checks that the message holds exactly these siblings
    (their nonces) and otherwise answers as for any segment, so what is
    kept here may be stale or incomplete at no cost but a wasted assembly.
    The oldest messages are forgotten past ``most``.
    """

    def __init__(self, most: int = 4096):
        self._most = most
        self._messages: OrderedDict[str, dict[int, tuple[str, str, Segment]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, segment: Segment, nonce: str, record: str) -> list | None:
        """
        Keep ``segment``; if every other segment of its message is kept,
        with its webhook, the (seqnum, nonce, record, Segment) of all of
        them in seqnum order, this one included.
        """
        held = self._messages.get(segment.key)
        if held is None:
            held = self._messages[segment.key] = {}
            if len(self._messages) > self._most:
                self._messages.popitem(last=False)
        elif segment.seqnum in held:
            # Offered again: Redis says which copy it kept.
            return None
        held[segment.seqnum] = (nonce, record, segment)
        if len(held) != segment.total or any(
            kept.webhook != segment.webhook for _, _, kept in held.values()
        ):
            return None
        return [(seqnum, *held[seqnum]) for seqnum in sorted(held)]

    def forget(self, segment: Segment, nonce: str) -> None:
        """Drop this copy of ``segment``: Redis did not keep it."""
        held = self._messages.get(segment.key)
        if held is not None and held.get(segment.seqnum, ("",))[0] == nonce:
            del held[segment.seqnum]
            if not held:
                del self._messages[segment.key]

    def completed(self, segment: Segment) -> None:
        """Drop the message ``segment`` completed."""
        self._messages.pop(segment.key, None)


class Reassembly:
    """Segments waiting for their siblings, and the events they make."""

    def _segment_keys(self, key: str) -> tuple[str, str]:
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self._keys + "seg:" + digest, self._keys + "done:" + digest

    async def _store_segment(self, segment: Segment) -> Event | None:
        # Tells this copy from others sent by any instance; as no one need
        # guess it, the process's seeded generator serves, without a system
        # call per segment.
        nonce = f"{random.getrandbits(64):016x}"
        try:
            return await self._add_segment(segment, nonce)
        except BaseException:
            self._held_here.forget(segment, nonce)
            raise

    async def _add_segment(self, segment: Segment, nonce: str) -> Event | None:
        keys = self._segment_keys(segment.key)
        record = orjson.dumps(segment.record).decode()
        added = (
            *keys,
            segment.seqnum,
            segment.total,
            record,
            segment.webhook,
            _number(segment.received_at),
            segment.operator,
            segment.key,
            nonce,
        )
        siblings = self._held_here.add(segment, nonce, record)
        for _ in range(_ROUNDS):
            event, assembled = None, (-1,)
            if siblings is not None:
                held = [kept for *_, kept in siblings]
                event = self._event_of(
                    [kept.record for kept in held],
                    [
                        kept.record if kept.parsed is None else kept.parsed
                        for kept in held
                    ],
                    segment.webhook,
                    complete=True,
                )
                others = [
                    value
                    for seqnum, nonce_kept, _, _ in siblings
                    if seqnum != segment.seqnum
                    for value in (seqnum, nonce_kept)
                ]
                assembled = (
                    len(others) // 2,
                    *others,
                    self._marker_ttl("complete"),
                    *self._event_args(event, self._reactor.seconds()),
                )
                siblings = None
            status, extra = await self._segment_adds.add((*added, *assembled))
            if status == "held":
                return None
            if status in ("stored", "duplicate"):
                self._held_here.completed(segment)
                return _filled(event, extra) if status == "stored" else None
            if status == "limit":
                self._held_here.forget(segment, nonce)
                name = _text(extra[0])
                raise SpoolLimit(name, self._bounds[name], segment.operator)
            if status != "complete":
                self._held_here.forget(segment, nonce)
                return None

            self._held_here.completed(segment)
            token, webhook, *records = (_text(value) for value in extra)
            event = self._assemble(records, webhook, complete=True)
            status, extra = await self._finish(keys, token, event, "complete")
            if status != "stale":
                return _filled(event, extra) if status == "stored" else None
        raise SpoolError(
            f"spool {self.where}: the message {segment.key} kept changing while "
            "its segment was added; the SMSC will send it again"
        )

    async def _segment_batch(self, batch: list[tuple]) -> list[tuple[str, list]]:
        """
        Add a batch of segments (two keys, then eight arguments each) in one
        script; per segment its status and what comes with it.
        """
        bounds = [
            -1 if bound is None else bound
            for bound in (
                self._bounds["max_reassemblies"],
                self._bounds["max_reassemblies_per_operator"],
                self._bounds["max_reassembly_bytes"],
            )
        ]
        added = await self._batched(
            scripts.ADD_SEGMENT, batch, self._keys, GROUP, *bounds, keys=2
        )
        # A stored event's extra is its conversation, as FINISH gives it.
        return [
            (status, [given] if status in ("stored", "duplicate") else given or [])
            for status, given in added
        ]

    def _assemble(self, records: list[str], webhook: str, complete: bool) -> Event:
        segments = [orjson.loads(record) for record in records]
        return self._event_of(segments, segments, webhook, complete)

    def _event_of(
        self, records: list[dict], given: list, webhook: str, complete: bool
    ) -> Event:
        """
        The event of a message's ``records``; ``given`` is what the assembler
        gets, the records or their segments' ``parsed``.
        """
        event_id, event_type, body = self._assembler(given, complete)
        now = self._reactor.seconds()
        conversation_key, ussd = conversation.keys_of_body(event_type, body)
        return Event(
            id=event_id,
            type=event_type,
            webhook=webhook,
            body=body,
            created_at=now,
            trail=trail.assembled(records, complete, now),
            conversation=conversation_key,
            ussd=ussd,
        )

    async def _finish(
        self, keys: Sequence[str], token: str, event: Event, mode: str
    ) -> tuple[str, Any]:
        now = self._reactor.seconds()
        args = self._event_args(event, now)
        return await self._finishes.add(
            (*keys, token, self._marker_ttl(mode), mode, *args)
        )

    def _marker_ttl(self, mode: str) -> int:
        """How long, in ms, a message's completed marker is kept; 0: none."""
        return round(self._completed_ttl * 1000) if mode == "complete" else 0

    async def _finish_batch(self, batch: list[tuple]) -> list[tuple[str, list]]:
        """
        Finish a batch of reassemblies (two keys, then eighteen arguments
        each) in one script; per reassembly its status and conversation.
        """
        finished = await self._batched(scripts.FINISH, batch, self._keys, GROUP, keys=2)
        return [(status, [given]) for status, given in finished]
