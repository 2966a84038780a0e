"""
Talking to Redis for the Redis spool: commands with a timeout, failures
turned into `p2a_connector.spool.SpoolError`, scripts run by hash (sent
whole when Redis forgot them), and the shared counts that every counting
script replies kept in memory.

`RedisCommands` is a base class of `p2a_connector.redis_spool.RedisSpool`
and works on its connection (``_redis``), reactor and timeout; the functions
turn the scripts' replies into Python values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import TimeoutError as ConnectTimeout

from p2a_connector import conversation
from p2a_connector import redis_scripts as scripts
from p2a_connector.spool import Event, Reassemblies, SpoolError

GROUP = "dispatchers"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float) -> str:
    return repr(float(value))


def _reassemblies(counts: bytes) -> Reassemblies:
    # An empty hash arrives as cjson's empty table, ``{}``.
    flat = json.loads(counts) or []
    fields = dict(zip(flat[::2], flat[1::2]))
    by_operator = {}
    for name, value in fields.items():
        if name.startswith("op:") and int(value) > 0:
            by_operator[name[3:]] = int(value)
    return Reassemblies(
        count=int(fields.get("count", 0)),
        bytes=int(fields.get("bytes", 0)),
        by_operator=by_operator,
    )


def _filled(event: Event, extra: Sequence[Any]) -> Event:
    """The event with the conversation a script gave it in its body."""
    given = _text(extra[0]) if extra else ""
    if not given:
        return event
    return attrs.evolve(event, body=conversation.fill(event.body, given.encode()))


class RedisCommands:
    """Commands and scripts sent to Redis, each within the spool's timeout."""

    def _command(self, *args: Any) -> Deferred:
        if self._redis is None:
            return fail(SpoolError(f"spool {self.where}: the spool is not open"))
        d = self._redis.execute_command(*args)
        d.addTimeout(self._timeout, self._reactor)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> Any:
        error = failure.value
        if isinstance(error, SpoolError):
            return failure
        if isinstance(error, txredisapi.ResponseError):
            raise SpoolError(f"spool {self.where}: Redis refused: {error}")
        if isinstance(
            error,
            (
                CancelledError,
                DeferredTimeout,
                ConnectTimeout,
                txredisapi.ConnectionError,
            ),
        ):
            raise SpoolError(
                f"spool {self.where}: Redis did not answer within "
                f"{self._timeout:g} s; check that it runs and is reachable"
            )
        return failure

    async def _script(self, script: scripts.Script, *args: Any) -> Any:
        """Run a script by hash, sending it whole if Redis forgot it."""
        try:
            reply = await self._command("EVALSHA", script.sha, 0, *args)
        except SpoolError as e:
            if "NOSCRIPT" not in str(e):
                raise
            reply = await self._command("EVAL", script.source, 0, *args)
        return reply

    async def _counted(self, script: scripts.Script, keys: Sequence[str], *args):
        """
        Run a script replying (status, counts, pending, extra, outbound); keep
        the counts.
        """
        reply = await self._script_keys(script, keys, *args)
        status, counts, pending, extra, queued = reply
        self._pending = int(pending)
        self._outbound = int(queued)
        self._reassemblies = _reassemblies(counts)
        return _text(status), extra

    async def _script_keys(self, script: scripts.Script, keys: Sequence[str], *args):
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except SpoolError as e:
            if "NOSCRIPT" not in str(e):
                raise
            return await self._command("EVAL", script.source, len(keys), *keys, *args)
