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

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import orjson
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import TimeoutError as ConnectTimeout

from p2a_connector import conversation
from p2a_connector import redis_scripts as scripts
from p2a_connector.spool import Event, Reassemblies, SpoolError

GROUP = "dispatchers"


class _Protocol(txredisapi.RedisProtocol):
    """
    txredisapi's protocol, with commands encoded at a third of the cost:
    each store sends fifteen arguments per event, and the library's
    encoder took about a microsecond for each.  The bytes are the same.
    """

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, float):
                arg = format(arg, "f").encode()
            elif not isinstance(arg, bytes | bytearray):
                arg = str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(out)


def connect(endpoint: Any, name: str, db: int | None, **options: Any) -> Any:
    """
    One lazily connected, pipelined Redis connection through ``endpoint``,
    reconnecting on its own; what every command of the spool goes through.
    """
    factory = reconnecting(_Protocol, name, db, **options)
    factory.startConnecting(endpoint)
    return factory.handler


def reconnecting(protocol: type, name: Any, db: int | None, **options: Any) -> Any:
    """
    A txredisapi factory of one lazy connection speaking ``protocol``,
    connecting again on its own once started (``startConnecting``).
    """
    factory = txredisapi.RedisFactory(name, db, 1, isLazy=True, **options)
    factory.protocol = protocol
    # Redis coming back is noticed within a couple of seconds, not the
    # ten the library would wait at most between attempts.
    factory.maxDelay = 2.0
    return factory


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float) -> str:
    return repr(float(value))


def _reassemblies(counts: bytes) -> Reassemblies:
    # An empty hash arrives as cjson's empty table, ``{}``.
    flat = orjson.loads(counts) or []
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


class ScriptBatch:
    """
    The calls of one script, sent to Redis as one call that does them all,
    in order: one command to build, time and parse instead of one per
    message.  Calls made in one reactor turn go together at its end; while
    ``in_flight`` batches are unanswered, calls wait and go together when
    one is answered, so the busier Redis is, the larger the batches, and a
    quiet spool sends each call at the end of its turn.  Each caller's
    Deferred fires with its own result, or all fail together with the
    call's failure.  A script that fails part way keeps what it did before,
    as any Redis script does; its callers treat their writes as not done,
    which can deliver a message twice but never loses one.

    :param send: runs the script for a list of calls' arguments, giving one
        result per call in the same order.
    :param limit: the most calls in one script run, which blocks Redis
        while it runs; more than that are sent as further batches.
    :param in_flight: how many batches may wait for Redis at once.
    """

    def __init__(
        self,
        send: Callable[[list[tuple]], Awaitable[Sequence[Any]]],
        reactor: Any,
        limit: int = 200,
        in_flight: int = 2,
    ):
        self._send = send
        self._reactor = reactor
        self._limit = limit
        self._most_in_flight = in_flight
        self._in_flight = 0
        self._calls: list[tuple] = []
        self._waiting: list[Deferred] = []
        self._flush_call: Any = None

    def add(self, args: tuple) -> Deferred:
        d: Deferred = Deferred()
        self._calls.append(args)
        self._waiting.append(d)
        self._schedule()
        return d

    def _schedule(self) -> None:
        if self._flush_call is None and self._in_flight < self._most_in_flight:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        while self._calls and self._in_flight < self._most_in_flight:
            calls, self._calls = self._calls[: self._limit], self._calls[self._limit :]
            waiting = self._waiting[: len(calls)]
            del self._waiting[: len(calls)]
            self._in_flight += 1
            self._run(calls, waiting)

    def _run(self, calls: list[tuple], waiting: list[Deferred]) -> None:
        def answered(outcome: Any) -> Any:
            self._in_flight -= 1
            if self._calls:
                self._schedule()
            return outcome

        def sent(results: Sequence[Any]) -> None:
            for d, result in zip(waiting, results):
                d.callback(result)

        def failed(failure: Any) -> None:
            for d in waiting:
                d.errback(failure)

        sending = ensureDeferred(self._send(calls))
        sending.addBoth(answered).addCallbacks(sent, failed)


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

    def _script(self, script: scripts.Script, *args: Any) -> Any:
        """Run a script that builds its keys from the prefix in ARGV."""
        return self._script_keys(script, (), *args)

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

    async def _batched(
        self, script: scripts.Script, batch: list[tuple], *shared: Any, keys: int = 0
    ) -> list:
        """
        Run a script that does a `ScriptBatch`'s calls: the first ``keys``
        values of each call are KEYS, the rest its ARGV after ``shared``.
        Gives the per-call results the script replies as one JSON array.
        """
        _, extra = await self._counted(
            script,
            [key for call in batch for key in call[:keys]],
            *shared,
            *(arg for call in batch for arg in call[keys:]),
        )
        return orjson.loads(extra[0]) if extra else [None] * len(batch)

    async def _script_keys(self, script: scripts.Script, keys: Sequence[str], *args):
        """
        Run a script by hash, sending it whole if Redis forgot it.  A script
        given no keys declares the spool's counts key: every key it builds
        shares that key's hash tag, so a Redis Cluster sends it to the master
        serving them, or answers MOVED.
        """
        keys = keys or (self._keys + "counts",)
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except SpoolError as e:
            if "NOSCRIPT" not in str(e):
                raise
            return await self._command("EVAL", script.source, len(keys), *keys, *args)
