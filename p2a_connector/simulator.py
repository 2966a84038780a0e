"""
An SMSC simulator: the other end of a bind, for tests and for the demo.

It listens on TCP, accepts or refuses binds, records every PDU it receives,
answers enquire_link and unbind, and sends whatever deliver_sm or data_sm a
test asks for, including the odd ones real SMSCs send (unknown data_coding,
USSD and vendor TLVs, malformed bodies through `SMSCSession.send_raw`).
It answers submit_sm with a message_id, or with the statuses a test
scripts (throttling, say), and keeps each one parsed in ``submits``; with
``send_receipts`` it sends a delivery receipt for each one that asked.

Run on its own it accepts binds and stays quiet::

    python -m p2a_connector.simulator --port 2775 --system-id p2a --password secret
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import attrs
from smpp.pdu.error import PDUParseError
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import pdu
from p2a_connector.models import MOPdu
from p2a_connector.pdu import Header
from p2a_connector.smpp_status import ESME_ROK, status_code, status_name
from p2a_connector.tlv import (
    TAG_ITS_SESSION_INFO,
    TAG_MESSAGE_STATE,
    TAG_RECEIPTED_MESSAGE_ID,
    TAG_USSD_SERVICE_OP,
)


@attrs.frozen
class Received:
    """One PDU the simulator received; ``fields`` are a bind's parameters."""

    command: str
    command_id: int
    status: int
    sequence_number: int
    body: bytes = b""
    fields: dict = attrs.field(factory=dict)


@attrs.frozen
class Submitted:
    """A submit_sm the simulator accepted, the id it gave, the session it came on."""

    message_id: str
    pdu: MOPdu
    session: SMSCSession = attrs.field(eq=False, repr=False)

    @property
    def ussd_service_op(self) -> int | None:
        value = self.pdu.tlv(TAG_USSD_SERVICE_OP)
        return value[0] if value else None

    @property
    def its_session_info(self) -> bytes | None:
        return self.pdu.tlv(TAG_ITS_SESSION_INFO)


def _receipt(message_id: str, submitted: MOPdu) -> dict:
    """The deliver_sm fields of a DELIVRD receipt for a submit_sm."""
    text = (
        f"id:{message_id} sub:001 dlvrd:001 submit date:2612031200 "
        f"done date:2612031201 stat:DELIVRD err:000 text:"
    )
    return {
        "source": submitted.destination,
        "destination": submitted.source,
        "esm_class": 0x04,
        "short_message": text.encode("ascii"),
        "tlvs": (
            (TAG_RECEIPTED_MESSAGE_ID, message_id.encode("ascii") + b"\0"),
            (TAG_MESSAGE_STATE, bytes((2,))),
        ),
    }


class SMSCSession(Protocol):
    """One ESME connection, seen from the SMSC's side."""

    log = Logger()

    def __init__(self, simulator: SMSCSimulator):
        self.simulator = simulator
        self.state = "open"
        self.bind_command: str | None = None
        self._framer = pdu.Framer(1 << 24)
        self._sequence_number = 0
        self._pending: dict[int, Deferred[Header]] = {}
        self._enquire: IDelayedCall | None = None
        self._close_waiters: list[Deferred[None]] = []

    # --- what a test does with a session --------------------------------

    def deliver(self, **fields) -> Deferred[int]:
        """
        Send a deliver_sm built by `pdu.encode_deliver_sm` from ``fields``;
        fires with the deliver_sm_resp's command_status.
        """
        return self._status_of(
            self.request(lambda seq: pdu.encode_deliver_sm(seq, **fields))
        )

    def data_sm(self, **fields) -> Deferred[int]:
        """Send a data_sm; fires with the data_sm_resp's command_status."""
        return self._status_of(
            self.request(lambda seq: pdu.encode_data_sm(seq, **fields))
        )

    def enquire_link(self) -> Deferred[int]:
        return self._status_of(self.request(pdu.encode_enquire_link))

    def unbind(self) -> Deferred[int]:
        """Unbind the ESME; fires with the unbind_resp's command_status."""
        return self._status_of(self.request(pdu.encode_unbind))

    def request(self, encode: Callable[[int], bytes]) -> Deferred[Header]:
        """Send the PDU ``encode(sequence_number)``; fires with its response."""
        if self.state == "closed":
            return fail(ConnectionDone("the ESME is not connected"))
        self._sequence_number += 1
        sequence_number = self._sequence_number
        response: Deferred[Header] = Deferred()
        self._pending[sequence_number] = response
        self.transport.write(encode(sequence_number))
        return response

    def next_sequence_number(self) -> int:
        """A fresh sequence_number, for PDUs a test builds itself."""
        self._sequence_number += 1
        return self._sequence_number

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are; a response to them is only recorded."""
        self.transport.write(data)

    def disconnect(self) -> None:
        if self.state != "closed":
            self.transport.loseConnection()

    def whenClosed(self) -> Deferred[None]:
        if self.state == "closed":
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    # --- Protocol -------------------------------------------------------

    def connectionMade(self) -> None:
        self.simulator.sessions.append(self)

    def dataReceived(self, data: bytes) -> None:
        self._framer.feed(data)
        while self.state != "closed":
            try:
                received = self._framer.next_frame()
            except pdu.PDUError as e:
                self.log.error("corrupt stream from the ESME: {reason}", reason=e)
                self.transport.abortConnection()
                return
            if received is None:
                return
            self._dispatch(*received)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        self.state = "closed"
        if self._enquire is not None and self._enquire.active():
            self._enquire.cancel()
        pending, self._pending = self._pending, {}
        for response in pending.values():
            response.errback(reason)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # --- receiving ------------------------------------------------------

    def _dispatch(self, header: Header, body: bytes) -> None:
        fields = {}
        if header.command_id in pdu.BIND_COMMANDS:
            fields = self._bind_fields(header, body)
        self.simulator._record(
            Received(
                header.command,
                header.command_id,
                header.command_status,
                header.sequence_number,
                body,
                fields,
            )
        )

        seq = header.sequence_number
        if header.is_response:
            response = self._pending.pop(seq, None)
            if response is not None:
                response.callback(header)
        elif header.command_id in pdu.BIND_COMMANDS:
            if self.simulator.answer_binds:
                self._bind(header, fields)
        elif header.command_id == pdu.ENQUIRE_LINK:
            if self.simulator.answer_enquire_link:
                self.transport.write(pdu.encode_enquire_link_resp(seq))
        elif header.command_id == pdu.UNBIND:
            self.state = "unbound"
            if self.simulator.answer_unbind:
                self.transport.write(pdu.encode_unbind_resp(seq))
        elif header.command_id == pdu.SUBMIT_SM:
            self._submit_sm(header, body)
        else:
            nack = pdu.encode_generic_nack(seq, status_code("ESME_RINVCMDID"))
            self.transport.write(nack)

    def _submit_sm(self, header: Header, body: bytes) -> None:
        simulator = self.simulator
        seq = header.sequence_number
        try:
            submitted = pdu.parse_mo(header.command_id, seq, body)
        except pdu.PDUError as e:
            self.transport.write(pdu.encode_submit_sm_resp(seq, e.status, ""))
            return
        status = simulator.submit_statuses.pop(0) if simulator.submit_statuses else 0
        if status != ESME_ROK:
            simulator.refused.append((submitted, status))
            self.transport.write(pdu.encode_submit_sm_resp(seq, status, ""))
            return

        message_id = f"sim{len(simulator.submits) + 1:06d}"
        simulator._submitted(Submitted(message_id, submitted, self))
        self.transport.write(pdu.encode_submit_sm_resp(seq, ESME_ROK, message_id))
        if simulator.send_receipts and submitted.registered_delivery & 0x03:
            self.deliver(**_receipt(message_id, submitted)).addErrback(lambda _: None)

    def _bind_fields(self, header: Header, body: bytes) -> dict:
        try:
            params = pdu.decode(header, body).params
        except PDUParseError as e:
            self.log.error(
                "undecodable {command}: {error}", command=header.command, error=e
            )
            return {}
        return {
            name: value.decode("latin-1") if isinstance(value, bytes) else value
            for name, value in params.items()
        }

    def _bind(self, header: Header, fields: dict) -> None:
        simulator = self.simulator
        if simulator.refuse_status is not None:
            status = simulator.refuse_status
        elif fields.get("system_id") != simulator.system_id:
            status = status_code("ESME_RINVSYSID")
        elif fields.get("password") != simulator.password:
            status = status_code("ESME_RINVPASWD")
        elif self.state != "open":
            status = status_code("ESME_RALYBND")
        else:
            status = ESME_ROK

        self.transport.write(
            pdu.encode_bind_resp(
                header.command_id, header.sequence_number, status, simulator.name
            )
        )
        self.log.info(
            "{command} from {system_id}: {status}",
            command=header.command,
            system_id=fields.get("system_id"),
            status=status_name(status),
        )
        if status == ESME_ROK:
            self.state = "bound"
            self.bind_command = header.command
            self._schedule_enquire_link()
            simulator._bound(self)

    def _schedule_enquire_link(self) -> None:
        interval = self.simulator.enquire_link_interval
        if interval is not None:
            self._enquire = self.simulator.clock.callLater(interval, self._keepalive)

    def _keepalive(self) -> None:
        self.enquire_link().addErrback(lambda _: None)
        self._schedule_enquire_link()

    @staticmethod
    def _status_of(response: Deferred[Header]) -> Deferred[int]:
        return response.addCallback(lambda header: header.command_status)


class SMSCSimulator(ServerFactory):
    """
    Accepts binds from ESMEs and lets a test drive them.

    Attributes a test may change at any time: ``refuse_status`` (answer every
    bind with this status), ``answer_binds``, ``answer_enquire_link`` and
    ``answer_unbind`` (False: stay silent), ``enquire_link_interval`` (send
    our own enquire_link this often once bound; None for never),
    ``submit_statuses`` (the statuses the next submit_sm get, in order;
    ESME_ROK once it is empty) and ``send_receipts`` (send a DELIVRD receipt
    for each accepted submit_sm whose registered_delivery asks for one).
    """

    log = Logger()

    def __init__(
        self,
        system_id: str = "p2a",
        password: str = "secret",
        *,
        refuse_status: int | None = None,
        answer_binds: bool = True,
        answer_enquire_link: bool = True,
        answer_unbind: bool = True,
        enquire_link_interval: float | None = None,
        name: str = "smsc-sim",
        clock: IReactorTime | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.system_id = system_id
        self.password = password
        self.refuse_status = refuse_status
        self.answer_binds = answer_binds
        self.answer_enquire_link = answer_enquire_link
        self.answer_unbind = answer_unbind
        self.enquire_link_interval = enquire_link_interval
        self.name = name
        self.clock = clock
        self.received: list[Received] = []
        self.submits: list[Submitted] = []
        self.refused: list[tuple[MOPdu, int]] = []
        self.submit_statuses: list[int] = []
        self.send_receipts = False
        self.sessions: list[SMSCSession] = []
        self.binds = 0
        self.listening: IListeningPort | None = None
        self._bind_waiters: list[Deferred[SMSCSession]] = []
        self._receive_waiters: list[tuple[str, Deferred[Received]]] = []
        self._submit_waiters: list[tuple[int, Deferred[list[Submitted]]]] = []

    def buildProtocol(self, addr) -> SMSCSession:
        return SMSCSession(self)

    def listen(self, reactor=None, port: int = 0, interface: str = "127.0.0.1") -> int:
        """Listen for ESMEs; returns the TCP port number."""
        if reactor is None:
            from twisted.internet import reactor
        self.listening = reactor.listenTCP(port, self, interface=interface)
        return self.listening.getHost().port

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection."""
        for session in self.sessions:
            session.disconnect()
        closed = [session.whenClosed() for session in self.sessions]
        stopped = self.listening.stopListening() if self.listening else None
        return gatherResults([*closed, *([stopped] if stopped else [])]).addCallback(
            lambda _: None
        )

    # --- waiting for things ---------------------------------------------

    @property
    def session(self) -> SMSCSession | None:
        """
        The most recently bound session still bound that takes deliver_sm
        (a receiver or transceiver), else any bound one, if any.
        """
        bound = [s for s in reversed(self.sessions) if s.state == "bound"]
        for session in bound:
            if session.bind_command != "bind_transmitter":
                return session
        return bound[0] if bound else None

    def whenBound(self) -> Deferred[SMSCSession]:
        """A bound session: now if there is one, else the next to bind."""
        if self.session is not None:
            return succeed(self.session)
        return self.nextBind()

    def nextBind(self) -> Deferred[SMSCSession]:
        """The next session to bind successfully."""
        waiter: Deferred[SMSCSession] = Deferred()
        self._bind_waiters.append(waiter)
        return waiter

    def whenReceived(self, command: str) -> Deferred[Received]:
        """The next PDU received with this command name, e.g. ``generic_nack``."""
        waiter: Deferred[Received] = Deferred()
        self._receive_waiters.append((command, waiter))
        return waiter

    def whenSubmitted(self, count: int) -> Deferred[list[Submitted]]:
        """The accepted submit_sm, once at least ``count`` have arrived."""
        if len(self.submits) >= count:
            return succeed(list(self.submits))
        waiter: Deferred[list[Submitted]] = Deferred()
        self._submit_waiters.append((count, waiter))
        return waiter

    def commands(self) -> list[str]:
        """The command names received so far, in order."""
        return [received.command for received in self.received]

    # --- acting on the bound session ----------------------------------

    def deliver(self, **fields) -> Deferred[int]:
        """`SMSCSession.deliver` on the bound session."""
        return self._bound_session().deliver(**fields)

    def data_sm(self, **fields) -> Deferred[int]:
        return self._bound_session().data_sm(**fields)

    def send_raw(self, data: bytes) -> None:
        self._bound_session().send_raw(data)

    def unbind(self) -> Deferred[int]:
        return self._bound_session().unbind()

    def enquire_link(self) -> Deferred[int]:
        return self._bound_session().enquire_link()

    def disconnect(self) -> None:
        """Drop every connection, as an SMSC restart would."""
        for session in self.sessions:
            session.disconnect()

    def _bound_session(self) -> SMSCSession:
        session = self.session
        if session is None:
            raise RuntimeError("no ESME is bound to the simulator")
        return session

    # --- bookkeeping for the sessions ---------------------------------

    def _record(self, received: Received) -> None:
        self.received.append(received)
        matching = [w for w in self._receive_waiters if w[0] == received.command]
        for entry in matching:
            self._receive_waiters.remove(entry)
            entry[1].callback(received)

    def _submitted(self, submitted: Submitted) -> None:
        self.submits.append(submitted)
        ready = [w for w in self._submit_waiters if len(self.submits) >= w[0]]
        for entry in ready:
            self._submit_waiters.remove(entry)
            entry[1].callback(list(self.submits))

    def _bound(self, session: SMSCSession) -> None:
        self.binds += 1
        waiters, self._bind_waiters = self._bind_waiters, []
        for waiter in waiters:
            waiter.callback(session)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m p2a_connector.simulator",
        description="An SMSC simulator that accepts SMPP binds and answers them.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2775)
    parser.add_argument("--system-id", default="p2a")
    parser.add_argument("--password", default="secret")
    parser.add_argument(
        "--enquire-link-interval",
        type=float,
        default=None,
        help="send enquire_link this often once bound (seconds)",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    simulator = SMSCSimulator(
        args.system_id,
        args.password,
        enquire_link_interval=args.enquire_link_interval,
        clock=reactor,
    )
    port = simulator.listen(reactor, args.port, args.host)
    SMSCSimulator.log.info(
        "SMSC simulator listening on {host}:{port}", host=args.host, port=port
    )
    reactor.run()


if __name__ == "__main__":
    main()
