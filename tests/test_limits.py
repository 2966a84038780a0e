"""
Limits against hostile or broken peers: what an SMSC's traffic can make the
connector hold is bounded, past a bound the SMSC is told to retry, and the
counts behind the bounds stay true across completion, expiry and restarts.
"""

import gc
import json
import sqlite3
import tomllib
import tracemalloc

import pytest
import pytest_twisted
from conftest import captured_logs
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from p2a_connector import config, traffic
from p2a_connector.intake import Intake
from p2a_connector.models import Address
from p2a_connector.smpp_status import ESME_ROK, status_code
from p2a_connector.spool import Reassemblies, Segment, SpoolLimit
from p2a_connector.sqlite_spool import SqliteSpool

THROTTLED = status_code("ESME_RTHROTTLED")

CONFIG = """
[limits]
max_segments = 8
max_reassemblies_per_operator = 3
max_reassemblies = 5
max_reassembly_bytes = 1048576

[[webhook]]
name = "app"
url = "http://127.0.0.1:8099/sms"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
host = "127.0.0.1"
port = 2775
system_id = "p2a"
password = "secret"
busy_status = "ESME_RTHROTTLED"
"""


def parts(reference: int, total: int, sender: str = "447700900123"):
    """The deliver_sm of a ``total``-part message, in order."""
    split = traffic.split("abcd" * total, "gsm7", "udh16", reference, size=4)
    return [
        part.deliver_sm(Address(sender, 1, 1), Address("88000"), sequence_number=n)
        for n, part in enumerate(split, start=1)
    ]


def open_spool(path, assembler, limits: config.LimitsConfig) -> SqliteSpool:
    """The spool as the service builds it."""
    return SqliteSpool(
        str(path),
        assembler,
        reactor,
        max_reassemblies=limits.max_reassemblies,
        max_reassemblies_per_operator=limits.max_reassemblies_per_operator,
        max_reassembly_bytes=limits.max_reassembly_bytes,
    )


async def make_intake(tmp_path, text: str = CONFIG) -> Intake:
    intake = Intake(config.parse(tomllib.loads(text)), None, reactor)
    intake.spool = open_spool(
        tmp_path / "spool.db", intake.assemble, intake.config.limits
    )
    await intake.spool.open()
    return intake


@pytest_twisted.async_yield_fixture
async def intake(tmp_path):
    intake = await make_intake(tmp_path)
    yield intake
    await intake.spool.close()


def bind(intake: Intake):
    return intake.config.operators[0].binds[0]


def segment_rows(spool: SqliteSpool) -> int:
    db = sqlite3.connect(spool.path)
    try:
        return db.execute("SELECT count(DISTINCT key) FROM segment").fetchone()[0]
    finally:
        db.close()


# --- the spool's bounds ----------------------------------------------------------


def assemble(records: list[dict], complete: bool) -> tuple[str, str, bytes]:
    body = json.dumps({"text": "".join(r["text"] for r in records)}).encode()
    return f"msg_{records[0]['ref']}_{complete}", "message.received", body


def stored_size(segment: Segment) -> int:
    return len(json.dumps(segment.record, separators=(",", ":")))


def segment(ref: str, seqnum: int, total: int, operator: str = "op1") -> Segment:
    return Segment(
        key=f"{operator}|{ref}|{total}",
        seqnum=seqnum,
        total=total,
        record={"ref": ref, "text": f"<{ref}.{seqnum}>"},
        webhook="app",
        received_at=reactor.seconds(),
        operator=operator,
    )


def limits(**bounds) -> config.LimitsConfig:
    return config.LimitsConfig(**bounds)


@pytest_twisted.async_yield_fixture
async def bounded(tmp_path):
    """A spool allowing 2 reassemblies per operator, 3 in all."""
    bounds = limits(max_reassemblies_per_operator=2, max_reassemblies=3)
    spool = open_spool(tmp_path / "spool.db", assemble, bounds)
    await spool.open()
    yield spool
    await spool.close()


async def refusal(d) -> SpoolLimit:
    with pytest.raises(SpoolLimit) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_past_the_bound_open_reassemblies_still_take_segments_and_complete(
    bounded,
):
    await bounded.store(segment("a", 1, 3))
    await bounded.store(segment("b", 1, 2))
    await refusal(bounded.store(segment("c", 1, 2)))

    assert (await bounded.store(segment("a", 2, 3))) is None
    completed = await bounded.store(segment("a", 3, 3))

    assert json.loads(completed.body)["text"] == "<a.1><a.2><a.3>"
    assert (await bounded.store(segment("c", 1, 2))) is None


@pytest_twisted.ensureDeferred
async def test_a_refused_segment_leaves_the_others_in_its_transaction(bounded):
    await bounded.store(segment("a", 1, 2))

    results = await gatherResults(
        [
            bounded.store(segment("b", 1, 2)),
            bounded.store(segment("c", 1, 2)).addErrback(lambda f: f.value),
            bounded.store(segment("a", 2, 2)),
        ]
    )

    assert results[0] is None
    assert isinstance(results[1], SpoolLimit)
    assert results[2] is not None
    assert bounded.commits == 2
    assert bounded.reassemblies().by_operator == {"op1": 1}
    assert segment_rows(bounded) == 1


@pytest_twisted.ensureDeferred
async def test_a_repeated_segment_is_counted_once(bounded):
    await bounded.store(segment("a", 1, 2))
    once = bounded.reassemblies()

    await bounded.store(segment("a", 1, 2))

    assert bounded.reassemblies() == once


@pytest_twisted.ensureDeferred
async def test_counts_go_down_when_a_message_completes(bounded):
    await bounded.store(segment("a", 1, 2))
    await bounded.store(segment("b", 1, 2, operator="op2"))

    await bounded.store(segment("a", 2, 2))

    held = bounded.reassemblies()
    assert (held.count, held.by_operator) == (1, {"op2": 1})
    assert held.bytes == stored_size(segment("b", 1, 2, operator="op2"))


@pytest_twisted.ensureDeferred
async def test_counts_go_down_when_a_message_expires(bounded):
    await bounded.store(segment("a", 1, 2))
    await bounded.store(segment("b", 1, 2, operator="op2"))

    expired = await bounded.expire(older_than=reactor.seconds() + 1)

    assert len(expired) == 2
    assert bounded.reassemblies() == Reassemblies()
    assert (await bounded.store(segment("c", 1, 2))) is None


@pytest_twisted.ensureDeferred
async def test_counts_survive_reopening_the_file(bounded):
    await bounded.store(segment("a", 1, 3))
    await bounded.store(segment("a", 2, 3))
    await bounded.store(segment("b", 1, 2, operator="op2"))
    before = bounded.reassemblies()
    await bounded.close()

    again = open_spool(bounded.path, assemble, limits(max_reassemblies=3))
    await again.open()

    assert again.reassemblies() == before
    assert before.count == 2 and before.by_operator == {"op1": 1, "op2": 1}
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_file_from_before_the_bounds_is_counted_by_operator(tmp_path):
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE segment (key TEXT NOT NULL, seqnum INTEGER NOT NULL,"
        " total INTEGER NOT NULL, record TEXT NOT NULL, webhook TEXT NOT NULL,"
        " received_at REAL NOT NULL, PRIMARY KEY (key, seqnum)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO segment VALUES ('k', 1, 2, ?, 'app', 0)",
        (json.dumps({"operator": "op1", "ref": "k", "text": "x"}),),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    spool = open_spool(path, assemble, limits())
    await spool.open()

    assert spool.reassemblies().by_operator == {"op1": 1}
    sibling = Segment("k", 2, 2, {"ref": "k", "text": "y"}, "app", 1.0, "op1")
    assert (await spool.store(sibling)) is not None
    assert spool.reassemblies() == Reassemblies()
    await spool.close()


# --- the intake's answers --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_reassembly_past_the_bound_is_answered_busy_and_logged(intake):
    for reference in range(3):
        assert await intake.receive(bind(intake), parts(reference, 2)[0]) == ESME_ROK

    with captured_logs() as events:
        status = await intake.receive(bind(intake), parts(3, 2)[0])

    assert status == THROTTLED
    (logged,) = [e for e in events if e.get("limit")]
    assert logged["limit"] == "max_reassemblies_per_operator"
    assert (logged["operator"], logged["bind"]) == ("op1", "op1-0")
    assert logged["sequence_number"] == 1


@pytest_twisted.ensureDeferred
async def test_past_the_bound_open_messages_still_complete_through_the_intake(intake):
    waiting = [parts(reference, 2) for reference in range(3)]
    for first, _ in waiting:
        await intake.receive(bind(intake), first)
    assert await intake.receive(bind(intake), parts(9, 2)[0]) == THROTTLED

    statuses = [await intake.receive(bind(intake), last) for _, last in waiting]

    assert statuses == [ESME_ROK] * 3
    assert len(await intake.spool.due(reactor.seconds() + 1, 10)) == 3
    assert await intake.receive(bind(intake), parts(9, 2)[0]) == ESME_ROK


@pytest_twisted.ensureDeferred
async def test_a_message_of_more_than_max_segments_parts_is_delivered_per_segment(
    intake,
):
    oversized = parts(7, 9)

    with captured_logs() as events:
        statuses = [await intake.receive(bind(intake), pdu) for pdu in oversized]

    assert statuses == [ESME_ROK] * 9
    assert intake.spool.reassemblies() == Reassemblies()
    due = await intake.spool.due(reactor.seconds() + 1, 20)
    data = [json.loads(event.body)["data"] for event in due]
    assert [d["text"] for d in data] == ["abcd"] * 9
    assert {d["parts"]["complete"] for d in data} == {False}
    assert {d["parts"]["total"] for d in data} == {9}
    assert len([e for e in events if e.get("max_segments") == 8]) == 9


@pytest_twisted.ensureDeferred
async def test_a_message_of_max_segments_parts_is_reassembled(intake):
    statuses = [await intake.receive(bind(intake), pdu) for pdu in parts(7, 8)]

    assert statuses == [ESME_ROK] * 8
    (due,) = await intake.spool.due(reactor.seconds() + 1, 20)
    assert json.loads(due.body)["data"]["text"] == "abcd" * 8


@pytest_twisted.ensureDeferred
async def test_a_flood_of_new_messages_holds_the_bound_in_flat_memory(tmp_path):
    text = CONFIG.replace("max_reassemblies_per_operator = 3", "").replace(
        "max_reassemblies = 5", "max_reassemblies = 100"
    )
    intake = await make_intake(tmp_path, text)
    window = bind(intake).window

    async def flood(references: range) -> list[int]:
        # One sender, a new reference each time, as fast as the window allows.
        statuses: list[int] = []
        for start in range(references.start, references.stop, window):
            statuses += await gatherResults(
                [
                    intake.receive(bind(intake), parts(r, 2)[0])
                    for r in range(start, min(start + window, references.stop))
                ]
            )
        return statuses

    statuses = await flood(range(5000))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    again = await flood(range(5000, 10000))
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    assert statuses.count(ESME_ROK) == 100
    assert statuses.count(THROTTLED) == 4900
    assert again == [THROTTLED] * 5000
    assert intake.spool.reassemblies().count == 100
    assert segment_rows(intake.spool) == 100
    # Nothing is kept per refusal: under 200 bytes each is noise (logging, caches).
    assert grown < 1_000_000
    await intake.spool.close()
