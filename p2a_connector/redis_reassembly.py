"""
Reassembly in the Redis spool.

It takes two scripts, because the assembler is Python: the first adds the
segment and, if it completes its message, replies every record without
writing; the second stores the assembled event and closes the reassembly,
unless another instance closed it first (the completed marker is set) or it
changed meanwhile (its token differs), so one message makes one event however
many instances complete it at once.

`Reassembly` is a base class of `p2a_connector.redis_spool.RedisSpool` and
works on its keys, bounds and assembler.
"""

from __future__ import annotations

import hashlib
import os
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


class Reassembly:
    """Segments waiting for their siblings, and the events they make."""

    def _segment_keys(self, key: str) -> tuple[str, str]:
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self._keys + "seg:" + digest, self._keys + "done:" + digest

    async def _store_segment(self, segment: Segment) -> Event | None:
        keys = self._segment_keys(segment.key)
        record = orjson.dumps(segment.record).decode()
        for _ in range(_ROUNDS):
            status, extra = await self._segment_adds.add(
                (
                    *keys,
                    segment.seqnum,
                    segment.total,
                    record,
                    segment.webhook,
                    _number(segment.received_at),
                    segment.operator,
                    segment.key,
                    os.urandom(8).hex(),
                )
            )
            if status == "limit":
                name = _text(extra[0])
                raise SpoolLimit(name, self._bounds[name], segment.operator)
            if status != "complete":
                return None

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
            scripts.ADD_SEGMENT, batch, self._keys, *bounds, keys=2
        )
        return [(status, given or []) for status, given in added]

    def _assemble(self, records: list[str], webhook: str, complete: bool) -> Event:
        segments = [orjson.loads(record) for record in records]
        event_id, event_type, body = self._assembler(segments, complete)
        now = self._reactor.seconds()
        conversation_key, ussd = conversation.keys_of_body(event_type, body)
        return Event(
            id=event_id,
            type=event_type,
            webhook=webhook,
            body=body,
            created_at=now,
            trail=trail.assembled(segments, complete, now),
            conversation=conversation_key,
            ussd=ussd,
        )

    async def _finish(
        self, keys: Sequence[str], token: str, event: Event, mode: str
    ) -> tuple[str, Any]:
        ttl = round(self._completed_ttl * 1000) if mode == "complete" else 0
        now = self._reactor.seconds()
        args = self._event_args(event, now)
        return await self._finishes.add((*keys, token, ttl, mode, *args))

    async def _finish_batch(self, batch: list[tuple]) -> list[tuple[str, list]]:
        """
        Finish a batch of reassemblies (two keys, then eighteen arguments
        each) in one script; per reassembly its status and conversation.
        """
        finished = await self._batched(scripts.FINISH, batch, self._keys, GROUP, keys=2)
        return [(status, [given]) for status, given in finished]
