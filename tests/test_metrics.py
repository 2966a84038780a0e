"""
The counters and the latency histogram, counted where the facts are: PDUs on
a real SMPP session, binds against the simulator, refusals and failures of a
real spool at intake, and webhook posts to a real receiver.
"""

import base64
import json
import socket
import tomllib

import pytest
import pytest_twisted
from conftest import whole_events_only
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from p2a_connector import config, pdu, traffic
from p2a_connector.bind import BindService
from p2a_connector.config import WebhookConfig
from p2a_connector.dispatcher import Dispatcher
from p2a_connector.intake import Intake
from p2a_connector.metrics import Metrics
from p2a_connector.models import Address
from p2a_connector.receiver import Reply
from p2a_connector.service import Connector
from p2a_connector.session import ESMEProtocol
from p2a_connector.smpp_status import ESME_ROK, status_code, status_name
from p2a_connector.spool import Event
from p2a_connector.sqlite_spool import SqliteSpool

SECRET = "whsec_" + base64.b64encode(b"m" * 24).decode()
FAST = (0, 0.05, 0.1)
PHONE = Address("447700900123", 1, 1)

CONFIG = """
[spool]
path = "{path}"
max_pending = 2

[[webhook]]
name = "app"
url = "http://127.0.0.1:8099/sms"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
name = "op1-a"
host = "127.0.0.1"
port = 2775
system_id = "p2a"
password = "secret"
"""


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not (yet) exported."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout: float = 5.0) -> None:
    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError("the condition was not met in time")
        await sleep(0.01)
        waited += 0.01


# --- the registry and its labels ---------------------------------------------


def test_each_metrics_counts_in_its_own_registry():
    first, second = Metrics(), Metrics()

    first.spool_errors["store"].inc()

    assert value(first, "p2a_spool_errors_total", operation="store") == 1
    assert value(second, "p2a_spool_errors_total", operation="store") == 0


def test_a_command_and_status_without_a_name_are_counted_as_unknown():
    metrics = Metrics()
    bind = metrics.bind("op1", "op1-a")

    bind.received(0x00000999, 0x7777)
    bind.received(0x00000998, 0x7778)

    labels = {"operator": "op1", "bind": "op1-a"}
    assert (
        value(
            metrics,
            "p2a_pdus_received_total",
            command="unknown",
            status="unknown",
            **labels,
        )
        == 2
    )


def test_a_webhook_answer_is_counted_by_code_and_its_latency_observed():
    metrics = Metrics()
    webhook = metrics.webhook("app")

    webhook.answered(503, 0.2)
    webhook.answered("timeout", 15.0)

    assert value(metrics, "p2a_webhook_responses_total", webhook="app", code="503")
    assert value(metrics, "p2a_webhook_responses_total", webhook="app", code="timeout")
    latency = "p2a_webhook_latency_seconds_bucket"
    assert value(metrics, latency, webhook="app", le="0.1") == 0
    assert value(metrics, latency, webhook="app", le="0.25") == 1
    assert value(metrics, latency, webhook="app", le="15.0") == 2
    assert value(metrics, "p2a_webhook_latency_seconds_count", webhook="app") == 2


def test_every_attempt_outcome_is_exported_before_the_first_attempt():
    metrics = Metrics()

    metrics.webhook("app")

    for outcome in ("delivered", "retry", "dead"):
        assert (
            metrics.registry.get_sample_value(
                "p2a_webhook_attempts_total", {"webhook": "app", "outcome": outcome}
            )
            == 0
        )
    assert (
        metrics.registry.get_sample_value("p2a_dead_letters_total", {"webhook": "app"})
        == 0
    )


# --- the SMPP session ---------------------------------------------------------


async def session_on(bind, metrics: Metrics, status: int = ESME_ROK):
    session = ESMEProtocol(
        bind,
        lambda mo, session: succeed(status),
        reactor,
        metrics.bind(bind.operator, bind.name),
    )
    endpoint = TCP4ClientEndpoint(reactor, bind.host, bind.port)
    await connectProtocol(endpoint, session)
    await session.bindESME()
    return session


def pdus(metrics: Metrics, command: str, status: str = "ESME_ROK") -> float:
    return value(
        metrics,
        "p2a_pdus_received_total",
        operator="test",
        bind="test-bind",
        command=command,
        status=status,
    )


def responses(metrics: Metrics, command: str, status: str = "ESME_ROK") -> float:
    return value(
        metrics,
        "p2a_responses_sent_total",
        operator="test",
        bind="test-bind",
        command=command,
        status=status,
    )


@pytest_twisted.ensureDeferred
async def test_every_pdu_read_is_counted_by_command_and_status(
    smpp_simulator, smpp_bind
):
    metrics = Metrics()
    await session_on(smpp_bind(), metrics)

    await smpp_simulator.deliver(short_message=b"one")
    await smpp_simulator.deliver(short_message=b"two")
    await smpp_simulator.data_sm(tlvs=[(0x0424, b"three")])
    await smpp_simulator.enquire_link()

    assert pdus(metrics, "bind_transceiver_resp") == 1
    assert pdus(metrics, "deliver_sm") == 2
    assert pdus(metrics, "data_sm") == 1
    assert pdus(metrics, "enquire_link") == 1


@pytest_twisted.ensureDeferred
async def test_the_status_answered_to_deliver_sm_is_counted(smpp_simulator, smpp_bind):
    metrics = Metrics()
    await session_on(smpp_bind(), metrics, status_code("ESME_RX_T_APPN"))

    await smpp_simulator.deliver(short_message=b"busy")
    await smpp_simulator.data_sm(tlvs=[(0x0424, b"busy too")])

    assert responses(metrics, "deliver_sm_resp", "ESME_RX_T_APPN") == 1
    assert responses(metrics, "data_sm_resp", "ESME_RX_T_APPN") == 1
    assert responses(metrics, "deliver_sm_resp") == 0


@pytest_twisted.ensureDeferred
async def test_a_malformed_deliver_sm_is_counted_with_the_error_answered(
    smpp_simulator, smpp_bind
):
    metrics = Metrics()
    await session_on(smpp_bind(), metrics)
    answered = smpp_simulator.whenReceived("deliver_sm_resp")

    smpp_simulator.send_raw(pdu.frame(pdu.DELIVER_SM, 0, 41, b"\x00"))

    status = (await answered).status
    assert status != ESME_ROK
    assert responses(metrics, "deliver_sm_resp", status_name(status)) == 1


@pytest_twisted.ensureDeferred
async def test_an_unknown_command_is_counted_and_so_is_our_generic_nack(
    smpp_simulator, smpp_bind
):
    metrics = Metrics()
    await session_on(smpp_bind(), metrics)
    nacked = smpp_simulator.whenReceived("generic_nack")

    smpp_simulator.send_raw(pdu.frame(0x00000999, 0, 55, b""))

    await nacked
    assert pdus(metrics, "unknown") == 1
    assert responses(metrics, "generic_nack", "ESME_RINVCMDID") == 1


# --- binds --------------------------------------------------------------------


@pytest.fixture
def services():
    started = []
    yield started
    running = [service.stopService() for service in started if service.running]
    pytest_twisted.blockon(gatherResults(running))


def binds(metrics: Metrics, outcome: str) -> float:
    return value(
        metrics,
        "p2a_binds_total",
        operator="test",
        bind="test-bind",
        outcome=outcome,
    )


@pytest_twisted.ensureDeferred
async def test_a_bind_that_succeeds_is_counted_bound(smpp_bind, services):
    metrics = Metrics()
    service = BindService(
        smpp_bind(), lambda mo, s: succeed(ESME_ROK), reactor, metrics=metrics
    )
    services.append(service)

    service.startService()
    await service.whenBound()

    assert binds(metrics, "bound") == 1
    assert binds(metrics, "refused") == binds(metrics, "failed") == 0


@pytest_twisted.ensureDeferred
async def test_a_bind_the_smsc_refuses_is_counted_refused(
    smpp_simulator, smpp_bind, services
):
    smpp_simulator.refuse_status = status_code("ESME_RBINDFAIL")
    metrics = Metrics()
    service = BindService(
        smpp_bind(reconnect_initial=0.05, reconnect_max=0.05),
        lambda mo, s: succeed(ESME_ROK),
        reactor,
        metrics=metrics,
    )
    services.append(service)

    service.startService()
    await eventually(lambda: binds(metrics, "refused") >= 2)

    assert binds(metrics, "bound") == binds(metrics, "failed") == 0


@pytest_twisted.ensureDeferred
async def test_a_bind_that_cannot_connect_is_counted_failed(smpp_bind, services):
    # Nothing listens on port 1 of the loopback address.
    metrics = Metrics()
    service = BindService(
        smpp_bind(port=1, reconnect_initial=0.05, reconnect_max=0.05),
        lambda mo, s: succeed(ESME_ROK),
        reactor,
        metrics=metrics,
    )
    services.append(service)

    service.startService()
    await eventually(lambda: binds(metrics, "failed") >= 2)

    assert binds(metrics, "bound") == binds(metrics, "refused") == 0


@pytest_twisted.ensureDeferred
async def test_a_connection_given_up_at_stop_is_not_counted_failed(smpp_bind, services):
    # An SMSC whose accept queue is full: the connection neither opens nor
    # fails until the service stops and gives it up.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    metrics = Metrics()
    service = BindService(
        smpp_bind(port=full.getsockname()[1]),
        lambda mo, s: succeed(ESME_ROK),
        reactor,
        metrics=metrics,
    )
    try:
        service.startService()
        await deferLater(reactor, 0.3, lambda: None)
        await service.stopService()
    finally:
        filler.close()
        full.close()

    assert binds(metrics, "bound") == binds(metrics, "failed") == 0


# --- the intake ---------------------------------------------------------------


def intake_on(tmp_path, **spool_options) -> Intake:
    loaded = config.parse(tomllib.loads(CONFIG.format(path=tmp_path / "spool.db")))
    intake = Intake(loaded, None, reactor, metrics=Metrics())
    intake.spool = SqliteSpool(
        str(tmp_path / "spool.db"), intake.assemble, reactor, **spool_options
    )
    return intake


def message(text: str, reference: int | None = None):
    method = None if reference is None else "udh8"
    return [
        part.deliver_sm(PHONE, Address("88000"))
        for part in traffic.split(text, "gsm7", method, reference=reference or 0)
    ]


@pytest_twisted.ensureDeferred
async def test_a_refusal_past_max_pending_is_counted(tmp_path):
    intake = intake_on(tmp_path)
    await intake.spool.open()
    bind = intake.config.operators[0].binds[0]
    try:
        for text in ("one", "two", "three"):
            await intake.receive(bind, message(text)[0])
    finally:
        await intake.spool.close()

    refusals = value(
        intake.metrics, "p2a_spool_refusals_total", operator="op1", limit="max_pending"
    )
    assert refusals == 1


@pytest_twisted.ensureDeferred
async def test_a_refusal_by_a_reassembly_limit_is_counted_by_its_name(tmp_path):
    intake = intake_on(tmp_path, max_reassemblies=1)
    await intake.spool.open()
    bind = intake.config.operators[0].binds[0]
    try:
        first = message("first long message " * 12, reference=1)[0]
        second = message("second long message " * 12, reference=2)[0]
        assert await intake.receive(bind, first) == ESME_ROK
        assert await intake.receive(bind, second) == bind.busy_status
    finally:
        await intake.spool.close()

    refusals = value(
        intake.metrics,
        "p2a_spool_refusals_total",
        operator="op1",
        limit="max_reassemblies",
    )
    assert refusals == 1


@pytest_twisted.ensureDeferred
async def test_a_spool_failure_at_store_is_counted(tmp_path):
    intake = intake_on(tmp_path)
    bind = intake.config.operators[0].binds[0]

    # Never opened: every store fails.
    status = await intake.receive(bind, message("lost?")[0])

    assert status == bind.busy_status
    assert value(intake.metrics, "p2a_spool_errors_total", operation="store") == 1


@pytest_twisted.ensureDeferred
async def test_a_sweep_the_spool_fails_is_counted(tmp_path):
    loaded = config.parse(tomllib.loads(CONFIG.format(path=tmp_path / "spool.db")))
    connector = Connector(loaded, reactor)

    # The spool was never opened, so expiring orphans fails.
    await connector._expire_orphans()

    errors = value(connector.metrics, "p2a_spool_errors_total", operation="expire")
    assert errors == 1


# --- webhook posts ------------------------------------------------------------


def event(event_id: str) -> Event:
    body = {"type": "message.received", "data": {"id": event_id}}
    return Event(
        id=event_id,
        type="message.received",
        webhook="app",
        body=json.dumps(body).encode(),
        created_at=reactor.seconds(),
    )


@pytest_twisted.async_yield_fixture
async def dispatch(spool):
    started = []

    def start(url: str, timeout: float = 2.0, on=spool) -> Dispatcher:
        hook = WebhookConfig(name="app", url=url, secrets=(SECRET,), timeout=timeout)
        dispatcher = Dispatcher(on, [hook], reactor, schedule=FAST, metrics=Metrics())
        dispatcher.startService()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        if dispatcher.running:
            await dispatcher.stopService()


def attempts(dispatcher: Dispatcher, outcome: str) -> float:
    return value(
        dispatcher.metrics, "p2a_webhook_attempts_total", webhook="app", outcome=outcome
    )


def answers(dispatcher: Dispatcher, code: str) -> float:
    return value(
        dispatcher.metrics, "p2a_webhook_responses_total", webhook="app", code=code
    )


@pytest_twisted.ensureDeferred
async def test_a_503_then_a_200_count_one_retry_and_one_delivery(
    spool, receiver, dispatch
):
    receiver.script(503)
    await spool.store(event("msg_retried"))
    dispatcher = dispatch(receiver.url)

    await eventually(lambda: attempts(dispatcher, "delivered") == 1)

    assert attempts(dispatcher, "retry") == 1
    assert attempts(dispatcher, "dead") == 0
    assert (answers(dispatcher, "503"), answers(dispatcher, "200")) == (1, 1)
    count = "p2a_webhook_latency_seconds_count"
    assert value(dispatcher.metrics, count, webhook="app") == 2


@pytest_twisted.ensureDeferred
async def test_a_400_counts_a_dead_attempt_and_a_dead_letter(spool, receiver, dispatch):
    receiver.script(400)
    await spool.store(event("msg_rejected"))
    dispatcher = dispatch(receiver.url)

    await eventually(lambda: attempts(dispatcher, "dead") == 1)

    assert value(dispatcher.metrics, "p2a_dead_letters_total", webhook="app") == 1
    assert answers(dispatcher, "400") == 1
    assert attempts(dispatcher, "delivered") == attempts(dispatcher, "retry") == 0


@pytest_twisted.ensureDeferred
async def test_a_post_without_an_answer_in_time_counts_as_timeout(
    spool, receiver, dispatch
):
    receiver.script(Reply.hang())
    await spool.store(event("msg_slow"))
    dispatcher = dispatch(receiver.url, timeout=0.2)

    await eventually(lambda: attempts(dispatcher, "delivered") == 1)

    assert answers(dispatcher, "timeout") == 1
    assert attempts(dispatcher, "retry") == 1


@pytest_twisted.ensureDeferred
async def test_exhausting_the_schedule_on_refused_connections_counts_errors(
    spool, dispatch
):
    await spool.store(event("msg_nobody"))
    dispatcher = dispatch("http://127.0.0.1:1/hook")

    await eventually(lambda: attempts(dispatcher, "dead") == 1)

    assert answers(dispatcher, "error") == len(FAST)
    assert attempts(dispatcher, "retry") == len(FAST) - 1
    assert value(dispatcher.metrics, "p2a_dead_letters_total", webhook="app") == 1


@pytest_twisted.ensureDeferred
async def test_an_outcome_the_spool_cannot_record_counts_a_spool_error(
    tmp_path, receiver, dispatch
):
    failing = SqliteSpool(str(tmp_path / "failing.db"), whole_events_only, reactor)
    await failing.open()
    await failing.store(event("msg_unrecorded"))
    receiver.script(Reply.hang())
    dispatcher = dispatch(receiver.url, on=failing)
    await receiver.wait_for(1)

    await failing.close()
    receiver.release()
    await eventually(
        lambda: (
            value(dispatcher.metrics, "p2a_spool_errors_total", operation="delivered")
            == 1
        )
    )

    assert answers(dispatcher, "200") == 1
    assert attempts(dispatcher, "delivered") == 0
