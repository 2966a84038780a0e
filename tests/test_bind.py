"""BindService keeping a bind up: backoff, reconnect, unbind on stop."""

import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock

from p2a_connector import pdu
from p2a_connector.bind import BindService
from p2a_connector.smpp_status import ESME_ROK, status_code


def accept(mo, session):
    return succeed(ESME_ROK)


@pytest.fixture
def smpp_services():
    """BindServices a test starts; stopped when the test ends."""
    services = []
    yield services
    running = [s.stopService() for s in services if s.running]
    pytest_twisted.blockon(gatherResults(running))


def bind_attempts(simulator) -> int:
    return simulator.commands().count("bind_transceiver")


@pytest_twisted.inlineCallbacks
def test_binds_and_reports_bound(smpp_simulator, smpp_bind, smpp_services):
    service = BindService(smpp_bind(), accept, reactor)
    smpp_services.append(service)

    service.startService()
    session = yield service.whenBound()

    assert service.state == "bound"
    assert session.state == "bound"
    assert smpp_simulator.session.bind_command == "bind_transceiver"


@pytest_twisted.inlineCallbacks
def test_refused_binds_are_retried_with_exponential_backoff(
    smpp_simulator, smpp_bind, smpp_services, smpp_wait, smpp_logged_failures
):
    smpp_simulator.refuse_status = status_code("ESME_RBINDFAIL")
    clock = Clock()
    bind = smpp_bind(reconnect_initial=1, reconnect_max=5)
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    service = BindService(bind, accept, clock, endpoint=endpoint, random=lambda: 0)
    smpp_services.append(service)
    delays = []

    service.startService()
    for attempt in range(1, 6):
        yield smpp_wait(
            lambda n=attempt: (
                bind_attempts(smpp_simulator) == n and service.state == "connecting"
            )
        )
        [retry] = clock.getDelayedCalls()
        delays.append(retry.getTime() - clock.seconds())
        clock.advance(delays[-1])

    assert delays == [1, 2, 4, 5, 5]
    assert smpp_logged_failures == []


@pytest_twisted.inlineCallbacks
def test_retry_delay_carries_jitter_of_up_to_reconnect_initial(
    smpp_simulator, smpp_bind, smpp_services, smpp_wait
):
    smpp_simulator.refuse_status = status_code("ESME_RINVPASWD")
    clock = Clock()
    bind = smpp_bind(reconnect_initial=2)
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    service = BindService(bind, accept, clock, endpoint=endpoint, random=lambda: 0.5)
    smpp_services.append(service)

    service.startService()
    yield smpp_wait(lambda: service.state == "connecting" and clock.getDelayedCalls())

    [retry] = clock.getDelayedCalls()
    assert retry.getTime() - clock.seconds() == 2 + 0.5 * 2


@pytest_twisted.inlineCallbacks
def test_a_bind_accepted_after_refusals_is_bound(
    smpp_simulator, smpp_bind, smpp_services, smpp_wait
):
    smpp_simulator.refuse_status = status_code("ESME_RBINDFAIL")
    service = BindService(
        smpp_bind(reconnect_initial=0.02), accept, reactor, random=lambda: 0
    )
    smpp_services.append(service)
    service.startService()
    yield smpp_wait(lambda: bind_attempts(smpp_simulator) >= 2)

    smpp_simulator.refuse_status = None

    yield service.whenBound()
    assert service.state == "bound"


@pytest_twisted.inlineCallbacks
def test_smsc_disconnect_leads_to_reconnect_and_rebind(
    smpp_simulator, smpp_bind, smpp_services, smpp_logged_failures
):
    service = BindService(
        smpp_bind(reconnect_initial=0.02), accept, reactor, random=lambda: 0
    )
    smpp_services.append(service)
    service.startService()
    first = yield service.whenBound()
    rebound = smpp_simulator.nextBind()

    smpp_simulator.disconnect()

    yield rebound
    second = yield service.whenBound()
    assert second is not first
    assert first.state == "closed"
    assert bind_attempts(smpp_simulator) == 2
    assert smpp_logged_failures == []


@pytest_twisted.inlineCallbacks
def test_corrupt_stream_closes_the_bind_which_reconnects(
    smpp_simulator, smpp_bind, smpp_services
):
    service = BindService(
        smpp_bind(reconnect_initial=0.02), accept, reactor, random=lambda: 0
    )
    smpp_services.append(service)
    service.startService()
    first = yield service.whenBound()
    nacked = smpp_simulator.whenReceived("generic_nack")
    rebound = smpp_simulator.nextBind()

    smpp_simulator.send_raw(struct.pack(">IIII", 4, pdu.DELIVER_SM, 0, 9))

    assert (yield nacked).status == status_code("ESME_RINVCMDLEN")
    yield rebound
    assert (yield service.whenBound()) is not first
    assert (yield smpp_simulator.deliver(short_message=b"again")) == ESME_ROK


@pytest_twisted.inlineCallbacks
def test_stop_service_unbinds_first(smpp_simulator, smpp_bind):
    service = BindService(smpp_bind(), accept, reactor)
    service.startService()
    session = yield service.whenBound()

    yield service.stopService()

    assert smpp_simulator.commands()[-1] == "unbind"
    assert session.state == "closed"
    assert service.state == "stopped"


@pytest_twisted.inlineCallbacks
def test_stop_service_while_waiting_to_retry_stops_retrying(
    smpp_simulator, smpp_bind, smpp_wait
):
    smpp_simulator.refuse_status = status_code("ESME_RBINDFAIL")
    clock = Clock()
    bind = smpp_bind()
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    service = BindService(bind, accept, clock, endpoint=endpoint)
    service.startService()
    yield smpp_wait(lambda: service.state == "connecting" and clock.getDelayedCalls())

    yield service.stopService()

    assert clock.getDelayedCalls() == []
    assert service.state == "stopped"


@pytest_twisted.inlineCallbacks
def test_stop_service_while_binding_abandons_the_bind(
    smpp_simulator, smpp_bind, smpp_wait, smpp_logged_failures
):
    smpp_simulator.answer_binds = False
    clock = Clock()
    bind = smpp_bind()
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    service = BindService(bind, accept, clock, endpoint=endpoint)
    service.startService()
    yield smpp_wait(lambda: bind_attempts(smpp_simulator) == 1)

    yield service.stopService()

    yield smpp_wait(lambda: all(s.state == "closed" for s in smpp_simulator.sessions))
    assert clock.getDelayedCalls() == []
    assert smpp_logged_failures == []


@pytest_twisted.inlineCallbacks
def test_when_bound_fails_if_the_service_stops_first(smpp_simulator, smpp_bind):
    smpp_simulator.answer_binds = False
    service = BindService(smpp_bind(), accept, reactor)
    service.startService()
    bound = service.whenBound()

    yield service.stopService()

    with pytest.raises(CancelledError):
        yield bound
