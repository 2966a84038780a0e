"""The intake: what each deliver_sm is answered with, against a real spool."""

import json
import tomllib

import pytest
import pytest_twisted
from conftest import captured_logs
from twisted.internet import reactor

from p2a_connector import config, traffic
from p2a_connector.intake import Intake, crockford, new_event_id
from p2a_connector.models import Address, MOPdu
from p2a_connector.smpp_status import ESME_ROK, status_code
from p2a_connector.sqlite_spool import SqliteSpool

CONFIG = """
[spool]
max_pending = 2

[[webhook]]
name = "app"
url = "http://127.0.0.1:8099/sms"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[webhook]]
name = "promo"
url = "http://127.0.0.1:8099/promo"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[route]]
match = "7*"
webhook = "promo"

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
host = "127.0.0.1"
port = 2775
system_id = "p2a"
password = "secret"
busy_status = "ESME_RTHROTTLED"
data_coding_overrides = { "0" = "latin1" }
"""


def mo(part: traffic.Part, destination: str = "88000") -> MOPdu:
    return part.deliver_sm(Address("447700900123", 1, 1), Address(destination))


@pytest_twisted.async_yield_fixture
async def intake(tmp_path):
    loaded = config.parse(tomllib.loads(CONFIG))
    intake = Intake(loaded, None, reactor)
    intake.spool = SqliteSpool(str(tmp_path / "spool.db"), intake.assemble, reactor)
    await intake.spool.open()
    yield intake
    await intake.spool.close()


def bind(intake: Intake):
    return intake.config.operators[0].binds[0]


@pytest_twisted.ensureDeferred
async def test_a_stored_message_is_answered_rok_and_is_due(intake):
    status = await intake.receive(
        bind(intake), mo(traffic.split("hi", "gsm7", None)[0])
    )

    assert status == ESME_ROK
    (due,) = await intake.spool.due(reactor.seconds() + 1, 10)
    assert json.loads(due.body)["data"]["text"] == "hi"
    assert due.webhook == "app"


@pytest_twisted.ensureDeferred
async def test_the_route_picks_the_webhook_by_destination(intake):
    part = traffic.split("promo", "gsm7", None)[0]

    await intake.receive(bind(intake), mo(part, destination="7001"))

    (due,) = await intake.spool.due(reactor.seconds() + 1, 10)
    assert due.webhook == "promo"


@pytest_twisted.ensureDeferred
async def test_two_segments_make_one_event_after_the_second(intake):
    first, second = traffic.split("two parts " * 20, "gsm7", "udh8", reference=3)

    assert await intake.receive(bind(intake), mo(first)) == ESME_ROK
    assert await intake.spool.due(reactor.seconds() + 1, 10) == []
    assert await intake.receive(bind(intake), mo(second)) == ESME_ROK

    (due,) = await intake.spool.due(reactor.seconds() + 1, 10)
    assert json.loads(due.body)["data"]["text"] == "two parts " * 20


@pytest_twisted.ensureDeferred
async def test_a_waiting_segment_counts_against_its_operator(intake):
    first, _ = traffic.split("two parts " * 20, "gsm7", "udh8", reference=3)

    await intake.receive(bind(intake), mo(first))

    assert intake.spool.reassemblies().by_operator == {"op1": 1}


@pytest_twisted.ensureDeferred
async def test_past_max_pending_the_bind_busy_status_is_answered(intake):
    part = traffic.split("x", "gsm7", None)[0]
    for _ in range(2):
        assert await intake.receive(bind(intake), mo(part)) == ESME_ROK

    status = await intake.receive(bind(intake), mo(part))

    assert status == status_code("ESME_RTHROTTLED")
    assert intake.spool.pending() == 2


@pytest_twisted.ensureDeferred
async def test_a_failed_spool_is_answered_with_the_busy_status(intake):
    await intake.spool.close()

    status = await intake.receive(bind(intake), mo(traffic.split("x", "gsm7", None)[0]))

    assert status == status_code("ESME_RTHROTTLED")


@pytest_twisted.ensureDeferred
async def test_a_udh_overrunning_the_message_gets_its_error_status(intake):
    broken = traffic.Part(b"\x09\x00\x03\x01\x02\x01ab", 0, esm_class=0x40)

    status = await intake.receive(bind(intake), mo(broken))

    assert status == status_code("ESME_RINVMSGLEN")
    assert intake.spool.pending() == 0


@pytest_twisted.ensureDeferred
async def test_the_acknowledgement_is_logged_with_the_message_id(intake):
    with captured_logs() as events:
        await intake.receive(bind(intake), mo(traffic.split("hi", "gsm7", None)[0]))

    (due,) = await intake.spool.due(reactor.seconds() + 1, 10)
    acknowledged = [e for e in events if e.get("id") == due.id]
    assert acknowledged and acknowledged[0]["bind"] == "op1-0"


@pytest.mark.parametrize("now", [0.0, 1796406570.123])
def test_event_ids_are_unique_and_sort_by_time(now):
    ids = [new_event_id(now) for _ in range(1000)] + [new_event_id(now + 1)]

    assert len(set(ids)) == len(ids)
    assert all(len(i) == 30 and i.startswith("msg_") for i in ids)
    assert max(ids[:-1]) < ids[-1]


@pytest_twisted.ensureDeferred
async def test_the_bind_data_coding_override_decides_how_text_reads(intake):
    part = traffic.Part("café".encode("latin-1"), data_coding=0)

    await intake.receive(bind(intake), mo(part))

    (due,) = await intake.spool.due(reactor.seconds() + 1, 10)
    data = json.loads(due.body)["data"]
    assert data["text"] == "café"
    assert data["encoding"] == "latin1"


def test_crockford_writes_128_bits_most_significant_first():
    assert crockford(bytes(16)) == "0" * 26
    assert crockford(b"\xff" * 16) == "7" + "Z" * 25
    assert crockford((1).to_bytes(16, "big")) == "0" * 25 + "1"
    assert crockford((32).to_bytes(16, "big")) == "0" * 24 + "10"


def test_an_event_id_starts_with_the_time_in_milliseconds():
    event_id = new_event_id(1764787770.5)

    assert event_id.startswith("msg_")
    assert event_id[4:14] == crockford((1764787770500 << 80).to_bytes(16, "big"))[:10]
