"""ESMEProtocol over real TCP against the SMSC simulator."""

import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from p2a_connector import pdu
from p2a_connector.metrics import Metrics
from p2a_connector.models import TLV, Address
from p2a_connector.session import (
    BindRefused,
    BindTimeout,
    ESMEProtocol,
    NotTransmitting,
)
from p2a_connector.smpp_status import ESME_ROK, status_code
from p2a_connector.submit_window import SubmitTimeout


class Recorder:
    """An MO handler answering a fixed status and keeping what it was given."""

    def __init__(self, status: int = ESME_ROK):
        self.status = status
        self.received = []

    def __call__(self, mo, session):
        self.received.append(mo)
        return succeed(self.status)


def connect(bind, handler, clock=reactor):
    session = ESMEProtocol(bind, handler, clock)
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    return connectProtocol(endpoint, session)


@inlineCallbacks
def bound(bind, handler=None, clock=reactor):
    session = yield connect(bind, handler or Recorder(), clock)
    yield session.bindESME()
    return session


@pytest_twisted.inlineCallbacks
def test_binds_as_transceiver_with_the_configured_fields(smpp_simulator, smpp_bind):
    bind = smpp_bind(
        mode="transceiver",
        system_type="VMA",
        addr_ton=1,
        addr_npi=1,
        address_range="^4477",
    )

    session = yield bound(bind)

    assert session.state == "bound"
    [received] = smpp_simulator.received
    assert received.command == "bind_transceiver"
    assert received.fields["system_id"] == "p2a"
    assert received.fields["password"] == "secret"
    assert received.fields["system_type"] == "VMA"
    assert received.fields["interface_version"] == 0x34
    assert received.fields["addr_ton"].name == "INTERNATIONAL"
    assert received.fields["addr_npi"].name == "ISDN"
    assert received.fields["address_range"] == "^4477"


@pytest_twisted.inlineCallbacks
def test_binds_as_receiver(smpp_simulator, smpp_bind):
    yield bound(smpp_bind(mode="receiver"))

    assert smpp_simulator.commands() == ["bind_receiver"]
    assert smpp_simulator.session.bind_command == "bind_receiver"


@pytest_twisted.inlineCallbacks
def test_refused_bind_fails_with_the_status_and_closes(smpp_simulator, smpp_bind):
    smpp_simulator.refuse_status = status_code("ESME_RBINDFAIL")
    session = yield connect(smpp_bind(), Recorder())

    with pytest.raises(BindRefused) as refused:
        yield session.bindESME()

    assert refused.value.status == status_code("ESME_RBINDFAIL")
    yield session.whenClosed()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_refused_with_invalid_password(smpp_simulator, smpp_bind):
    session = yield connect(smpp_bind(password="wrong"), Recorder())

    with pytest.raises(BindRefused) as refused:
        yield session.bindESME()

    assert refused.value.status == status_code("ESME_RINVPASWD")


@pytest_twisted.inlineCallbacks
def test_unanswered_bind_times_out_and_closes(smpp_simulator, smpp_bind, smpp_wait):
    smpp_simulator.answer_binds = False
    clock = Clock()
    session = yield connect(smpp_bind(bind_timeout=10), Recorder(), clock)
    binding = session.bindESME()
    yield smpp_wait(lambda: smpp_simulator.received)

    clock.advance(10)

    with pytest.raises(BindTimeout):
        yield binding
    yield session.whenClosed()


@pytest_twisted.inlineCallbacks
def test_answers_enquire_link_from_the_smsc(smpp_simulator, smpp_bind):
    yield bound(smpp_bind())

    status = yield smpp_simulator.enquire_link()

    assert status == ESME_ROK


@pytest_twisted.inlineCallbacks
def test_sends_enquire_link_after_the_idle_interval(smpp_simulator, smpp_bind):
    clock = Clock()
    yield bound(smpp_bind(enquire_link_interval=30), clock=clock)
    asked = smpp_simulator.whenReceived("enquire_link")

    clock.advance(29)
    assert "enquire_link" not in smpp_simulator.commands()
    clock.advance(1)

    received = yield asked
    assert received.command == "enquire_link"


@pytest_twisted.inlineCallbacks
def test_traffic_postpones_the_enquire_link(smpp_simulator, smpp_bind):
    clock = Clock()
    yield bound(smpp_bind(enquire_link_interval=30), clock=clock)

    clock.advance(20)
    yield smpp_simulator.deliver(short_message=b"hi")
    clock.advance(20)

    assert "enquire_link" not in smpp_simulator.commands()


@pytest_twisted.inlineCallbacks
def test_drops_the_link_when_enquire_link_is_not_answered(
    smpp_simulator, smpp_bind, smpp_wait
):
    smpp_simulator.answer_enquire_link = False
    clock = Clock()
    bind = smpp_bind(enquire_link_interval=30, enquire_link_timeout=10)
    session = yield bound(bind, clock=clock)
    asked = smpp_simulator.whenReceived("enquire_link")
    clock.advance(30)
    yield asked

    clock.advance(9.9)
    assert session.state == "bound"
    clock.advance(0.1)

    yield session.whenClosed()


@pytest_twisted.inlineCallbacks
def test_answered_enquire_link_keeps_the_link(smpp_simulator, smpp_bind, smpp_wait):
    clock = Clock()
    bind = smpp_bind(enquire_link_interval=30, enquire_link_timeout=10)
    session = yield bound(bind, clock=clock)
    clock.advance(30)
    # Once the resp is in, the only timer left is the next idle interval.
    yield smpp_wait(lambda: [c.getTime() for c in clock.getDelayedCalls()] == [60])

    clock.advance(15)

    assert session.state == "bound"


@pytest_twisted.inlineCallbacks
def test_unbind_from_the_smsc_is_answered_and_closes(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind())

    status = yield smpp_simulator.unbind()

    assert status == ESME_ROK
    yield session.whenClosed()
    assert session.state == "closed"


@pytest_twisted.inlineCallbacks
def test_unbind_sends_unbind_and_closes_after_the_resp(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind())

    yield session.unbind()

    assert smpp_simulator.commands()[-1] == "unbind"
    assert session.state == "closed"


@pytest_twisted.inlineCallbacks
def test_unbind_gives_up_after_unbind_timeout(smpp_simulator, smpp_bind, smpp_wait):
    smpp_simulator.answer_unbind = False
    clock = Clock()
    session = yield bound(smpp_bind(unbind_timeout=5), clock=clock)

    closed = session.unbind()
    yield smpp_wait(lambda: "unbind" in smpp_simulator.commands())
    assert not closed.called
    clock.advance(5)

    yield closed


@pytest_twisted.inlineCallbacks
def test_corrupt_command_length_gets_generic_nack_and_closes(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind())
    nacked = smpp_simulator.whenReceived("generic_nack")

    smpp_simulator.send_raw(struct.pack(">IIII", 8, pdu.DELIVER_SM, 0, 77))

    nack = yield nacked
    assert nack.status == status_code("ESME_RINVCMDLEN")
    assert nack.sequence_number == 77
    yield session.whenClosed()


@pytest_twisted.inlineCallbacks
def test_command_length_above_max_pdu_size_closes(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind())
    nacked = smpp_simulator.whenReceived("generic_nack")

    smpp_simulator.send_raw(struct.pack(">IIII", 65537, pdu.DELIVER_SM, 0, 1))

    assert (yield nacked).status == status_code("ESME_RINVCMDLEN")
    yield session.whenClosed()


@pytest_twisted.inlineCallbacks
def test_unknown_command_id_gets_generic_nack_and_the_bind_stays_up(
    smpp_simulator, smpp_bind
):
    handler = Recorder()
    session = yield bound(smpp_bind(), handler)
    nacked = smpp_simulator.whenReceived("generic_nack")

    smpp_simulator.send_raw(pdu.frame(0x00000999, 0, 55, b"\x01\x02"))

    nack = yield nacked
    assert (nack.status, nack.sequence_number) == (status_code("ESME_RINVCMDID"), 55)
    status = yield smpp_simulator.deliver(short_message=b"still here")
    assert status == ESME_ROK
    assert handler.received[0].short_message == b"still here"
    assert session.state == "bound"


@pytest_twisted.inlineCallbacks
def test_deliver_sm_with_ussd_vendor_tlvs_and_unknown_data_coding_reaches_the_handler(
    smpp_simulator, smpp_bind
):
    handler = Recorder()
    yield bound(smpp_bind(), handler)
    tlvs = [(0x0501, b"\x01"), (0x1383, b"\x00\x2a\x00"), (0x1401, b"\xde\xad")]

    status = yield smpp_simulator.deliver(
        service_type="USSD",
        source=Address("447700900123", 1, 1),
        destination=Address("*123#", 0, 0),
        data_coding=0x99,
        short_message=b"*123#",
        tlvs=tlvs,
    )

    assert status == ESME_ROK
    [mo] = handler.received
    assert mo.data_coding == 0x99
    assert mo.tlvs == tuple(TLV(tag, value) for tag, value in tlvs)
    assert mo.source == Address("447700900123", 1, 1)


@pytest_twisted.inlineCallbacks
def test_deliver_sm_resp_has_the_same_sequence_number_and_empty_message_id(
    smpp_simulator, smpp_bind
):
    yield bound(smpp_bind())
    sent = pdu.encode_deliver_sm(4242, short_message=b"x")

    smpp_simulator.send_raw(sent)

    resp = yield smpp_simulator.whenReceived("deliver_sm_resp")
    assert (resp.sequence_number, resp.status) == (4242, ESME_ROK)
    assert resp.body == b"\0"


@pytest_twisted.inlineCallbacks
def test_data_sm_is_answered_with_data_sm_resp(smpp_simulator, smpp_bind):
    handler = Recorder()
    yield bound(smpp_bind(), handler)

    status = yield smpp_simulator.data_sm(
        source=Address("447700900123", 1, 1), tlvs=[(0x0424, b"payload")]
    )

    assert status == ESME_ROK
    assert "data_sm_resp" in smpp_simulator.commands()
    assert handler.received[0].command == "data_sm"
    assert handler.received[0].tlv(0x0424) == b"payload"


@pytest_twisted.inlineCallbacks
def test_truncated_deliver_sm_gets_an_error_status_and_the_bind_stays_up(
    smpp_simulator, smpp_bind
):
    handler = Recorder()
    session = yield bound(smpp_bind(), handler)
    sim_session = smpp_simulator.session
    body = pdu.encode_deliver_sm(1, short_message=b"hello")[pdu.HEADER_SIZE :]

    status = yield sim_session.request(
        lambda seq: pdu.frame(pdu.DELIVER_SM, 0, seq, body[:-3])
    ).addCallback(lambda header: header.command_status)

    assert status == status_code("ESME_RINVMSGLEN")
    assert handler.received == []
    assert (yield smpp_simulator.deliver(short_message=b"ok")) == ESME_ROK
    assert session.state == "bound"


@pytest_twisted.inlineCallbacks
def test_a_pdu_of_64_kib_is_accepted(smpp_simulator, smpp_bind):
    handler = Recorder()
    yield bound(smpp_bind(max_pdu_size=65536), handler)
    empty = len(pdu.encode_deliver_sm(1, tlvs=[(0x1401, b"")]))
    padding = b"v" * (65536 - empty)

    status = yield smpp_simulator.deliver(tlvs=[(0x1401, padding)])

    assert status == ESME_ROK
    assert handler.received[0].tlv(0x1401) == padding


@pytest_twisted.inlineCallbacks
def test_handler_status_is_the_deliver_sm_resp_status(smpp_simulator, smpp_bind):
    yield bound(smpp_bind(), Recorder(status_code("ESME_RTHROTTLED")))

    status = yield smpp_simulator.deliver(short_message=b"x")

    assert status == status_code("ESME_RTHROTTLED")


@pytest_twisted.inlineCallbacks
def test_handler_failure_is_answered_with_the_busy_status(smpp_simulator, smpp_bind):
    def failing(mo, session):
        return fail(RuntimeError("spool exploded"))

    bind = smpp_bind(busy_status=status_code("ESME_RX_T_APPN"))
    session = yield bound(bind, failing)

    status = yield smpp_simulator.deliver(short_message=b"x")

    assert status == status_code("ESME_RX_T_APPN")
    assert session.state == "bound"


@pytest_twisted.inlineCallbacks
def test_window_full_pauses_reading_until_a_handler_finishes(
    smpp_simulator, smpp_bind, smpp_wait
):
    held = []

    def holding(mo, session):
        held.append(Deferred())
        return held[-1]

    def release_all():
        for handled in held:
            if not handled.called:
                handled.callback(ESME_ROK)
        return answered.called

    yield bound(smpp_bind(window=2), holding)
    answered = gatherResults(
        [smpp_simulator.deliver(short_message=b"%d" % n) for n in range(5)]
    )
    yield smpp_wait(lambda: len(held) == 2)
    yield deferLater(reactor, 0.2, lambda: None)
    assert len(held) == 2

    held[0].callback(ESME_ROK)
    yield smpp_wait(lambda: len(held) == 3)
    yield deferLater(reactor, 0.2, lambda: None)
    assert len(held) == 3

    yield smpp_wait(release_all)
    assert (yield answered) == [ESME_ROK] * 5


# --- submit_sm ----------------------------------------------------------


def submit_fields(text: bytes = b"hello") -> dict:
    return {
        "source": Address("4477", 0, 1),
        "destination": Address("447700900001", 1, 1),
        "registered_delivery": 1,
        "short_message": text,
    }


@inlineCallbacks
def silent_smsc(smpp_simulator):
    """The simulator's bound session, no longer reading: nothing is answered."""
    smsc = yield smpp_simulator.whenBound()
    smsc.transport.pauseProducing()
    return smsc


@pytest_twisted.inlineCallbacks
def test_binds_as_transmitter(smpp_simulator, smpp_bind):
    yield bound(smpp_bind(mode="transmitter"))

    assert smpp_simulator.commands() == ["bind_transmitter"]


@pytest_twisted.inlineCallbacks
def test_submit_sm_fires_with_the_message_id_the_smsc_gave(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind(mode="transmitter"))

    result = yield session.submit_sm(**submit_fields(b"hello"))

    [submitted] = smpp_simulator.submits
    assert result.ok
    assert result.message_id == submitted.message_id == "sim000001"
    assert submitted.pdu.short_message == b"hello"
    assert submitted.pdu.destination == Address("447700900001", 1, 1)
    assert submitted.pdu.registered_delivery == 1


@pytest_twisted.inlineCallbacks
def test_submit_sm_fires_with_an_error_status_rather_than_failing(
    smpp_simulator, smpp_bind
):
    smpp_simulator.submit_statuses = [status_code("ESME_RINVDSTADR")]
    session = yield bound(smpp_bind())

    result = yield session.submit_sm(**submit_fields())

    assert not result.ok
    assert result.status_name == "ESME_RINVDSTADR"
    assert result.message_id == ""


@pytest_twisted.inlineCallbacks
def test_submit_sm_beyond_the_window_waits_for_a_free_slot(smpp_simulator, smpp_bind):
    # Nothing is answered, so only the timeouts free the window: the third
    # submit_sm is sent, and its timeout started, when the first two end.
    clock = Clock()
    session = yield bound(smpp_bind(submit_window=2, submit_timeout=30), clock=clock)
    yield silent_smsc(smpp_simulator)
    first, second, third = (session.submit_sm(**submit_fields()) for _ in range(3))
    for d in (first, second, third):
        d.addErrback(lambda f: f.trap(SubmitTimeout) and None)

    clock.advance(30)
    assert first.called and second.called
    assert session.submits_outstanding() == 1

    clock.advance(29)
    assert not third.called
    clock.advance(1)
    assert third.called
    assert session.submits_outstanding() == 0


@pytest_twisted.inlineCallbacks
def test_submit_sm_waiting_for_the_window_go_out_in_call_order(
    smpp_simulator, smpp_bind
):
    session = yield bound(smpp_bind(submit_window=1))

    yield gatherResults(
        [session.submit_sm(**submit_fields(b"m%d" % n)) for n in range(5)]
    )

    texts = [s.pdu.short_message for s in smpp_simulator.submits]
    assert texts == [b"m0", b"m1", b"m2", b"m3", b"m4"]


@pytest_twisted.inlineCallbacks
def test_unanswered_submit_sm_fails_with_submit_timeout(smpp_simulator, smpp_bind):
    clock = Clock()
    session = yield bound(smpp_bind(submit_timeout=30), clock=clock)
    yield silent_smsc(smpp_simulator)
    submitted = session.submit_sm(**submit_fields())

    clock.advance(30)

    with pytest.raises(SubmitTimeout, match="no submit_sm_resp within 30 s"):
        yield submitted
    assert session.state == "bound"


@pytest_twisted.inlineCallbacks
def test_outstanding_and_waiting_submit_sm_fail_when_the_connection_is_lost(
    smpp_simulator, smpp_bind
):
    session = yield bound(smpp_bind(submit_window=1))
    smsc = yield silent_smsc(smpp_simulator)
    sent = session.submit_sm(**submit_fields())
    waiting = session.submit_sm(**submit_fields())

    smsc.transport.abortConnection()

    with pytest.raises(ConnectionLost):
        yield sent
    with pytest.raises(ConnectionLost):
        yield waiting
    assert session.submits_outstanding() == 0


@pytest_twisted.inlineCallbacks
def test_submit_sm_on_a_receiver_bind_raises_at_once(smpp_simulator, smpp_bind):
    session = yield bound(smpp_bind(mode="receiver"))

    with pytest.raises(NotTransmitting, match="receiver bind"):
        session.submit_sm(**submit_fields())
    assert smpp_simulator.submits == []


@pytest_twisted.inlineCallbacks
def test_a_transmitter_bind_answers_a_deliver_sm_it_gets_anyway(
    smpp_simulator, smpp_bind
):
    recorder = Recorder()
    yield bound(smpp_bind(mode="transmitter"), recorder)

    status = yield smpp_simulator.deliver(short_message=b"stray")

    assert status == ESME_ROK
    assert [mo.short_message for mo in recorder.received] == [b"stray"]


@pytest_twisted.inlineCallbacks
def test_submit_sm_results_are_counted_by_status(smpp_simulator, smpp_bind):
    metrics = Metrics()
    bind = smpp_bind()
    smpp_simulator.submit_statuses = [status_code("ESME_RTHROTTLED")]
    session = ESMEProtocol(bind, Recorder(), reactor, metrics.bind("test", bind.name))
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    yield connectProtocol(endpoint, session)
    yield session.bindESME()

    yield session.submit_sm(**submit_fields())
    yield session.submit_sm(**submit_fields())

    def count(status):
        return metrics.registry.get_sample_value(
            "p2a_submits_total",
            {"operator": "test", "bind": bind.name, "status": status},
        )

    assert count("ESME_RTHROTTLED") == 1
    assert count("ESME_ROK") == 1


# --- reading ------------------------------------------------------------


def test_a_burst_of_pdus_is_handled_over_several_reactor_turns(smpp_bind):
    clock = Clock()
    recorder = Recorder()
    session = ESMEProtocol(smpp_bind(), recorder, clock)
    transport = StringTransport()
    session.makeConnection(transport)
    bound = session.bindESME()
    written = pdu.Framer(1 << 16)
    written.feed(transport.value())
    bind, _ = written.next_frame()
    session.dataReceived(
        pdu.encode_bind_resp(bind.command_id, bind.sequence_number, ESME_ROK, "smsc")
    )
    assert bound.called
    per_turn = ESMEProtocol.PDUS_PER_TURN

    transport.clear()
    session.dataReceived(
        b"".join(
            pdu.encode_deliver_sm(n, short_message=b"%d" % n)
            for n in range(2, 2 * per_turn + 5)
        )
    )
    first_turn = len(recorder.received)
    answered = _commands(transport.value())
    clock.advance(0)

    # The first turn's PDUs are answered (and what they wrote goes out)
    # before the rest are read, in later turns.
    assert first_turn == per_turn
    assert answered == [pdu.DELIVER_SM | pdu.RESPONSE_BIT] * per_turn
    assert len(recorder.received) == 2 * per_turn + 3


def _commands(written: bytes) -> list[int]:
    framer = pdu.Framer(1 << 16)
    framer.feed(written)
    commands = []
    while (frame := framer.next_frame()) is not None:
        commands.append(frame[0].command_id)
    return commands
