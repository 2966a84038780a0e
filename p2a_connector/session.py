"""
One SMPP 3.4 ESME session: bind, keep the link alive, take deliver_sm and
data_sm with a bounded window, send submit_sm with a bounded window of its
own, unbind.

The session does not reconnect; `p2a_connector.bind.BindService` does that.
It hands every parsed MO PDU to a handler and answers the SMSC with the
command_status the handler's Deferred fires with, so an acknowledgement
means whatever the handler decided it means (for the daemon: committed to
the spool).

`ESMEProtocol.submit_sm` sends one submit_sm and fires with the SMSC's
answer, whatever its status: what an error means (retry, give up) is the
caller's decision.  At most ``submit_window`` submit_sm wait for their
response at once; later calls wait their turn, in order
(`p2a_connector.submit_window`).

States: ``open`` (connected, not bound), ``binding``, ``bound``,
``unbinding``, ``closed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import pdu
from p2a_connector.config import BindConfig
from p2a_connector.metrics import BindMetrics, Metrics
from p2a_connector.models import MOPdu
from p2a_connector.pdu import Header, PDUError
from p2a_connector.smpp_status import ESME_ROK, status_code, status_name
from p2a_connector.submit_window import SubmitResult, SubmitWindow

MOHandler = Callable[[MOPdu, "ESMEProtocol"], "Deferred[int]"]

_MAX_SEQUENCE_NUMBER = 0x7FFFFFFF

_BIND_COMMANDS = {
    "receiver": pdu.BIND_RECEIVER,
    "transmitter": pdu.BIND_TRANSMITTER,
    "transceiver": pdu.BIND_TRANSCEIVER,
}


class BindRefused(Exception):
    """The SMSC answered the bind with an error command_status."""

    def __init__(self, status: int):
        super().__init__(f"the SMSC refused the bind: {status_name(status)}")
        self.status = status


class BindTimeout(Exception):
    """The SMSC did not answer the bind within bind_timeout."""


class NotTransmitting(Exception):
    """A submit_sm was asked of a bind that cannot send one."""


class ESMEProtocol(Protocol):
    """One connection to an SMSC, speaking SMPP 3.4 as the ESME."""

    log = Logger()

    # How many buffered PDUs one reactor turn handles.
    PDUS_PER_TURN = 16

    def __init__(
        self,
        bind: BindConfig,
        handler: MOHandler,
        clock: IReactorTime,
        metrics: BindMetrics | None = None,
    ):
        self.bind = bind
        self.bind_name = bind.name
        if metrics is None:
            metrics = Metrics().bind(bind.operator, bind.name)
        self.metrics = metrics
        self.state = "open"
        self.bound_at: float | None = None
        self._handler = handler
        self._clock = clock
        self._framer = pdu.Framer(bind.max_pdu_size)
        self._sequence_number = 0
        self._pending: dict[int, Deferred[Header]] = {}
        self._in_flight = 0
        self._paused = False
        self._processing = False
        self._next_turn: IDelayedCall | None = None
        self._keepalive: IDelayedCall | None = None
        self._awaiting_link: int | None = None
        self._unbind_deadline: IDelayedCall | None = None
        self._drain_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] = []
        self._submits = SubmitWindow(self)

    # --- public interface ---------------------------------------------

    def bindESME(self) -> Deferred[None]:
        """
        Bind as receiver or transceiver, per the bind's mode.

        Fires when bound; fails with BindRefused, BindTimeout or the reason
        the connection was lost, and in the first two cases closes the
        connection.
        """
        command_id = _BIND_COMMANDS[self.bind.mode]
        self.state = "binding"
        bind = self.bind

        def encode(sequence_number: int) -> bytes:
            return pdu.encode_bind(
                command_id,
                sequence_number,
                system_id=bind.system_id,
                password=bind.password,
                system_type=bind.system_type,
                addr_ton=bind.addr_ton,
                addr_npi=bind.addr_npi,
                address_range=bind.address_range,
            )

        try:
            requested = self._request(encode, timeout=bind.bind_timeout)
        except ValueError as e:
            self.log.error("cannot bind {bind}: {error}", bind=self.bind_name, error=e)
            self._abort()
            return fail(e)
        self.log.info(
            "binding {bind} as {mode} {system_id} to {host}:{port}",
            bind=self.bind_name,
            mode=bind.mode,
            system_id=bind.system_id,
            host=bind.host,
            port=bind.port,
            sequence_number=self._sequence_number,
        )
        return requested.addCallbacks(self._bind_answered, self._bind_failed)

    def unbind(self) -> Deferred[None]:
        """
        End the session politely: let MO PDUs in progress be answered, send
        unbind, wait for unbind_resp and close.  The whole takes at most
        unbind_timeout, after which the connection is aborted.  Fires when
        the connection is closed.
        """
        if self.state == "closed":
            return succeed(None)
        closed = self.whenClosed()
        if self.state == "unbinding":
            return closed
        if self.state != "bound":
            self._lose()
            return closed

        self.state = "unbinding"
        self._stop_keepalive()
        self._unbind_deadline = self._clock.callLater(
            self.bind.unbind_timeout, self._unbind_overdue
        )
        self.log.info(
            "unbinding {bind}, {in_flight} deliver_sm in progress",
            bind=self.bind_name,
            in_flight=self._in_flight,
        )

        drained = self._drained()
        drained.addCallback(lambda _: self._request(pdu.encode_unbind))
        drained.addBoth(self._unbind_answered)
        return closed

    def submit_sm(self, **fields: Any) -> Deferred[SubmitResult]:
        """
        Send a submit_sm with these fields (see `pdu.sm_body`); fires with
        the SMSC's `SubmitResult`, whatever its status.

        Waits its turn while ``submit_window`` submit_sm are outstanding.
        Fails with `SubmitTimeout` when no response comes within
        ``submit_timeout``, and with the reason when the connection is lost
        or the session is not bound.

        :raises NotTransmitting: at once, on a receiver bind.
        """
        if not self.bind.transmits:
            raise NotTransmitting(
                f"bind {self.bind_name} is a {self.bind.mode} bind and cannot "
                "send submit_sm; use a transceiver or transmitter bind"
            )
        if self.state != "bound":
            return fail(
                ConnectionDone(f"bind {self.bind_name} is {self.state}, not bound")
            )
        return self._submits.submit(fields)

    def submits_outstanding(self) -> int:
        """submit_sm sent and not yet answered, plus those waiting to be sent."""
        return self._submits.outstanding()

    def whenClosed(self) -> Deferred[None]:
        """Fires once the connection is lost, however that happened."""
        if self.state == "closed":
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    # --- Protocol -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._framer.feed(data)
        self._process()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        was = self.state
        self.state = "closed"
        self._stop_keepalive()
        for call in (self._unbind_deadline, self._next_turn):
            if call is not None and call.active():
                call.cancel()
        self.log.info(
            "connection of {bind} closed while {state}: {reason}",
            bind=self.bind_name,
            state=was,
            reason=reason.getErrorMessage(),
        )

        pending, self._pending = self._pending, {}
        for requested in pending.values():
            requested.errback(reason)
        self._submits.fail_all(reason)
        self._fire(self._drain_waiters)
        self._fire(self._close_waiters)

    # --- reading --------------------------------------------------------

    def _process(self) -> None:
        """
        Handle buffered PDUs in order, stopping while the window is full.
        Past `PDUS_PER_TURN` the rest wait for the next reactor turn, so
        that what the first ones wrote (to the spool's server, among
        others) goes out and is worked on while the rest are decoded: a
        full window read at once would otherwise wait for all of it.
        """
        if self._processing:
            return
        self._processing = True
        try:
            for _ in range(self.PDUS_PER_TURN):
                if self._paused or self.state == "closed":
                    return
                try:
                    received = self._framer.next_frame()
                except PDUError as e:
                    self._corrupt(e)
                    return
                if received is None:
                    return
                self._touch()
                self._dispatch(*received)
            if self._next_turn is None:
                self._next_turn = self._clock.callLater(0, self._read_on)
        finally:
            self._processing = False

    def _read_on(self) -> None:
        self._next_turn = None
        self._process()

    def _dispatch(self, header: Header, body: bytes) -> None:
        command_id = header.command_id
        self.metrics.received(command_id, header.command_status)
        if header.is_response:
            self._response(header, body)
        elif command_id in (pdu.DELIVER_SM, pdu.DATA_SM):
            self._mo(header, body)
        elif command_id == pdu.ENQUIRE_LINK:
            self._write(pdu.encode_enquire_link_resp(header.sequence_number))
        elif command_id == pdu.UNBIND:
            self._unbind_requested(header)
        elif command_id == pdu.ALERT_NOTIFICATION:
            # alert_notification has no response; a receiver has no use for it.
            self.log.debug(
                "ignored alert_notification on {bind}",
                bind=self.bind_name,
                sequence_number=header.sequence_number,
            )
        else:
            self.log.warn(
                "answering generic_nack to unsupported {command} "
                "seq {sequence_number} on {bind}",
                command=header.command,
                sequence_number=header.sequence_number,
                bind=self.bind_name,
            )
            self._nack(header.sequence_number, status_code("ESME_RINVCMDID"))

    def _corrupt(self, error: PDUError) -> None:
        sequence_number = self._framer.sequence_number_of_partial()
        self.log.error(
            "closing {bind}: {reason}",
            bind=self.bind_name,
            reason=error.reason,
            sequence_number=sequence_number,
        )
        self._nack(sequence_number, error.status)
        self._lose()

    def _response(self, header: Header, body: bytes) -> None:
        if self._submits.holds(header.sequence_number):
            self._submits.answered(header, body)
            return
        requested = self._pending.pop(header.sequence_number, None)
        if requested is None:
            self.log.warn(
                "unexpected {command} seq {sequence_number} ({status}) on {bind}",
                command=header.command,
                sequence_number=header.sequence_number,
                status=status_name(header.command_status),
                bind=self.bind_name,
            )
            return
        requested.callback(header)

    # --- deliver_sm and data_sm -----------------------------------------

    def _mo(self, header: Header, body: bytes) -> None:
        fields = {"bind": self.bind_name, "sequence_number": header.sequence_number}
        command = header.command

        if self.state != "bound":
            status = (
                self.bind.busy_status
                if self.state == "unbinding"
                else status_code("ESME_RINVBNDSTS")
            )
            self.log.warn(
                "answering {status} to {command} seq {sequence_number} on {bind} "
                "while {state}",
                status=status_name(status),
                command=command,
                state=self.state,
                **fields,
            )
            self._answer(header, status)
            return

        try:
            mo = pdu.parse_mo(header.command_id, header.sequence_number, body)
        except PDUError as e:
            self.log.warn(
                "answering {status} to malformed {command} seq {sequence_number} "
                "on {bind}: {reason}",
                status=status_name(e.status),
                command=command,
                reason=e.reason,
                **fields,
            )
            self._answer(header, e.status)
            return

        self._in_flight += 1
        if self._in_flight >= self.bind.window:
            self._pause()
        handled = maybeDeferred(self._handler, mo, self)
        handled.addCallback(int)
        handled.addErrback(self._handler_failed, header)
        handled.addCallback(self._mo_handled, header)

    def _handler_failed(self, failure: Failure, header: Header) -> int:
        self.log.failure(
            "handler failed for {command} seq {sequence_number} on {bind}, "
            "answering {status}",
            failure,
            command=header.command,
            sequence_number=header.sequence_number,
            bind=self.bind_name,
            status=status_name(self.bind.busy_status),
        )
        return self.bind.busy_status

    def _mo_handled(self, status: int, header: Header) -> None:
        self._answer(header, status)
        self._in_flight -= 1
        if self._in_flight == 0:
            self._fire(self._drain_waiters)
        if self._paused and self._in_flight < self.bind.window:
            self._resume()

    def _answer(self, header: Header, status: int) -> None:
        # No event per response: twistd writes debug events too, and a line
        # per PDU took about an eighth of the daemon's CPU under load.  Whoever
        # chose the status has logged it with the bind and sequence_number.
        if self.state == "closed":
            return
        self._write(
            pdu.encode_mo_resp(header.command_id, header.sequence_number, status)
        )
        self.metrics.sent(header.command_id | pdu.RESPONSE_BIT, status)

    def _nack(self, sequence_number: int, status: int) -> None:
        if self.state == "closed":
            return
        self._write(pdu.encode_generic_nack(sequence_number, status))
        self.metrics.sent(pdu.GENERIC_NACK, status)

    def _pause(self) -> None:
        self._paused = True
        if self.state != "closed":
            self.transport.pauseProducing()

    def _resume(self) -> None:
        self._paused = False
        if self.state == "closed":
            return
        self.transport.resumeProducing()
        self._process()

    def _drained(self) -> Deferred[None]:
        """Fires when no deliver_sm is waiting for its handler."""
        if self._in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    # --- requests we send -----------------------------------------------

    def _request(
        self, encode: Callable[[int], bytes], timeout: float | None = None
    ) -> Deferred[Header]:
        """Send a request; the Deferred fires with the response's header."""
        if self.state == "closed":
            return fail(ConnectionDone("the connection is closed"))
        sequence_number = self._next_sequence_number()
        encoded = encode(sequence_number)

        def forget(_: Deferred[Header]) -> None:
            self._pending.pop(sequence_number, None)

        requested: Deferred[Header] = Deferred(forget)
        self._pending[sequence_number] = requested
        self._write(encoded)
        if timeout is not None:
            requested.addTimeout(timeout, self._clock)
        return requested

    def _next_sequence_number(self) -> int:
        self._sequence_number = self._sequence_number % _MAX_SEQUENCE_NUMBER + 1
        return self._sequence_number

    def _bind_answered(self, header: Header) -> None:
        status = header.command_status
        if header.command_id == pdu.GENERIC_NACK or status != ESME_ROK:
            if status == ESME_ROK:
                status = status_code("ESME_RBINDFAIL")
            self.log.error(
                "the SMSC refused bind {bind} as {system_id}: {status}",
                bind=self.bind_name,
                system_id=self.bind.system_id,
                status=status_name(status),
                sequence_number=header.sequence_number,
            )
            self._lose()
            raise BindRefused(status)

        self.state = "bound"
        self.bound_at = self._clock.seconds()
        self.log.info(
            "bound {bind} as {mode} {system_id}",
            bind=self.bind_name,
            mode=self.bind.mode,
            system_id=self.bind.system_id,
            sequence_number=header.sequence_number,
        )
        self._start_keepalive()

    def _bind_failed(self, failure: Failure) -> Failure:
        if failure.check(BindRefused):
            return failure
        if failure.check(TimeoutError):
            self.log.error(
                "no answer to bind {bind} within {timeout} s",
                bind=self.bind_name,
                timeout=self.bind.bind_timeout,
                sequence_number=self._sequence_number,
            )
            self._abort()
            return Failure(BindTimeout(f"no bind_resp in {self.bind.bind_timeout} s"))
        if failure.check(CancelledError):
            self._abort()
        return failure

    def _unbind_answered(self, result: Header | Failure) -> None:
        if isinstance(result, Failure):
            self.log.warn(
                "no unbind_resp on {bind}: {reason}",
                bind=self.bind_name,
                reason=result.getErrorMessage(),
            )
        self._lose()

    def _unbind_overdue(self) -> None:
        self.log.warn(
            "unbind of {bind} took longer than {timeout} s; aborting",
            bind=self.bind_name,
            timeout=self.bind.unbind_timeout,
        )
        self._abort()

    def _unbind_requested(self, header: Header) -> None:
        self.log.info(
            "the SMSC unbinds {bind}",
            bind=self.bind_name,
            sequence_number=header.sequence_number,
        )
        self.state = "unbinding"
        self._stop_keepalive()
        drained = self._drained()
        drained.addTimeout(self.bind.unbind_timeout, self._clock)

        def answer(_: Any) -> None:
            self._write(pdu.encode_unbind_resp(header.sequence_number))
            self._lose()

        drained.addBoth(answer)

    # --- enquire_link ---------------------------------------------------

    def _start_keepalive(self) -> None:
        self._awaiting_link = None
        self._keepalive = self._clock.callLater(
            self.bind.enquire_link_interval, self._idle
        )

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _touch(self) -> None:
        """Any PDU received restarts the idle time before an enquire_link."""
        keepalive = self._keepalive
        if self._awaiting_link is None and keepalive is not None and keepalive.active():
            keepalive.reset(self.bind.enquire_link_interval)

    def _idle(self) -> None:
        if self._paused:
            # Reading is paused, so the link is busy, not idle.
            self._start_keepalive()
            return
        requested = self._request(pdu.encode_enquire_link)
        self._awaiting_link = self._sequence_number
        self._keepalive = self._clock.callLater(
            self.bind.enquire_link_timeout, self._link_silent
        )
        requested.addCallbacks(self._link_answered, lambda _: None)

    def _link_answered(self, header: Header) -> None:
        if self.state != "bound":
            return
        self._stop_keepalive()
        self._start_keepalive()

    def _link_silent(self) -> None:
        if self._paused:
            # While reading is paused the answer may be waiting unread.
            self._keepalive = self._clock.callLater(
                self.bind.enquire_link_timeout, self._link_silent
            )
            return
        self.log.error(
            "no enquire_link_resp on {bind} within {timeout} s; dropping the link",
            bind=self.bind_name,
            timeout=self.bind.enquire_link_timeout,
            sequence_number=self._awaiting_link,
        )
        self._abort()

    # --- the transport --------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.state != "closed" and self.transport is not None:
            self.transport.write(data)

    def _lose(self) -> None:
        if self.state != "closed" and self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        if self.state != "closed" and self.transport is not None:
            self.transport.abortConnection()

    @staticmethod
    def _fire(waiters: list[Deferred[None]]) -> None:
        fired = list(waiters)
        waiters.clear()
        for waiter in fired:
            waiter.callback(None)
