"""
The sender: sends the spool's queued outbound messages (replies and the
outbound API's messages) as submit_sm over this process's binds, and
records each outcome in the spool: sent, retry later, or failed with a
``reply.failed`` event for the webhook.

A message goes over a bound transmitter or transceiver bind of its
operator, the binds taking turns.  Each bind has a token bucket that keeps
it at ``submit_rate`` submit_sm per second, and its own throttle pause: an
SMSC answering ESME_RTHROTTLED or ESME_RMSGQFUL silences that bind for
``outbound.throttle_delay`` seconds, doubling up to ``throttle_max`` while
it goes on, and the message is retried.  A timeout or a lost connection is
retried too; any other error status, a text that cannot be composed, or
``retry_for`` seconds of failures since it was queued fail it for good.

Parts go out one after another, each recorded in the spool once the SMSC
accepts it, so a retry (here or on another instance) goes on from the
first part not accepted, with the same concatenation reference.

Like the dispatcher, the sender looks at the spool when woken (replies
queued), when a message finishes, and otherwise at least every `POLL`
seconds, since other instances queue messages too.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from smpp.pdu import constants
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FailureGroup,
    race,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import compose, conversation
from p2a_connector.bind import BindService
from p2a_connector.config import BindConfig, Config
from p2a_connector.decode import iso_time
from p2a_connector.intake import encode_body, new_event_id
from p2a_connector.models import Address
from p2a_connector.outbound import Outbound, OutboundState
from p2a_connector.poller import Poller
from p2a_connector.session import ESMEProtocol
from p2a_connector.smpp_status import status_code
from p2a_connector.spool import Event, Spool, SpoolError
from p2a_connector.submit_window import SubmitResult, SubmitTimeout
from p2a_connector.tlv import TAG_ITS_SESSION_INFO, TAG_USSD_SERVICE_OP
from p2a_connector.token_bucket import TokenBucket

# The longest the sender goes without looking at the spool.
POLL = 1.0

# How long the sender waits before looking again when the spool fails.
SPOOL_PAUSE = 5.0

# How long a taken message is kept from other instances.  Parts are sent
# one at a time within a bind's window and rate, so a message normally
# takes seconds.  Limitation: a message that waits longer than this on a
# slow bind (a low submit_rate shared by many messages) can be taken by
# another instance meanwhile, and its remaining parts sent twice.
LEASE = 60.0

THROTTLE_STATUSES = frozenset(
    {status_code("ESME_RTHROTTLED"), status_code("ESME_RMSGQFUL")}
)

# ussd_service_op values (SMPP 3.4, 5.3.2.44): a menu that expects an
# answer is a USSR request, the last screen a PSSR response.
USSR_REQUEST = 2
PSSR_RESPONSE = 17

_RETRIED_FAILURES = (SubmitTimeout, ConnectionDone, ConnectionLost)


class _Transmitter:
    """A bind's pace: its rate limit and its throttle pause."""

    def __init__(self, bind: BindConfig, config: Config, clock: IReactorTime):
        self.bind = bind
        self.bucket = TokenBucket(bind.submit_rate, clock)
        self._first = config.outbound.throttle_delay
        self._max = config.outbound.throttle_max
        self._pause = self._first

    def throttled(self) -> float:
        """The SMSC asked this bind to slow down: pause it; the pause taken."""
        pause = self._pause
        self.bucket.pause(pause)
        self._pause = min(pause * 2, self._max)
        return pause

    def accepted(self) -> None:
        self._pause = self._first


@attrs.frozen
class _Failed:
    """A message cannot be sent: ``status`` is the SMSC's, or None."""

    reason: str
    status: str | None = None


class Sender(Service):
    """
    Sends queued outbound messages over the transmitting binds of ``binds``.

    :param binds: the process's `BindService` objects (the Connector's
        ``binds`` MultiService); read on every look, so a reload's new binds
        are used at once.
    :param config: for the operators' alphabets and the ``[outbound]``
        retry settings; see `reconfigure`.
    :param concurrency: the most messages being sent at once, over all binds.
    :param random: the source of concatenation references, [0, 1).
    """

    log = Logger()

    def __init__(
        self,
        spool: Spool,
        binds: Iterable[BindService],
        config: Config,
        reactor: Any,
        *,
        concurrency: int = 32,
        poll: float = POLL,
        shutdown_timeout: float = 10.0,
        random: Callable[[], float] = _random.random,
    ):
        self.spool = spool
        self.binds = binds
        self.config = config
        self.shutdown_timeout = shutdown_timeout
        self.sends: dict[str, Deferred[None]] = {}
        self._reactor = reactor
        self._concurrency = concurrency
        self._poll = poll
        self._random = random
        self._transmitters: dict[str, _Transmitter] = {}
        self._turns: dict[str, int] = {}
        self._poller = Poller(reactor, self.look)

    # --- the service ------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for operator in self._operators():
            if not self._transmitting(operator):
                self.log.warn(
                    "operator {operator} has no transmitter or transceiver bind "
                    "here: its replies wait, and fail after outbound.retry_for",
                    operator=operator,
                )
        self.look()

    def stopService(self) -> Deferred[None]:
        """
        Take no more messages; give those being sent ``shutdown_timeout`` to
        finish, then abandon them: they stay queued under their lease and go
        on from their last recorded part later.
        """
        super().stopService()
        self._poller.cancel()
        sends = list(self.sends.values())
        deadline = self._reactor.callLater(self.shutdown_timeout, self._abandon)
        finished = DeferredList(sends, consumeErrors=True)

        def stopped(_: Any) -> None:
            if deadline.active():
                deadline.cancel()

        return finished.addCallback(stopped)

    def reconfigure(self, config: Config) -> None:
        """Alphabets and retry settings for the next messages (a reload)."""
        self.config = config
        self._transmitters.clear()

    def wake(self) -> None:
        """Messages were queued: look now."""
        self.look()

    def _abandon(self) -> None:
        self.log.warn(
            "{count} outbound messages still being sent after {timeout}s: "
            "abandoning them; they stay queued",
            count=len(self.sends),
            timeout=self.shutdown_timeout,
        )
        for transmitter in self._transmitters.values():
            transmitter.bucket.cancel()
        for send in list(self.sends.values()):
            send.cancel()

    # --- looking for due messages -------------------------------------------

    def look(self) -> None:
        if not self.running or self._poller.busy():
            return
        self._poller.cancel()
        if len(self.sends) >= self._concurrency:
            return
        self._poller.run(self._look, self._look_failed)

    async def _look(self) -> None:
        operators = self._operators()
        if not operators:
            return
        now = self._reactor.seconds()
        wanted = self._concurrency - len(self.sends)
        due = await self.spool.outbound_due(
            now, wanted, operators=operators, lease=LEASE
        )
        for state in due:
            if self.running and state.message.id not in self.sends:
                self._start(state)
        if not self.running or len(self.sends) >= self._concurrency:
            return

        next_at = await self.spool.next_outbound_due(operators=operators)
        delay = self._poll
        if next_at is not None:
            delay = min(next_at - self._reactor.seconds(), delay)
        self._sleep(delay)

    def _look_failed(self, failure: Failure) -> None:
        if failure.check(SpoolError):
            self.log.error(
                "cannot read the outbound queue: {error}; trying again in {pause}s",
                error=failure.value,
                pause=SPOOL_PAUSE,
            )
        else:
            self.log.failure("unexpected error looking for outbound messages", failure)
        self._sleep(SPOOL_PAUSE)

    def _sleep(self, delay: float) -> None:
        if self.running:
            self._poller.sleep(delay)

    # --- binds ---------------------------------------------------------------

    def _operators(self) -> list[str]:
        """The operators whose binds this process holds."""
        return sorted({service.bind.operator for service in self.binds})

    def _transmitting(self, operator: str) -> list[BindService]:
        return [
            service
            for service in self.binds
            if service.bind.operator == operator and service.bind.transmits
        ]

    def _pick(self, operator: str) -> tuple[BindService, ESMEProtocol] | None:
        """A bound transmitting bind of ``operator``, taking turns."""
        bound = [
            service
            for service in self._transmitting(operator)
            if service.state == "bound" and service.session is not None
        ]
        if not bound:
            return None
        turn = self._turns.get(operator, 0)
        self._turns[operator] = turn + 1
        service = bound[turn % len(bound)]
        return service, service.session

    async def _bound_within(
        self, operator: str, seconds: float
    ) -> tuple[BindService, ESMEProtocol] | None:
        """
        A bind of ``operator`` as soon as one is bound (it is reconnecting,
        or the daemon has just started), if that is within ``seconds``.
        """
        services = [s for s in self._transmitting(operator) if s.running]
        if not services:
            return None
        waiting = race([service.whenBound() for service in services])
        timer = self._reactor.callLater(seconds, waiting.cancel)
        try:
            await waiting
        except FailureGroup:
            # Timed out, or every bind stopped (a reload), or this send was
            # abandoned at shutdown, which must end it as a cancellation.
            if not self.running:
                raise CancelledError() from None
            return None
        finally:
            if timer.active():
                timer.cancel()
        return self._pick(operator)

    def _transmitter(self, bind: BindConfig) -> _Transmitter:
        transmitter = self._transmitters.get(bind.name)
        if transmitter is None or transmitter.bind != bind:
            transmitter = _Transmitter(bind, self.config, self._reactor)
            self._transmitters[bind.name] = transmitter
        return transmitter

    # --- sending one message ---------------------------------------------------

    def _start(self, state: OutboundState) -> None:
        outbound_id = state.message.id
        d = Deferred.fromCoroutine(self._send(state))
        self.sends[outbound_id] = d
        d.addErrback(self._send_failed, outbound_id)
        d.addBoth(self._finished, outbound_id)

    def _finished(self, _: Any, outbound_id: str) -> None:
        self.sends.pop(outbound_id, None)
        self.look()

    def _send_failed(self, failure: Failure, outbound_id: str) -> None:
        if failure.check(CancelledError):
            self.log.info(
                "abandoned {id} while sending; it stays queued", id=outbound_id
            )
            return
        if failure.check(SpoolError):
            self.log.error(
                "cannot record the outcome of {id}: {error}; it is sent again "
                "from its last recorded part once its lease ends",
                id=outbound_id,
                error=failure.value,
            )
            return
        self.log.failure("unexpected error sending {id}", failure, id=outbound_id)

    async def _send(self, state: OutboundState) -> None:
        message = state.message
        attempt = state.attempt + 1

        picked = self._pick(message.operator)
        if picked is None:
            picked = await self._bound_within(
                message.operator, self.config.outbound.no_bind_delay
            )
        if picked is None:
            error = f"operator {message.operator} has no bound transmitting bind"
            await self._retry(state, attempt, error, self.config.outbound.no_bind_delay)
            return
        service, session = picked
        bind = service.bind

        reference = state.reference
        if state.parts_sent == 0:
            reference = 1 + int(self._random() * 65535)
        try:
            composed = compose.compose(
                message.text,
                reference=reference,
                alphabet=self.config.decode_options(bind.name).alphabet,
                method=bind.long_messages,
                packed=bind.gsm7_packed,
                max_parts=bind.max_reply_parts,
            )
        except compose.ComposeError as e:
            await self._fail(state, attempt, _Failed(f"cannot compose the text: {e}"))
            return

        self.log.info(
            "sending {id} to {to} over {bind}: part {first} of {total} on, "
            "attempt {attempt}",
            id=message.id,
            to=message.destination.get("address"),
            bind=bind.name,
            first=state.parts_sent + 1,
            total=len(composed.parts),
            attempt=attempt,
        )
        transmitter = self._transmitter(bind)
        message_ids = list(state.message_ids)
        parts_sent = state.parts_sent
        progress = {"reference": reference}
        for index in range(parts_sent, len(composed.parts)):
            await transmitter.bucket.take()
            fields = _submit_fields(message, bind, composed.parts[index])
            try:
                result: SubmitResult = await session.submit_sm(**fields)
            except _RETRIED_FAILURES as e:
                delay = self._backoff(state.attempt)
                progress.update(parts_sent=parts_sent, message_ids=message_ids)
                await self._retry(state, attempt, f"{bind.name}: {e}", delay, progress)
                return

            if result.status in THROTTLE_STATUSES:
                pause = transmitter.throttled()
                progress.update(parts_sent=parts_sent, message_ids=message_ids)
                error = f"{result.status_name} from {bind.name}"
                await self._retry(state, attempt, error, pause, progress)
                return
            if not result.ok:
                description = _describe(result.status)
                await self._fail(
                    state,
                    attempt,
                    _Failed(f"{result.status_name}: {description}", result.status_name),
                    parts_sent,
                )
                return

            transmitter.accepted()
            parts_sent += 1
            message_ids.append(result.message_id)
            if parts_sent < len(composed.parts):
                await self.spool.outbound_progress(
                    message.id,
                    reference=reference,
                    parts_sent=parts_sent,
                    message_ids=message_ids,
                    operator=message.operator,
                )

        await self.spool.outbound_sent(
            message.id,
            reference=reference,
            message_ids=message_ids,
            operator=message.operator,
        )
        self.log.info(
            "sent {id} to {to} over {bind} in {parts} parts: {message_ids}",
            id=message.id,
            to=message.destination.get("address"),
            bind=bind.name,
            parts=parts_sent,
            message_ids=" ".join(message_ids),
            attempt=attempt,
        )
        if message.ussd is not None and message.ussd.get("end"):
            await self.spool.end_session(
                conversation.ussd_key(
                    message.operator,
                    message.destination.get("address", ""),
                    message.ussd["session"],
                )
            )

    def _backoff(self, attempts: int) -> float:
        outbound = self.config.outbound
        return min(
            outbound.throttle_delay * 2 ** min(attempts, 30), outbound.throttle_max
        )

    async def _retry(
        self,
        state: OutboundState,
        attempt: int,
        error: str,
        delay: float,
        progress: dict | None = None,
    ) -> None:
        message = state.message
        now = self._reactor.seconds()
        if now + delay - message.created_at > self.config.outbound.retry_for:
            reason = (
                f"{error}; gave up after {attempt} attempts in "
                f"{now - message.created_at:.0f}s (outbound.retry_for = "
                f"{self.config.outbound.retry_for:g})"
            )
            parts_sent = (progress or {}).get("parts_sent", state.parts_sent)
            await self._fail(state, attempt, _Failed(reason), parts_sent)
            return
        progress = progress or {}
        await self.spool.outbound_retry(
            message.id,
            attempt,
            now + delay,
            error,
            reference=progress.get("reference", state.reference),
            parts_sent=progress.get("parts_sent", state.parts_sent),
            message_ids=progress.get("message_ids", state.message_ids),
        )
        self.log.info(
            "retry {id}: attempt {attempt} failed ({error}); next in {delay:.1f}s",
            id=message.id,
            attempt=attempt,
            error=error,
            delay=delay,
        )

    async def _fail(
        self,
        state: OutboundState,
        attempt: int,
        failed: _Failed,
        parts_sent: int | None = None,
    ) -> None:
        message = state.message
        now = self._reactor.seconds()
        if parts_sent is None:
            parts_sent = state.parts_sent
        event = _reply_failed(message, now, failed, attempt, parts_sent)
        await self.spool.outbound_failed(message.id, attempt, failed.reason, event)
        self.log.warn(
            "failed {id} to {to} after attempt {attempt}: {reason}; reply.failed "
            "{event_id} for {webhook}",
            id=message.id,
            to=message.destination.get("address"),
            attempt=attempt,
            reason=failed.reason,
            event_id=event.id,
            webhook=message.webhook,
        )


def _address(value: Any) -> Address:
    return Address(
        str(value.get("address", "")),
        int(value.get("ton", 0)),
        int(value.get("npi", 0)),
    )


def _submit_fields(message: Outbound, bind: BindConfig, part: compose.Part) -> dict:
    """The fields of the submit_sm carrying ``part`` of ``message``."""
    tlvs = list(part.tlvs)
    service_type = ""
    if message.ussd is not None:
        end = bool(message.ussd.get("end"))
        session = int(message.ussd.get("session", 0)) % 256
        sequence = int(message.ussd.get("sequence", 0)) % 128
        operation = PSSR_RESPONSE if end else USSR_REQUEST
        tlvs.append((TAG_USSD_SERVICE_OP, bytes((operation,))))
        tlvs.append((TAG_ITS_SESSION_INFO, bytes((session, (sequence << 1) | end))))
        service_type = "USSD"
    return {
        "service_type": service_type,
        "source": _address(message.source),
        "destination": _address(message.destination),
        "esm_class": part.esm_class,
        # An Outbound's 0 is "not asked": the bind's setting applies.
        "registered_delivery": message.registered_delivery or bind.registered_delivery,
        "data_coding": part.data_coding,
        "short_message": part.short_message,
        "tlvs": tlvs,
    }


def _describe(status: int) -> str:
    entry = constants.command_status_value_map.get(status)
    return entry["description"] if entry else "an error status SMPP 3.4 does not name"


def _reply_failed(
    message: Outbound, now: float, failed: _Failed, attempts: int, parts_sent: int
) -> Event:
    """The ``reply.failed`` event telling the webhook a message was not sent."""
    envelope = {
        "type": "reply.failed",
        "timestamp": iso_time(now),
        "data": {
            "id": message.id,
            "in_reply_to": message.in_reply_to,
            "operator": message.operator,
            "from": dict(message.source),
            "to": dict(message.destination),
            "text": message.text,
            "reason": failed.reason,
            "status": failed.status,
            "attempts": attempts,
            "parts_sent": parts_sent,
        },
    }
    return Event(
        id=new_event_id(now),
        type="reply.failed",
        webhook=message.webhook,
        body=encode_body(envelope),
        created_at=now,
    )
