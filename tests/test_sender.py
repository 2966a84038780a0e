"""
The sender: queued outbound messages go out as submit_sm over real TCP to
the SMSC simulator, from a real sqlite spool; the sender's timers (rate
limit, throttle pauses, retries) run on a `Clock` the test moves on.
"""

import json
import os
import tomllib

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, succeed

from p2a_connector.bind import BindService
from p2a_connector.config import (
    Config,
    OperatorConfig,
    OutboundConfig,
    ReassemblyConfig,
    SpoolConfig,
    parse,
)
from p2a_connector.harness import config_text
from p2a_connector.outbound import Outbound
from p2a_connector.redis_spool import RedisSpool
from p2a_connector.sender import PSSR_RESPONSE, USSR_REQUEST, Sender
from p2a_connector.service import Connector
from p2a_connector.smpp_status import status_code
from p2a_connector.sqlite_spool import SqliteSpool
from p2a_connector.token_bucket import TokenBucket

# --- the rate limit ---------------------------------------------------------


def fired_at(clock: task.Clock, deferreds: list[Deferred]) -> list[float]:
    """Move the clock from timer to timer; when each Deferred fired."""
    times: dict[int, float] = {}
    for index, d in enumerate(deferreds):
        d.addCallback(lambda _, index=index: times.setdefault(index, clock.seconds()))
    while len(times) < len(deferreds) and clock.getDelayedCalls():
        next_call = min(call.getTime() for call in clock.getDelayedCalls())
        clock.advance(next_call - clock.seconds())
    return [round(times[index], 6) for index in range(len(deferreds))]


def test_a_bucket_spaces_takes_at_its_rate():
    clock = task.Clock()
    bucket = TokenBucket(4, clock)

    times = fired_at(clock, [bucket.take() for _ in range(5)])

    assert times == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_bucket_of_rate_zero_never_waits():
    clock = task.Clock()
    bucket = TokenBucket(0, clock)

    takes = [bucket.take() for _ in range(100)]

    assert all(take.called for take in takes)


def test_a_bucket_lets_no_burst_through_after_an_idle_spell():
    clock = task.Clock()
    bucket = TokenBucket(2, clock)
    clock.advance(60)

    times = fired_at(clock, [bucket.take() for _ in range(3)])

    assert times == [60.0, 60.5, 61.0]


def test_a_paused_bucket_holds_takers_until_the_pause_ends():
    clock = task.Clock()
    bucket = TokenBucket(10, clock)
    bucket.pause(3)

    times = fired_at(clock, [bucket.take() for _ in range(2)])

    assert times == [3.0, 3.1]


# --- sending over the simulator ---------------------------------------------


class Harness:
    """A spool, binds to the simulator and a sender, its timers on a Clock."""

    def __init__(self, spool, simulator, make_bind, outbound):
        self.spool = spool
        self.simulator = simulator
        self.make_bind = make_bind
        self.outbound = outbound
        # Ahead of the real time the spool stamps queued messages with, so
        # they are due at once for the sender.
        self.clock = task.Clock()
        self.clock.advance(reactor.seconds() + 100)
        self.services: list[BindService] = []
        self.sender: Sender | None = None
        self._pump = task.LoopingCall(self.clock.advance, 0.05)

    async def bind(self, **overrides) -> BindService:
        fields = {"name": f"bind-{len(self.services)}", "submit_rate": 0}
        fields.update(overrides)
        service = BindService(
            self.make_bind(**fields), lambda mo, session: succeed(0), reactor
        )
        service.startService()
        self.services.append(service)
        if service.bind.mode != "receiver":
            await service.whenBound()
        return service

    def start(self, *, pump: bool = True, **options) -> Sender:
        """Start the sender; ``pump`` moves the clock on by itself."""
        config = Config(
            spool=SpoolConfig(),
            reassembly=ReassemblyConfig(),
            webhooks=(),
            operators=(
                OperatorConfig("test", "app", tuple(s.bind for s in self.services)),
            ),
            outbound=self.outbound,
        )
        self.sender = Sender(self.spool, self.services, config, self.clock, **options)
        self.sender.startService()
        if pump:
            self.pump()
        return self.sender

    def pump(self) -> None:
        """Move the clock on by itself, 0.05 s every 5 ms."""
        if not self._pump.running:
            self._pump.start(0.005, now=False)

    async def queue(self, text: str, **fields) -> Outbound:
        message = Outbound(
            id=fields.pop("id", "rpl_1"),
            operator="test",
            source={"address": "4477", "ton": 0, "npi": 1},
            destination={"address": "447700900001", "ton": 1, "npi": 1},
            text=text,
            webhook="app",
            created_at=self.clock.seconds(),
            in_reply_to="msg_1",
            **fields,
        )
        await self.spool.queue([message])
        self.sender.wake()
        return message

    async def state_becomes(self, outbound_id: str, state: str, wait) -> object:
        found = {}

        async def check():
            found["state"] = await self.spool.outbound(outbound_id)

        for _ in range(500):
            await check()
            if found["state"] is not None and found["state"].state == state:
                return found["state"]
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"{outbound_id} never became {state}: {found}")

    async def attempted(self, outbound_id: str):
        """The message's state once an attempt at it has failed."""
        for _ in range(500):
            state = await self.spool.outbound(outbound_id)
            if state is not None and state.attempt:
                return state
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"no attempt at {outbound_id} failed")

    async def stop(self) -> None:
        if self._pump.running:
            self._pump.stop()
        if self.sender is not None and self.sender.running:
            await self.sender.stopService()
        for service in self.services:
            if service.running:
                await service.stopService()


@pytest_twisted.async_yield_fixture(params=["sqlite", "redis"])
async def spool(request, tmp_path):
    """Each test runs on both spools: the Sender needs only the protocol."""
    if request.param == "sqlite":
        spool = SqliteSpool(str(tmp_path / "spool.db"), _no_segments, reactor)
    else:
        url = request.getfixturevalue("redis_server").url
        spool = RedisSpool(url, _no_segments, reactor, prefix=os.urandom(4).hex())
    await spool.open()
    yield spool
    await spool.close()


def _no_segments(records, complete):
    raise AssertionError("these tests store no segments")


@pytest_twisted.async_yield_fixture
async def harness(spool, smpp_simulator, smpp_bind):
    harness = Harness(
        spool,
        smpp_simulator,
        smpp_bind,
        OutboundConfig(throttle_delay=1.0, throttle_max=8.0, no_bind_delay=5.0),
    )
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_a_long_gsm_reply_goes_as_two_parts_with_a_concatenation_udh(harness):
    await harness.bind()
    harness.start()

    await harness.queue("a" * 200)
    first, second = await harness.simulator.whenSubmitted(2)

    for part, seqnum in ((first, 1), (second, 2)):
        udh = part.pdu.short_message[:6]
        assert udh[:3] == bytes((5, 0x00, 3))
        assert udh[4:] == bytes((2, seqnum))
        assert part.pdu.esm_class & 0x40
        assert part.pdu.data_coding == 0
    assert first.pdu.short_message[3] == second.pdu.short_message[3]
    assert len(first.pdu.short_message) - 6 + len(second.pdu.short_message) - 6 == 200
    state = await harness.state_becomes("rpl_1", "sent", None)
    assert state.message_ids == ("sim000001", "sim000002")


@pytest_twisted.ensureDeferred
async def test_a_reply_outside_gsm_goes_as_ucs2(harness):
    await harness.bind()
    harness.start()

    await harness.queue("Привет ✓")
    [submitted] = await harness.simulator.whenSubmitted(1)

    assert submitted.pdu.data_coding == 8
    assert submitted.pdu.short_message.decode("utf-16-be") == "Привет ✓"


@pytest_twisted.ensureDeferred
async def test_a_reply_goes_from_the_address_written_to_and_to_the_person(harness):
    await harness.bind()
    harness.start()

    await harness.queue("thanks")
    [submitted] = await harness.simulator.whenSubmitted(1)

    assert (submitted.pdu.source.address, submitted.pdu.source.npi) == ("4477", 1)
    assert submitted.pdu.destination.address == "447700900001"
    assert (submitted.pdu.destination.ton, submitted.pdu.destination.npi) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_registered_delivery_comes_from_the_bind_when_the_reply_sets_none(
    harness,
):
    await harness.bind(registered_delivery=2)
    harness.start()

    await harness.queue("thanks")
    [submitted] = await harness.simulator.whenSubmitted(1)

    assert submitted.pdu.registered_delivery == 2


@pytest_twisted.ensureDeferred
async def test_a_throttled_reply_is_sent_once_after_the_throttle_delay(harness):
    harness.simulator.submit_statuses = [status_code("ESME_RTHROTTLED")]
    await harness.bind()
    harness.start(pump=False)
    throttled_at = harness.clock.seconds()

    await harness.queue("later please")
    state = await harness.attempted("rpl_1")
    assert state.next_at == throttled_at + 1.0
    assert harness.simulator.submits == []

    # The sender may still be looking, its timer not yet set: from here on
    # the clock moves by itself.
    harness.clock.advance(1.0)
    harness.pump()
    await harness.state_becomes("rpl_1", "sent", None)

    assert len(harness.simulator.refused) == 1
    assert len(harness.simulator.submits) == 1


@pytest_twisted.ensureDeferred
async def test_a_throttled_part_is_resent_and_the_parts_before_it_are_not(harness):
    harness.simulator.submit_statuses = [0, status_code("ESME_RMSGQFUL")]
    await harness.bind()
    harness.start()

    await harness.queue("b" * 300)
    state = await harness.state_becomes("rpl_1", "sent", None)

    references = {s.pdu.short_message[3] for s in harness.simulator.submits}
    seqnums = [s.pdu.short_message[5] for s in harness.simulator.submits]
    assert seqnums == [1, 2]
    assert len(references) == 1
    assert len(state.message_ids) == 2


@pytest_twisted.ensureDeferred
async def test_an_invalid_destination_fails_the_reply_with_a_reply_failed_event(
    harness,
):
    harness.simulator.submit_statuses = [status_code("ESME_RINVDSTADR")]
    await harness.bind()
    harness.start()

    await harness.queue("nobody there")
    state = await harness.state_becomes("rpl_1", "failed", None)

    [event] = await harness.spool.due(reactor.seconds() + 1000, 10)
    body = json.loads(event.body)
    assert event.type == "reply.failed" and event.webhook == "app"
    assert body["type"] == "reply.failed"
    data = body["data"]
    assert data["id"] == "rpl_1"
    assert data["in_reply_to"] == "msg_1"
    assert data["operator"] == "test"
    assert data["to"]["address"] == "447700900001"
    assert data["text"] == "nobody there"
    assert data["status"] == "ESME_RINVDSTADR"
    assert data["reason"].startswith("ESME_RINVDSTADR: ")
    assert (data["attempts"], data["parts_sent"]) == (1, 0)
    assert state.error == data["reason"]
    assert harness.simulator.submits == []


@pytest_twisted.ensureDeferred
async def test_a_text_needing_more_parts_than_allowed_fails_without_a_submit(harness):
    await harness.bind(max_reply_parts=2)
    harness.start()

    await harness.queue("c" * 500)
    state = await harness.state_becomes("rpl_1", "failed", None)

    assert "cannot compose the text" in state.error
    assert harness.simulator.submits == []


@pytest_twisted.ensureDeferred
async def test_a_ussd_reply_that_continues_asks_for_an_answer(harness):
    await harness.bind()
    harness.start()

    await harness.queue(
        "1 Balance\n2 Top up", ussd={"session": 7, "sequence": 3, "end": False}
    )
    [submitted] = await harness.simulator.whenSubmitted(1)

    assert submitted.ussd_service_op == USSR_REQUEST == 2
    assert submitted.its_session_info == bytes((7, 3 << 1))
    assert submitted.pdu.service_type == "USSD"


@pytest_twisted.ensureDeferred
async def test_a_ussd_reply_that_ends_sets_the_end_bit(harness):
    await harness.bind()
    harness.start()

    await harness.queue(
        "Your balance is 5", ussd={"session": 7, "sequence": 3, "end": True}
    )
    [submitted] = await harness.simulator.whenSubmitted(1)

    assert submitted.ussd_service_op == PSSR_RESPONSE == 17
    assert submitted.its_session_info == bytes((7, (3 << 1) | 1))


@pytest_twisted.ensureDeferred
async def test_an_operator_with_only_a_receiver_bind_retries_after_no_bind_delay(
    harness,
):
    await harness.bind(mode="receiver")
    harness.start(pump=False)
    queued_at = harness.clock.seconds()

    await harness.queue("no way out")
    state = await harness.attempted("rpl_1")

    assert state.state == "queued"
    assert "no bound transmitting bind" in state.error
    assert state.next_at == queued_at + 5.0
    assert harness.simulator.submits == []


@pytest_twisted.ensureDeferred
async def test_a_reply_waiting_for_its_bind_goes_as_soon_as_the_bind_is_up(harness):
    harness.simulator.refuse_status = status_code("ESME_RBINDFAIL")
    service = BindService(
        harness.make_bind(name="late", submit_rate=0, reconnect_initial=0.05),
        lambda mo, session: succeed(0),
        reactor,
    )
    service.startService()
    harness.services.append(service)
    # The sender's clock stands still: only the bind coming up can let the
    # reply go before no_bind_delay.
    harness.start(pump=False)

    await harness.queue("wait for me")
    await task.deferLater(reactor, 0.3, lambda: None)
    harness.simulator.refuse_status = None
    [submitted] = await harness.simulator.whenSubmitted(1).addTimeout(5, reactor)

    assert submitted.pdu.short_message == b"wait for me"
    state = await harness.state_becomes("rpl_1", "sent", None)
    assert state.attempt == 0


@pytest_twisted.ensureDeferred
async def test_replies_take_turns_over_the_bound_transmitting_binds(harness):
    await harness.bind(mode="transmitter")
    await harness.bind(mode="transceiver")
    harness.start()

    for n in range(4):
        await harness.queue(f"reply {n}", id=f"rpl_{n}")
    submitted = await harness.simulator.whenSubmitted(4)

    sessions = {s.session for s in submitted}
    assert len(sessions) == 2
    assert {s.bind_command for s in sessions} == {
        "bind_transmitter",
        "bind_transceiver",
    }


@pytest_twisted.ensureDeferred
async def test_a_reply_failing_past_retry_for_fails_for_good(
    spool, smpp_simulator, smpp_bind
):
    harness = Harness(
        spool,
        smpp_simulator,
        smpp_bind,
        OutboundConfig(throttle_delay=1.0, throttle_max=2.0, retry_for=3.0),
    )
    smpp_simulator.submit_statuses = [status_code("ESME_RTHROTTLED")] * 20
    try:
        await harness.bind()
        harness.start()

        await harness.queue("never")
        state = await harness.state_becomes("rpl_1", "failed", None)
    finally:
        await harness.stop()

    assert "gave up after" in state.error
    assert "ESME_RTHROTTLED" in state.error
    assert smpp_simulator.submits == []


@pytest.mark.parametrize("rate", [-1.0])
def test_a_bucket_refuses_a_negative_rate(rate):
    with pytest.raises(ValueError, match="rate must be 0 or more"):
        TokenBucket(rate, task.Clock())


# --- in the Connector ---------------------------------------------------------


def connector_config(tmp_path, smpp_simulator):
    text = config_text(
        spool=tmp_path / "connector.db",
        webhook_url="http://127.0.0.1:9/hook",
        smsc_port=smpp_simulator.listening.getHost().port,
        admin_extra="enabled = false",
    )
    return parse(tomllib.loads(text))


@pytest_twisted.ensureDeferred
async def test_the_connector_sends_a_queued_reply_over_its_bind(
    tmp_path, smpp_simulator
):
    connector = Connector(connector_config(tmp_path, smpp_simulator), reactor)
    connector.startService()
    try:
        await connector.ready
        [service] = list(connector.binds)
        await service.whenBound()
        await connector.spool.queue(
            [
                Outbound(
                    id="rpl_c",
                    operator="op1",
                    source={"address": "4477", "ton": 0, "npi": 1},
                    destination={"address": "447700900001", "ton": 1, "npi": 1},
                    text="from the connector",
                    webhook="app",
                    created_at=reactor.seconds(),
                )
            ]
        )
        connector.sender.wake()

        [submitted] = await smpp_simulator.whenSubmitted(1)
    finally:
        await connector.stopService()

    assert submitted.pdu.short_message == b"from the connector"
    assert submitted.pdu.registered_delivery == 1


@pytest_twisted.ensureDeferred
async def test_a_dispatcher_process_runs_no_sender(tmp_path, smpp_simulator):
    connector = Connector(
        connector_config(tmp_path, smpp_simulator), reactor, role="dispatcher"
    )
    connector.startService()
    try:
        await connector.ready
        running = connector.sender.running
    finally:
        await connector.stopService()

    assert not running
