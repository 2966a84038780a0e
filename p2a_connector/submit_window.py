"""
The submit_sm side of one SMPP session: at most ``submit_window`` submit_sm
waiting for their response at once, each with its ``submit_timeout``; later
calls wait their turn, in order.

`SubmitWindow` belongs to one `p2a_connector.session.ESMEProtocol` and works
through it: its sequence numbers, its writes, its state and its bind's
settings.  The session hands it every response whose sequence_number it
holds, and the reason when the connection is lost.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import pdu
from p2a_connector.pdu import Header
from p2a_connector.smpp_status import ESME_ROK, status_name

if TYPE_CHECKING:
    from p2a_connector.session import ESMEProtocol


class SubmitTimeout(Exception):
    """The SMSC did not answer a submit_sm within submit_timeout."""


@attrs.frozen
class SubmitResult:
    """
    The SMSC's answer to one submit_sm.

    :ivar status: the command_status of the submit_sm_resp (or of the
        generic_nack the SMSC answered instead).
    :ivar message_id: the SMSC's id for the message; empty on an error.
    """

    status: int
    message_id: str
    sequence_number: int

    @property
    def ok(self) -> bool:
        return self.status == ESME_ROK

    @property
    def status_name(self) -> str:
        return status_name(self.status)


class SubmitWindow:
    """The submit_sm of one session that wait for a response or for room."""

    log = Logger()

    def __init__(self, session: ESMEProtocol):
        self._session = session
        # Sent, by sequence_number, with their timeout; and the calls
        # waiting for room in the window.
        self._sent: dict[int, tuple[Deferred[SubmitResult], IDelayedCall]] = {}
        self._waiting: deque[tuple[Deferred[SubmitResult], dict]] = deque()

    def submit(self, fields: dict[str, Any]) -> Deferred[SubmitResult]:
        """Send now if the window has room, else when it does."""
        if len(self._sent) >= self._session.bind.submit_window:
            waiting: Deferred[SubmitResult] = Deferred(self._dequeue)
            self._waiting.append((waiting, fields))
            return waiting
        return self._send(fields)

    def outstanding(self) -> int:
        """submit_sm sent and not yet answered, plus those waiting to be sent."""
        return len(self._sent) + len(self._waiting)

    def holds(self, sequence_number: int) -> bool:
        return sequence_number in self._sent

    def answered(self, header: Header, body: bytes) -> None:
        """The SMSC answered one of ours: submit_sm_resp or generic_nack."""
        sent, overdue = self._sent.pop(header.sequence_number)
        if overdue.active():
            overdue.cancel()
        status = header.command_status
        message_id = ""
        if header.command_id == pdu.SUBMIT_SM | pdu.RESPONSE_BIT and status == ESME_ROK:
            message_id = pdu.message_id_of(body)
        self._session.metrics.submitted(status)
        self._next()
        sent.callback(SubmitResult(status, message_id, header.sequence_number))

    def fail_all(self, reason: Failure) -> None:
        """The connection is gone: every submit_sm sent or waiting fails."""
        sent, self._sent = self._sent, {}
        waiting, self._waiting = self._waiting, deque()
        for d, overdue in sent.values():
            if overdue.active():
                overdue.cancel()
            d.errback(reason)
        for d, _ in waiting:
            d.errback(reason)

    def _send(self, fields: dict[str, Any]) -> Deferred[SubmitResult]:
        session = self._session
        sequence_number = session._next_sequence_number()
        try:
            encoded = pdu.encode_submit_sm(sequence_number, **fields)
        except (TypeError, ValueError) as e:
            return fail(e)

        def forget(_: Deferred[SubmitResult]) -> None:
            entry = self._sent.pop(sequence_number, None)
            if entry is not None and entry[1].active():
                entry[1].cancel()
            self._next()

        sent: Deferred[SubmitResult] = Deferred(forget)
        overdue = session._clock.callLater(
            session.bind.submit_timeout, self._overdue, sequence_number
        )
        self._sent[sequence_number] = (sent, overdue)
        session._write(encoded)
        return sent

    def _overdue(self, sequence_number: int) -> None:
        entry = self._sent.pop(sequence_number, None)
        if entry is None:
            return
        session = self._session
        timeout = session.bind.submit_timeout
        self.log.warn(
            "no submit_sm_resp on {bind} within {timeout} s",
            bind=session.bind_name,
            timeout=timeout,
            sequence_number=sequence_number,
        )
        session.metrics.submitted("timeout")
        self._next()
        entry[0].errback(
            SubmitTimeout(
                f"no submit_sm_resp within {timeout:g} s on bind "
                f"{session.bind_name} (sequence_number {sequence_number})"
            )
        )

    def _next(self) -> None:
        """Send the calls waiting for room, as far as the window allows."""
        session = self._session
        while (
            self._waiting
            and session.state == "bound"
            and len(self._sent) < session.bind.submit_window
        ):
            waiting, fields = self._waiting.popleft()
            self._send(fields).chainDeferred(waiting)

    def _dequeue(self, waiting: Deferred[SubmitResult]) -> None:
        for entry in self._waiting:
            if entry[0] is waiting:
                self._waiting.remove(entry)
                return
