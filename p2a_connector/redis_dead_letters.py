"""
Dead letters in the Redis spool: an event moved there, listed, counted,
made pending again (replay) or deleted (purge).

`DeadLetters` is a base class of `p2a_connector.redis_spool.RedisSpool`;
each change is one script of `p2a_connector.redis_scripts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from p2a_connector import redis_scripts as scripts
from p2a_connector import trail
from p2a_connector.redis_commands import GROUP, _number, _text


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
        recorded = self._done(
            scripts.DEAD, event_id, attempt, reason, _number(now), self._steps(dead)
        )
        return self._outcome(recorded, event_id)

    def replay(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Make dead letters (all, or those named) pending again, due now."""
        now = self._reactor.seconds()
        replayed = self._steps(trail.step(now, "replayed"))
        return self._letters(
            scripts.REPLAY, ids, _number(now), replayed, self._trail_keep
        )

    def purge(self, ids: Sequence[str] | None) -> Deferred[int]:
        """Delete dead letters (all, or those named) for good; their trail stays."""
        purged = self._steps(trail.step(self._reactor.seconds(), "purged"))
        return self._letters(scripts.PURGE, ids, purged, self._trail_keep)

    def _letters(
        self, script: scripts.Script, ids: Sequence[str] | None, *args: Any
    ) -> Deferred[int]:
        async def run() -> int:
            every = "1" if ids is None else "0"
            _, extra = await self._counted(
                script, (), self._keys, GROUP, every, *args, *(ids or ())
            )
            return int(extra[0])

        return ensureDeferred(run())

    def dead_letters(self, limit: int = 100) -> Deferred[list[dict]]:
        """Dead letters, oldest failure first."""

        async def read() -> list[dict]:
            rows = await self._script(scripts.DEAD_LETTERS, self._keys, limit)
            letters = []
            for row in rows:
                event_id, event_type, hook, reason, attempt, created, failed = row
                letters.append(
                    {
                        "id": _text(event_id),
                        "type": _text(event_type),
                        "webhook": _text(hook),
                        "reason": _text(reason),
                        "attempts": int(attempt),
                        "created_at": float(created),
                        "failed_at": float(failed),
                    }
                )
            return letters

        return ensureDeferred(read())

    def dead_letter_count(self) -> Deferred[int]:
        """How many dead letters the spool holds."""
        return self._command("XLEN", self._keys + "dead").addCallback(int)
