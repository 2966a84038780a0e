"""The SMSC simulator itself: bind checks, recording, its own enquire_link."""

import re
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from p2a_connector.session import BindRefused, ESMEProtocol
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK, status_code


def accept(mo, session):
    return succeed(ESME_ROK)


@inlineCallbacks
def connect(bind):
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    session = yield connectProtocol(endpoint, ESMEProtocol(bind, accept, reactor))
    return session


@pytest_twisted.inlineCallbacks
def test_unknown_system_id_is_refused_with_invalid_system_id(smpp_simulator, smpp_bind):
    session = yield connect(smpp_bind(system_id="stranger"))

    with pytest.raises(BindRefused) as refused:
        yield session.bindESME()

    assert refused.value.status == status_code("ESME_RINVSYSID")
    assert smpp_simulator.session is None


@pytest_twisted.inlineCallbacks
def test_every_received_pdu_is_recorded_with_command_status_and_sequence_number(
    smpp_simulator, smpp_bind
):
    session = yield connect(smpp_bind())
    yield session.bindESME()

    yield smpp_simulator.deliver(short_message=b"x")
    yield session.unbind()

    assert [(r.command, r.status) for r in smpp_simulator.received] == [
        ("bind_transceiver", 0),
        ("deliver_sm_resp", 0),
        ("unbind", 0),
    ]
    assert smpp_simulator.received[0].sequence_number == 1
    assert smpp_simulator.received[2].sequence_number == 2


@pytest_twisted.inlineCallbacks
def test_sends_its_own_enquire_link_when_configured(smpp_bind):
    clock = Clock()
    simulator = SMSCSimulator("p2a", "secret", enquire_link_interval=20, clock=clock)
    port = simulator.listen(reactor)
    try:
        session = yield connect(smpp_bind(port=port))
        yield session.bindESME()
        answered = simulator.whenReceived("enquire_link_resp")

        clock.advance(20)

        assert (yield answered).status == ESME_ROK
    finally:
        yield simulator.stop()


@pytest_twisted.inlineCallbacks
def test_deliver_without_a_bound_session_is_an_error(smpp_simulator):
    with pytest.raises(RuntimeError, match="no ESME is bound"):
        yield smpp_simulator.deliver(short_message=b"x")


@pytest_twisted.inlineCallbacks
def test_command_line_simulator_accepts_a_bind(smpp_bind):
    child = subprocess.Popen(
        [sys.executable, "-u", "-m", "p2a_connector.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for line in child.stdout:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        session = yield connect(smpp_bind(port=port))

        yield session.bindESME()

        assert session.state == "bound"
        yield session.unbind()
    finally:
        child.terminate()
        child.wait(timeout=10)
        child.stdout.close()
