"""
What every spool backend promises, run against each of them, then what only
the Redis spool promises: several instances sharing it, Redis going away and
coming back.
"""

import itertools
import json
import os
import socket

import attrs
import pytest
import pytest_twisted
import txredisapi
from redis_server import RedisServer, available, free_ports
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from p2a_connector import conversation
from p2a_connector.outbound import Outbound, reply_id
from p2a_connector.redis_reassembly import HeldHere
from p2a_connector.redis_shards import ShardedSpool
from p2a_connector.redis_spool import RedisSpool
from p2a_connector.redis_wakeups import InTurn
from p2a_connector.spool import Event, Reassemblies, Segment, SpoolError, SpoolLimit
from p2a_connector.sqlite_spool import SqliteSpool

needs_redis = pytest.mark.skipif(
    not available(), reason="no redis-server binary on this machine"
)


@attrs.frozen
class Parsed:
    """A segment's ``parsed``: what an intake made of its record."""

    record: dict


class Assembler:
    """
    Joins the segments' text; a fresh id per message, as spools require.
    Takes a segment's `Parsed` in place of its record, as Intake.assemble
    takes the Part it made.
    """

    def __init__(self):
        self.calls: list[tuple[list, bool]] = []
        self.references: list[str] = []

    def __call__(self, given: list, complete: bool) -> tuple[str, str, bytes]:
        self.calls.append((given, complete))
        records = [each.record if isinstance(each, Parsed) else each for each in given]
        reference = records[0]["ref"]
        self.references.append(reference)
        text = "".join(record["text"] for record in records)
        body = json.dumps({"text": text, "complete": complete}).encode()
        earlier = self.references.count(reference)
        suffix = f"_{earlier}" if earlier > 1 else ""
        return f"msg_{reference}{suffix}", "message.received", body


def event(event_id: str, webhook: str = "app") -> Event:
    body = json.dumps({"data": {"id": event_id}}).encode()
    return Event(event_id, "message.received", webhook, body, reactor.seconds())


def segment(
    ref: str, seqnum: int, total: int, at: float = 0.0, operator: str = "op1"
) -> Segment:
    at = at or reactor.seconds()
    return Segment(
        key=f"{operator}|447700900001|88000|{ref}|{total}",
        conversation=conversation.conversation_key(operator, "447700900001", "88000"),
        seqnum=seqnum,
        total=total,
        record={"ref": ref, "text": f"<{ref}.{seqnum}>", "received_at": int(at)},
        webhook="app",
        received_at=at,
        operator=operator,
    )


def size(s: Segment) -> int:
    return len(json.dumps(s.record, separators=(",", ":")))


async def _tick(delay: float = 0.005) -> None:
    await deferLater(reactor, delay, lambda: None)


class Backends:
    """Makes spools of one backend that share one store, as reopening does."""

    def __init__(self, kind: str, tmp_path, request):
        self.kind = kind
        self.path = str(tmp_path / "spool.db")
        self.prefix = f"t{os.urandom(4).hex()}"
        self.url = None
        if kind == "redis":
            self.url = request.getfixturevalue("redis_server").url
        if kind == "cluster":
            self.cluster = request.getfixturevalue("redis_cluster")
        self.opened: list = []

    def make(self, assembler=None, **options):
        assembler = assembler or Assembler()
        if self.kind == "sqlite":
            spool = SqliteSpool(self.path, assembler, reactor, **options)
        elif self.kind == "cluster":
            spool = ShardedSpool(
                self.cluster.seeds,
                self.cluster.url,
                assembler,
                reactor,
                prefix=self.prefix,
                **{"shards": 4, **options},
            )
        else:
            spool = RedisSpool(
                self.url, assembler, reactor, prefix=self.prefix, **options
            )
        self.opened.append(spool)
        return spool

    async def open(self, assembler=None, **options):
        spool = self.make(assembler, **options)
        await spool.open()
        return spool


@pytest_twisted.async_yield_fixture(params=["sqlite", "redis", "cluster"])
async def backend(request, tmp_path):
    backends = Backends(request.param, tmp_path, request)
    yield backends
    for spool in backends.opened:
        await spool.close()


@pytest.fixture
def assembler():
    return Assembler()


@pytest_twisted.async_yield_fixture
async def spool(backend, assembler):
    yield await backend.open(assembler)


async def reopened(backend, spool, assembler=None):
    await spool.close()
    return await backend.open(assembler)


# --- durability ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_fires_with_the_event_once_it_is_kept(spool):
    stored = await spool.store(event("msg_1"))

    assert stored.id == "msg_1"
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_a_stored_event_survives_reopening(backend, spool):
    stored = await spool.store(event("msg_1"))

    again = await reopened(backend, spool)
    due = await again.due(reactor.seconds(), 10)

    assert [e.id for e in due] == ["msg_1"]
    assert due[0].body == stored.body
    assert again.pending() == 1


@pytest_twisted.ensureDeferred
async def test_a_repeated_event_is_stored_once(spool):
    assert (await spool.store(event("msg_1"))).id == "msg_1"
    assert await spool.store(event("msg_1")) is None
    assert spool.pending() == 1


# --- reassembly ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_completion_yields_one_event_from_the_records_in_order(spool, assembler):
    results = [
        await spool.store(segment("r1", 3, 3)),
        await spool.store(segment("r1", 1, 3)),
        await spool.store(segment("r1", 2, 3)),
    ]

    assert results[:2] == [None, None]
    assert results[2].id == "msg_r1"
    assert json.loads(results[2].body) == {
        "text": "<r1.1><r1.2><r1.3>",
        "complete": True,
    }
    assert len(assembler.calls) == 1
    assert spool.pending() == 1
    assert spool.reassemblies() == Reassemblies()


@pytest_twisted.ensureDeferred
async def test_a_repeated_segment_is_ignored(spool, assembler):
    await spool.store(segment("r1", 1, 2))
    assert await spool.store(segment("r1", 1, 2)) is None

    completed = await spool.store(segment("r1", 2, 2))

    assert json.loads(completed.body)["text"] == "<r1.1><r1.2>"
    assert len(assembler.calls[0][0]) == 2


@pytest_twisted.ensureDeferred
async def test_a_segment_of_a_completed_message_is_ignored(spool, assembler):
    await spool.store(segment("r1", 1, 2))
    await spool.store(segment("r1", 2, 2))

    assert await spool.store(segment("r1", 2, 2)) is None
    assert await spool.store(segment("r1", 1, 2)) is None
    assert await spool.expire(reactor.seconds() + 3600) == []
    assert len(assembler.calls) == 1
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_after_completed_ttl_the_same_key_starts_a_new_message(backend):
    spool = await backend.open(completed_ttl=0.0)
    await spool.store(segment("r1", 1, 2))
    await spool.store(segment("r1", 2, 2))
    await _tick()

    await spool.store(segment("r1", 1, 2))

    assert [e.id for e in await spool.expire(reactor.seconds() + 1)] == ["msg_r1_2"]


@pytest_twisted.ensureDeferred
async def test_an_orphan_expires_as_an_incomplete_event(spool, assembler):
    await spool.store(segment("r1", 1, 3, at=1000.0))
    await spool.store(segment("r1", 3, 3, at=1500.0))

    expired = await spool.expire(older_than=1001.0)

    assert [e.id for e in expired] == ["msg_r1"]
    assert json.loads(expired[0].body) == {
        "text": "<r1.1><r1.3>",
        "complete": False,
    }
    assert spool.pending() == 1
    assert spool.reassemblies() == Reassemblies()
    assert await spool.expire(older_than=reactor.seconds()) == []


@pytest_twisted.ensureDeferred
async def test_expire_leaves_younger_messages_alone(spool):
    await spool.store(segment("r1", 1, 2, at=2000.0))

    assert await spool.expire(older_than=2000.0) == []
    assert (await spool.store(segment("r1", 2, 2))).id == "msg_r1"


@pytest_twisted.ensureDeferred
async def test_a_late_sibling_of_an_expired_message_is_not_dropped(spool):
    await spool.store(segment("r1", 1, 2, at=1000.0))
    await spool.expire(older_than=1001.0)

    await spool.store(segment("r1", 2, 2, at=1002.0))
    late = await spool.expire(older_than=1003.0)

    assert json.loads(late[0].body) == {"text": "<r1.2>", "complete": False}


@pytest_twisted.ensureDeferred
async def test_open_segments_resume_after_reopening(backend, spool):
    await spool.store(segment("r1", 1, 2))
    await spool.store(event("msg_single"))

    again = await reopened(backend, spool)
    completed = await again.store(segment("r1", 2, 2))

    assert json.loads(completed.body)["text"] == "<r1.1><r1.2>"
    assert again.pending() == 2


# --- the delivery queue ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_due_lists_events_waiting_longest_first(spool):
    for n in range(3):
        await spool.store(event(f"msg_{n}"))

    due = await spool.due(reactor.seconds(), 10)

    assert [e.id for e in due] == ["msg_0", "msg_1", "msg_2"]
    assert [e.attempt for e in due] == [0, 0, 0]


@pytest_twisted.ensureDeferred
async def test_due_respects_limit_exclude_and_webhook(spool):
    for name in ("msg_a1", "msg_a2", "msg_a3"):
        await spool.store(event(name, webhook="a"))
    await spool.store(event("msg_b1", webhook="b"))
    now = reactor.seconds()

    assert [e.id for e in await spool.due(now, 1, webhook="a")] == ["msg_a1"]
    assert [e.id for e in await spool.due(now, 2, exclude={"msg_a1"}, webhook="a")] == [
        "msg_a2",
        "msg_a3",
    ]
    assert [e.id for e in await spool.due(now, 10, webhook="b")] == ["msg_b1"]


@pytest_twisted.ensureDeferred
async def test_due_hands_out_again_what_was_not_acknowledged(spool):
    await spool.store(event("msg_1"))
    now = reactor.seconds()

    first = await spool.due(now, 10)
    second = await spool.due(now, 10)

    assert [e.id for e in first] == [e.id for e in second] == ["msg_1"]


@pytest_twisted.ensureDeferred
async def test_next_due_is_the_earliest_attempt_time(spool):
    assert await spool.next_due() is None
    await spool.store(event("msg_1"))
    await spool.store(event("msg_2"))
    now = reactor.seconds()
    await spool.retry("msg_1", 1, now + 50, "HTTP 503")
    await spool.retry("msg_2", 1, now + 20, "HTTP 503")

    assert await spool.next_due() == now + 20
    assert await spool.next_due(exclude={"msg_2"}) == now + 50
    assert await spool.next_due(webhook="other") is None


@pytest_twisted.ensureDeferred
async def test_retry_postpones_an_event_and_counts_the_attempt(spool):
    await spool.store(event("msg_1"))
    now = reactor.seconds()
    await spool.due(now, 10)

    await spool.retry("msg_1", 1, now + 100, "HTTP 503")

    assert await spool.due(now, 10) == []
    [later] = await spool.due(now + 100, 10)
    assert (later.id, later.attempt) == ("msg_1", 1)
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_delivered_forgets_the_event(spool):
    await spool.store(event("msg_1"))
    await spool.due(reactor.seconds(), 10)

    await spool.delivered("msg_1")

    assert spool.pending() == 0
    assert await spool.due(reactor.seconds(), 10) == []
    assert await spool.next_due() is None


@pytest_twisted.ensureDeferred
async def test_dead_moves_the_event_to_the_dead_letters(spool):
    await spool.store(event("msg_1"))

    await spool.dead("msg_1", 3, "HTTP 400")

    assert spool.pending() == 0
    assert await spool.due(reactor.seconds(), 10) == []
    [letter] = await spool.dead_letters()
    assert (letter["id"], letter["webhook"], letter["type"]) == (
        "msg_1",
        "app",
        "message.received",
    )
    assert (letter["reason"], letter["attempts"]) == ("HTTP 400", 3)
    assert letter["failed_at"] >= letter["created_at"]


@pytest_twisted.ensureDeferred
async def test_replay_makes_dead_letters_due_now_from_attempt_zero(spool):
    for n in range(3):
        await spool.store(event(f"msg_{n}"))
        await spool.retry(f"msg_{n}", 2, reactor.seconds() + 10, "HTTP 503")
        await spool.dead(f"msg_{n}", 2, "HTTP 400")

    assert await spool.replay(["msg_1", "msg_unknown"]) == 1
    assert spool.pending() == 1
    [again] = await spool.due(reactor.seconds(), 10)
    assert (again.id, again.attempt) == ("msg_1", 0)

    assert await spool.replay(None) == 2
    assert spool.pending() == 3
    assert await spool.dead_letters() == []


@pytest_twisted.ensureDeferred
async def test_purge_deletes_dead_letters_only(spool):
    for n in range(3):
        await spool.store(event(f"msg_{n}"))
    await spool.dead("msg_0", 1, "HTTP 400")
    await spool.dead("msg_1", 1, "HTTP 400")

    assert await spool.purge(["msg_0", "msg_2"]) == 1
    assert [d["id"] for d in await spool.dead_letters()] == ["msg_1"]
    assert await spool.purge(None) == 1
    assert await spool.dead_letters() == []
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_pending_counts_survive_reopening(backend, spool):
    await gatherResults([spool.store(event(f"msg_{n}")) for n in range(3)])
    await spool.dead("msg_0", 1, "HTTP 400")

    again = await reopened(backend, spool)

    assert again.pending() == 2


# --- trail ------------------------------------------------------------------------


def steps(trail: list[dict]) -> list[str]:
    return [s["step"] for s in trail]


@pytest_twisted.ensureDeferred
async def test_the_trail_follows_an_event_from_receipt_to_delivery(spool):
    received = {"at": reactor.seconds() - 1, "step": "received", "bind": "smsc-a"}
    e = event("msg_1")
    await spool.store(Event(e.id, e.type, e.webhook, e.body, e.created_at, (received,)))
    await spool.retry("msg_1", 1, reactor.seconds() + 5, "HTTP 503", {"status": 503})
    await spool.delivered("msg_1", {"attempt": 2, "status": 200})

    trail = await spool.trail("msg_1")

    assert steps(trail) == ["received", "stored", "attempt_failed", "delivered"]
    assert trail[0]["bind"] == "smsc-a"
    assert trail[1]["webhook"] == "app"
    assert (trail[2]["attempt"], trail[2]["status"]) == (1, 503)
    assert trail[2]["error"] == "HTTP 503"
    assert (trail[3]["attempt"], trail[3]["status"]) == (2, 200)
    assert [s["at"] for s in trail] == sorted(s["at"] for s in trail)


@pytest_twisted.ensureDeferred
async def test_an_assembled_event_has_a_received_step_per_segment(spool, assembler):
    await spool.store(segment("r1", 2, 2))
    event_ = await spool.store(segment("r1", 1, 2))

    trail = await spool.trail(event_.id)

    assert steps(trail) == ["received", "received", "stored"]


@pytest_twisted.ensureDeferred
async def test_an_expired_event_says_its_reassembly_timed_out(spool, assembler):
    await spool.store(segment("r1", 1, 3, at=reactor.seconds() - 100))

    [expired] = await spool.expire(reactor.seconds() - 50)

    trail = await spool.trail(expired.id)
    assert steps(trail) == ["received", "reassembly_timed_out", "stored"]


@pytest_twisted.ensureDeferred
async def test_dead_letter_replay_and_purge_are_in_the_trail(spool):
    await spool.store(event("msg_1"))
    await spool.dead("msg_1", 1, "HTTP 400", {"status": 400})
    await spool.replay(None)
    await spool.dead("msg_1", 2, "HTTP 400")
    await spool.purge(["msg_1"])

    trail = await spool.trail("msg_1")

    assert steps(trail) == [
        "stored",
        "dead_lettered",
        "replayed",
        "dead_lettered",
        "purged",
    ]
    assert trail[1]["reason"] == "HTTP 400"


@pytest_twisted.ensureDeferred
async def test_an_unknown_event_has_an_empty_trail(spool):
    assert await spool.trail("msg_unknown") == []


@pytest_twisted.ensureDeferred
async def test_a_spool_without_trail_keeps_none(backend):
    spool = await backend.open(trail_keep=None)
    await spool.store(event("msg_1"))
    await spool.delivered("msg_1")

    assert await spool.trail("msg_1") == []


@pytest_twisted.ensureDeferred
async def test_dead_letter_count_counts_dead_letters(spool):
    for n in range(3):
        await spool.store(event(f"msg_{n}"))
    await spool.dead("msg_0", 1, "HTTP 400")
    await spool.dead("msg_2", 1, "HTTP 400")

    assert await spool.dead_letter_count() == 2


# --- limits ----------------------------------------------------------------------


def bounded(backend, **bounds):
    options = {"max_reassemblies_per_operator": 2, "max_reassemblies": 3}
    options.update(bounds)
    return backend.open(**exact(backend, options))


def exact(backend, options):
    """
    Options for a spool that enforces the bounds exactly: a Redis Cluster
    spool shares each bound out between its shards (test_redis_cluster.py),
    and enforces it whole with one shard.
    """
    return {**options, "shards": 1} if backend.kind == "cluster" else options


async def refusal(d) -> SpoolLimit:
    with pytest.raises(SpoolLimit) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_past_the_per_operator_bound_a_new_reassembly_is_refused(backend):
    spool = await bounded(backend)
    await spool.store(segment("a", 1, 2))
    await spool.store(segment("b", 1, 2))

    refused = await refusal(spool.store(segment("c", 1, 2)))

    assert (refused.limit, refused.bound, refused.operator) == (
        "max_reassemblies_per_operator",
        2,
        "op1",
    )
    assert spool.reassemblies().by_operator == {"op1": 2}
    assert await spool.store(segment("d", 1, 2, operator="op2")) is None


@pytest_twisted.ensureDeferred
async def test_past_the_total_bound_a_new_reassembly_is_refused(backend):
    spool = await bounded(backend)
    for ref, operator in [("a", "op1"), ("b", "op1"), ("c", "op2")]:
        await spool.store(segment(ref, 1, 2, operator=operator))

    refused = await refusal(spool.store(segment("d", 1, 2, operator="op3")))

    assert (refused.limit, refused.bound) == ("max_reassemblies", 3)
    assert spool.reassemblies().count == 3


@pytest_twisted.ensureDeferred
async def test_past_the_bound_open_reassemblies_still_complete(backend):
    spool = await bounded(backend)
    await spool.store(segment("a", 1, 3))
    await spool.store(segment("b", 1, 2))
    await refusal(spool.store(segment("c", 1, 2)))

    assert await spool.store(segment("a", 2, 3)) is None
    completed = await spool.store(segment("a", 3, 3))

    assert json.loads(completed.body)["text"] == "<a.1><a.2><a.3>"
    assert await spool.store(segment("c", 1, 2)) is None


@pytest_twisted.ensureDeferred
async def test_past_the_byte_bound_a_segment_is_refused_unless_it_completes(
    backend,
):
    record_bytes = size(segment("a", 1, 3))
    spool = await backend.open(
        **exact(backend, {"max_reassembly_bytes": 2 * record_bytes})
    )
    await spool.store(segment("a", 1, 3))
    await spool.store(segment("b", 1, 2))

    refused = await refusal(spool.store(segment("a", 2, 3)))
    completed = await spool.store(segment("b", 2, 2))

    assert (refused.limit, refused.bound) == ("max_reassembly_bytes", 2 * record_bytes)
    assert completed is not None
    assert spool.reassemblies() == Reassemblies(1, record_bytes, {"op1": 1})


@pytest_twisted.ensureDeferred
async def test_counts_go_down_when_messages_complete_and_expire(backend):
    spool = await bounded(backend)
    await spool.store(segment("a", 1, 2))
    await spool.store(segment("b", 1, 2, operator="op2"))
    await spool.store(segment("a", 1, 2))

    await spool.store(segment("a", 2, 2))
    held = spool.reassemblies()
    assert (held.count, held.by_operator) == (1, {"op2": 1})
    assert held.bytes == size(segment("b", 1, 2, operator="op2"))

    await spool.expire(older_than=reactor.seconds() + 1)
    assert spool.reassemblies() == Reassemblies()


@pytest_twisted.ensureDeferred
async def test_counts_survive_reopening(backend):
    spool = await bounded(backend)
    await spool.store(segment("a", 1, 3))
    await spool.store(segment("a", 2, 3))
    await spool.store(segment("b", 1, 2, operator="op2"))
    before = spool.reassemblies()
    await spool.close()

    again = await bounded(backend)

    assert again.reassemblies() == before
    assert (before.count, before.by_operator) == (2, {"op1": 1, "op2": 1})


# --- only the Redis spool: several instances, Redis going away ---------------------


@pytest_twisted.async_yield_fixture
async def instances(redis_server):
    """Two Redis spools of two instances, sharing one prefix."""
    prefix = f"t{os.urandom(4).hex()}"
    pair = [
        RedisSpool(redis_server.url, Assembler(), reactor, prefix=prefix, **options)
        for options in ({"claim_idle": 0.2}, {"claim_idle": 0.2})
    ]
    for spool in pair:
        await spool.open()
    yield pair
    for spool in pair:
        await spool.close()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_two_instances_each_given_half_the_segments_make_one_event(instances):
    first, second = instances
    total = 6
    stores = []
    for seqnum in range(1, total + 1):
        spool = first if seqnum % 2 else second
        stores.append(spool.store(segment("r1", seqnum, total)))
    # The SMSC resends the last segment through the other instance's bind.
    stores.append(first.store(segment("r1", total, total)))

    results = await gatherResults(stores)

    made = [result for result in results if result is not None]
    assert len(made) == 1
    assert json.loads(made[0].body)["text"] == "".join(
        f"<r1.{n}>" for n in range(1, total + 1)
    )
    due = await second.due(reactor.seconds(), 10)
    assert [e.id for e in due] == [made[0].id]
    await first.expire(older_than=0.0)
    assert first.reassemblies() == Reassemblies()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_copy_redis_did_not_keep_is_not_assembled_into_the_message(instances):
    first, second = instances
    await first.store(segment("r1", 1, 2))
    copy = attrs.evolve(
        segment("r1", 1, 2), record={"ref": "r1", "text": "<copy>", "received_at": 0}
    )

    # The second instance holds both parts of the message itself, but Redis
    # kept the first instance's first part, not this copy.
    results = await gatherResults(
        [second.store(copy), second.store(segment("r1", 2, 2))]
    )

    assert results[0] is None
    assert json.loads(results[1].body)["text"] == "<r1.1><r1.2>"
    assert [e.id for e in await first.due(reactor.seconds(), 10)] == [results[1].id]


@needs_redis
@pytest_twisted.ensureDeferred
async def test_segments_assembled_where_they_came_are_given_as_parsed(redis_server):
    """
    A message whose parts all came through one instance is assembled from
    the segments' ``parsed``; one whose parts came through two, from the
    records Redis kept.  Both make the same text.
    """
    prefix = f"t{os.urandom(4).hex()}"
    assemblers = [Assembler(), Assembler()]
    first, second = [
        RedisSpool(redis_server.url, each, reactor, prefix=prefix)
        for each in assemblers
    ]
    await first.open()
    await second.open()
    try:

        def parsed(ref: str, seqnum: int) -> Segment:
            part = segment(ref, seqnum, 2)
            return attrs.evolve(part, parsed=Parsed(part.record))

        await first.store(parsed("r1", 1))
        here = await first.store(parsed("r1", 2))
        await first.store(parsed("r2", 1))
        apart = await second.store(parsed("r2", 2))
    finally:
        await first.close()
        await second.close()

    assert json.loads(here.body)["text"] == "<r1.1><r1.2>"
    assert json.loads(apart.body)["text"] == "<r2.1><r2.2>"
    ((given_here, _),) = assemblers[0].calls
    ((given_apart, _),) = assemblers[1].calls
    assert given_here == [Parsed(segment("r1", n, 2).record) for n in (1, 2)]
    assert all(type(each) is dict for each in given_apart)


def test_the_segments_a_spool_remembers_are_bounded_and_forgotten_when_complete():
    held = HeldHere(most=2)
    for ref in ("r1", "r2", "r3"):
        assert held.add(segment(ref, 1, 2), nonce=f"n-{ref}", record="{}") is None

    # r1, the oldest, was forgotten: its second part cannot be assembled here.
    assert held.add(segment("r1", 2, 2), nonce="n", record="{}") is None
    siblings = held.add(segment("r3", 2, 2), nonce="n", record="{}")
    held.completed(segment("r3", 2, 2))

    assert [(seqnum, nonce, record) for seqnum, nonce, record, _ in siblings] == [
        (1, "n-r3", "{}"),
        (2, "n", "{}"),
    ]
    assert [kept.seqnum for *_, kept in siblings] == [1, 2]
    assert len(held) == 1


@needs_redis
@pytest_twisted.ensureDeferred
async def test_two_instances_completing_at_once_make_one_event(instances):
    first, second = instances
    await first.store(segment("r1", 1, 2))

    results = await gatherResults(
        [first.store(segment("r1", 2, 2)), second.store(segment("r1", 2, 2))]
    )

    assert len([r for r in results if r is not None]) == 1
    await first.expire(older_than=0.0)
    assert first.pending() == 1


@needs_redis
@pytest_twisted.ensureDeferred
async def test_an_event_a_dead_instance_took_goes_to_another_after_claim_idle(
    instances,
):
    first, second = instances
    await first.store(event("msg_1"))
    [taken] = await first.due(reactor.seconds(), 10)

    assert await second.due(reactor.seconds(), 10) == []
    assert await second.next_due() <= reactor.seconds() + 0.2
    await _tick(0.3)
    [claimed] = await second.due(reactor.seconds(), 10)
    await second.delivered(claimed.id)

    assert claimed.id == taken.id == "msg_1"
    assert claimed.body == taken.body
    assert second.pending() == 0
    assert await first.due(reactor.seconds(), 10) == []


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_dead_instances_events_of_every_webhook_are_claimed_at_once(
    instances,
):
    first, second = instances
    await first.store(event("msg_a", webhook="a"))
    await first.store(event("msg_b", webhook="b"))
    await first.due(reactor.seconds(), 10, webhook="a")
    await first.due(reactor.seconds(), 10, webhook="b")
    await _tick(0.3)

    # One webhook's look for idle entries does not use up the other's.
    now = reactor.seconds()
    claimed_a = await second.due(now, 10, webhook="a")
    claimed_b = await second.due(now, 10, webhook="b")

    assert [e.id for e in claimed_a + claimed_b] == ["msg_a", "msg_b"]


@pytest.fixture
def own_redis(tmp_path):
    if not available():
        pytest.skip("no redis-server binary on this machine")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def _replicating(master: RedisServer, timeout: float = 20.0) -> None:
    """
    Once the master counts its replica online, its first sync over: WAIT
    counts it from then.
    """
    connection = await txredisapi.Connection("127.0.0.1", master.port, reconnect=False)
    try:
        waited = 0.0
        while waited < timeout:
            info = await connection.execute_command("INFO", "replication")
            text = info.decode() if isinstance(info, bytes) else info
            if "state=online" in text:
                return
            await _tick(0.05)
            waited += 0.05
        raise AssertionError(f"the replica did not sync within {timeout} s:\n{text}")
    finally:
        await connection.disconnect()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_with_wait_replicas_a_store_fires_once_the_replica_has_it(
    own_redis, tmp_path
):
    master = await txredisapi.Connection("127.0.0.1", own_redis.port, reconnect=False)
    # Redis waits 5 s for more replicas before a first sync, by default.
    await master.execute_command("CONFIG", "SET", "repl-diskless-sync-delay", "0")
    await master.disconnect()
    replica = RedisServer(tmp_path / "replica", replica_of=own_redis.port)
    replica.start()
    try:
        await _replicating(own_redis)
        spool = RedisSpool(
            own_redis.url,
            Assembler(),
            reactor,
            prefix="w",
            wait_replicas=1,
            wait_timeout=0.9,
        )
        await spool.open()

        assert await spool.store(event("msg_1")) is not None
        await spool.close()
        # Read the replica directly: a spool would try to write to it.
        connection = await txredisapi.Connection(
            "127.0.0.1", replica.port, reconnect=False
        )
        state = await connection.hget("{w}:ev:msg_1", "state")
        await connection.disconnect()
        assert state in ("pending", b"pending")
    finally:
        # Killed, not stopped: a replica still writing its first AOF refuses
        # SIGTERM, and its data is not needed.
        replica.kill()


@needs_redis
@pytest.mark.parametrize(
    "item", [event("msg_1"), segment("r1", 1, 2)], ids=["event", "segment"]
)
@pytest_twisted.ensureDeferred
async def test_with_wait_replicas_and_no_replica_a_store_fails_for_a_retry(
    own_redis, item
):
    spool = RedisSpool(
        own_redis.url, Assembler(), reactor, wait_replicas=1, wait_timeout=0.1
    )
    await spool.open()

    with pytest.raises(SpoolError, match="0 of 1 replicas"):
        await spool.store(item)
    await spool.close()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_at_maxmemory_redis_refuses_stores_and_still_records_outcomes(
    own_redis,
):
    spool = RedisSpool(own_redis.url, Assembler(), reactor)
    await spool.open()
    for n in range(4):
        await spool.store(event(f"msg_{n}"))
    first, second, third, _ = await spool.due(reactor.seconds(), 10)
    redis = await txredisapi.Connection("127.0.0.1", own_redis.port, reconnect=False)
    try:
        memory = await redis.execute_command("INFO", "memory")
        used = int(memory.split("used_memory:")[1].split()[0])
        await redis.execute_command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await redis.execute_command("CONFIG", "SET", "maxmemory", used - 4096)

        with pytest.raises(SpoolError, match="OOM"):
            await spool.store(event("msg_new"))
        await spool.delivered(first.id)
        await spool.retry(second.id, 1, reactor.seconds() + 60, "HTTP 503")
        await spool.dead(third.id, 1, "HTTP 400")
    finally:
        await redis.execute_command("CONFIG", "SET", "maxmemory", 0)
        await redis.disconnect()
    left = await spool.due(reactor.seconds(), 10)
    letters = await spool.dead_letters()
    await spool.close()

    assert spool.pending() == 2
    assert [e.id for e in left] == ["msg_3"]
    assert [letter["id"] for letter in letters] == [third.id]


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_stopped_fails_a_store_with_spool_error_quickly(own_redis):
    spool = RedisSpool(own_redis.url, Assembler(), reactor)
    await spool.open()
    own_redis.stop()
    started = reactor.seconds()

    with pytest.raises(SpoolError, match="did not answer"):
        await spool.store(event("msg_1"))
    with pytest.raises(SpoolError):
        await spool.store(segment("r1", 1, 2))

    assert reactor.seconds() - started < 4.0
    await spool.close()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_unreachable_redis_fails_open_with_spool_error(tmp_path):
    idle = RedisServer(tmp_path / "never-started")
    spool = RedisSpool(idle.url, Assembler(), reactor)

    with pytest.raises(SpoolError, match="did not answer"):
        await spool.open()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_after_redis_restarts_events_are_kept_and_stores_work_again(
    own_redis,
):
    spool = RedisSpool(own_redis.url, Assembler(), reactor)
    await spool.open()
    await spool.store(event("msg_before"))
    await spool.store(segment("r1", 1, 2))
    own_redis.stop()
    with pytest.raises(SpoolError):
        await spool.store(event("msg_during"))

    own_redis.start()
    for _ in range(50):
        try:
            stored = await spool.store(event("msg_after"))
            break
        except SpoolError:
            await _tick(0.1)
    completed = await spool.store(segment("r1", 2, 2))
    due = await spool.due(reactor.seconds(), 10)

    assert stored.id == "msg_after"
    assert completed.id == "msg_r1"
    assert {e.id for e in due} == {"msg_before", "msg_after", "msg_r1"}
    assert spool.pending() == 3
    await spool.close()


# --- wake-ups between processes ----------------------------------------------


async def _woken(names: list[str], count: int, timeout: float = 10.0) -> None:
    waited = 0.0
    while len(names) < count and waited < timeout:
        await _tick(0.02)
        waited += 0.02


@pytest_twisted.ensureDeferred
async def test_a_watching_spool_is_woken_by_what_another_stores(backend):
    """
    A watcher hears which webhooks another process stored events for: a
    message on its own, one assembled from segments, a dead letter replayed.
    The sqlite spool serves one process and has no one else to hear.
    """
    storing = await backend.open()
    watching = await backend.open()
    woken: list[str] = []
    watching.watch(woken.append)
    if backend.kind == "sqlite":
        await storing.store(event("msg_alone"))
        await _tick(0.1)
        assert woken == []
        return
    # The subscription is made once connected; wait for it, by a wake-up.
    await woken_by_a_store(storing, woken)
    woken.clear()

    await storing.store(event("msg_alone"))
    await storing.store(event("msg_elsewhere", webhook="other"))
    await _woken(woken, 2)
    assert sorted(woken) == ["app", "other"]

    await storing.store(segment("r1", 1, 2))
    assert await storing.store(segment("r1", 2, 2)) is not None
    await _woken(woken, 3)
    assert woken[2:] == ["app"]

    (due,) = [
        e for e in await storing.due(reactor.seconds(), 10) if e.id == "msg_alone"
    ]
    await storing.dead(due.id, 1, "gone")
    await storing.replay([due.id])
    await _woken(woken, 4)
    assert woken[3:] == ["app"]


_probes = itertools.count()


async def woken_by_a_store(storing, woken: list[str], attempts: int = 100) -> None:
    """
    Store probes, each a new event, until one wakes the watcher (Redis may
    be coming back, or failing over).
    """
    for _ in range(attempts):
        try:
            await storing.store(event(f"msg_probe{next(_probes)}"))
        except SpoolError:
            await _tick(0.1)
            continue
        await _woken(woken, 1, timeout=0.1)
        if woken:
            return
    raise AssertionError("the watcher was never woken")


@pytest_twisted.ensureDeferred
async def test_in_turn_connects_through_the_first_endpoint_that_answers():
    """What a cluster's wake-up subscription connects through: a node that
    refuses is passed over, the one that answered is tried first next time,
    and when none answers the last refusal is the failure."""
    down, later_up, never_up = free_ports(3)
    up = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    up_port = up.getHost().port
    seeds = InTurn(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port) for port in (later_up, up_port)
    )
    nowhere = InTurn(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port) for port in (down, never_up)
    )
    ends = []

    async def connect() -> None:
        protocol = await seeds.connect(Factory.forProtocol(Protocol))
        ends.append(protocol.transport.getPeer().port)
        protocol.transport.abortConnection()

    try:
        await connect()
        second = reactor.listenTCP(
            later_up, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        await connect()
    finally:
        await up.stopListening()
    try:
        await connect()
        with pytest.raises(ConnectionRefusedError):
            await nowhere.connect(Factory.forProtocol(Protocol))
    finally:
        await second.stopListening()

    assert ends == [up_port, up_port, later_up]


@pytest_twisted.ensureDeferred
async def test_in_turn_cancelled_while_connecting_tries_no_further():
    """A connection attempt given up (the spool closing while a node does
    not answer) is not carried on to the next endpoint."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    # The one connection its accept queue holds: the next SYNs are dropped.
    filler = socket.create_connection(full.getsockname())
    made: list[Protocol] = []

    class Made(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    up = reactor.listenTCP(0, Factory.forProtocol(Made), interface="127.0.0.1")
    seeds = InTurn(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        for port in (full.getsockname()[1], up.getHost().port)
    )
    try:
        connecting = seeds.connect(Factory.forProtocol(Protocol))
        await _tick(0.2)
        connecting.cancel()
        with pytest.raises(ConnectingCancelledError):
            await connecting
        await _tick(0.2)
    finally:
        for protocol in made:
            protocol.transport.abortConnection()
        await up.stopListening()
        filler.close()
        full.close()

    assert made == []


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_watcher_subscribes_again_after_redis_restarts(own_redis):
    storing = RedisSpool(own_redis.url, Assembler(), reactor)
    watching = RedisSpool(own_redis.url, Assembler(), reactor)
    await storing.open()
    await watching.open()
    woken: list[str] = []
    watching.watch(woken.append)
    try:
        await woken_by_a_store(storing, woken)
        own_redis.stop()
        own_redis.start()
        woken.clear()
        await woken_by_a_store(storing, woken)
    finally:
        await storing.close()
        await watching.close()

    assert set(woken) == {"app"}


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_user_without_the_channel_still_stores_and_is_not_woken(own_redis):
    """
    Under a Redis ACL that grants the keys but not the wake-up channel, the
    scripts' PUBLISH is refused: the stores must still succeed (the
    dispatchers then find the events at their poll).
    """
    admin = await txredisapi.Connection("127.0.0.1", own_redis.port, reconnect=False)
    try:
        await admin.execute_command(
            "ACL",
            "SETUSER",
            "keysonly",
            "on",
            ">secret",
            "~*",
            "+@all",
            "resetchannels",
        )
    finally:
        await admin.disconnect()
    url = f"redis://keysonly:secret@127.0.0.1:{own_redis.port}/0"
    storing = RedisSpool(url, Assembler(), reactor)
    watching = RedisSpool(url, Assembler(), reactor)
    await storing.open()
    await watching.open()
    woken: list[str] = []
    try:
        watching.watch(woken.append)
        await _tick(0.2)
        stored = await storing.store(event("msg_acl"))
        await storing.store(segment("r1", 1, 2))
        completed = await storing.store(segment("r1", 2, 2))
        await _tick(0.2)
        due = await watching.due(reactor.seconds(), 10)
    finally:
        await storing.close()
        await watching.close()

    assert stored.id == "msg_acl"
    assert completed.id == "msg_r1"
    assert {e.id for e in due} == {"msg_acl", "msg_r1"}
    assert woken == []


# --- two-way messaging: the outbound queue ---------------------------------------


def reply(index: int = 0, event_id: str = "msg_in", operator: str = "op1"):
    return Outbound(
        id=reply_id(event_id, index),
        operator=operator,
        source={"address": "88000", "ton": 0, "npi": 1},
        destination={"address": "447700900001", "ton": 1, "npi": 1},
        text=f"reply {index}",
        webhook="app",
        created_at=1_800_000_000.5,
        in_reply_to=event_id,
    )


def failed_event(outbound_id: str) -> Event:
    body = json.dumps({"type": "reply.failed", "data": {"id": outbound_id}}).encode()
    return Event("msg_failed", "reply.failed", "app", body, reactor.seconds())


@pytest_twisted.ensureDeferred
async def test_a_reply_queued_with_its_delivery_is_due(spool):
    await spool.store(event("msg_in"))

    await spool.delivered("msg_in", None, [reply(0), reply(1)])

    due = await spool.outbound_due(reactor.seconds(), 10)
    assert [s.message.id for s in due] == [reply(0).id, reply(1).id]
    assert [s.state for s in due] == ["queued", "queued"]
    assert due[0].message == reply(0)
    assert spool.pending() == 0
    assert spool.outbound_pending() == 2


@pytest_twisted.ensureDeferred
async def test_a_reply_queued_by_two_deliveries_of_one_event_is_one_message(spool):
    await spool.store(event("msg_in"))

    await spool.delivered("msg_in", None, [reply(0)])
    await spool.delivered("msg_in", None, [reply(0)])

    assert len(await spool.outbound_due(reactor.seconds(), 10)) == 1
    assert spool.outbound_pending() == 1


@pytest_twisted.ensureDeferred
async def test_queue_counts_only_new_messages(spool):
    assert await spool.queue([reply(0), reply(1)]) == 2
    assert await spool.queue([reply(1), reply(2)]) == 1
    assert spool.outbound_pending() == 3


@pytest_twisted.ensureDeferred
async def test_outbound_due_takes_messages_until_the_lease_ends(spool):
    await spool.queue([reply(0)])
    now = reactor.seconds()

    first = await spool.outbound_due(now, 10, lease=30.0)
    second = await spool.outbound_due(now, 10, lease=30.0)
    after = await spool.outbound_due(now + 30.0, 10)

    assert [s.message.id for s in first] == [reply(0).id]
    assert second == []
    assert [s.message.id for s in after] == [reply(0).id]


@pytest_twisted.ensureDeferred
async def test_outbound_due_takes_only_the_named_operators(spool):
    await spool.queue([reply(0, operator="op1"), reply(1, operator="op2")])
    now = reactor.seconds()

    taken = await spool.outbound_due(now, 10, operators=["op2"])

    assert [s.message.operator for s in taken] == ["op2"]
    assert await spool.next_outbound_due(operators=["op1"]) <= now
    assert await spool.next_outbound_due(operators=["op3"]) is None


@pytest_twisted.ensureDeferred
async def test_next_outbound_due_is_the_end_of_a_lease(spool):
    assert await spool.next_outbound_due() is None
    await spool.queue([reply(0)])
    now = reactor.seconds()

    await spool.outbound_due(now, 10, lease=45.0)

    assert await spool.next_outbound_due() == now + 45.0


@pytest_twisted.ensureDeferred
async def test_progress_and_retry_keep_where_the_sending_is(spool):
    await spool.queue([reply(0)])
    now = reactor.seconds()
    await spool.outbound_due(now, 10)

    await spool.outbound_progress(
        reply(0).id, reference=77, parts_sent=1, message_ids=["m1"], operator="op1"
    )
    await spool.outbound_retry(
        reply(0).id,
        1,
        now + 100,
        "ESME_RTHROTTLED",
        reference=77,
        parts_sent=2,
        message_ids=["m1", "m2"],
    )

    assert await spool.outbound_due(now + 99, 10) == []
    [again] = await spool.outbound_due(now + 100, 10)
    assert (again.reference, again.parts_sent, again.message_ids) == (
        77,
        2,
        ("m1", "m2"),
    )
    assert (again.attempt, again.error) == (1, "ESME_RTHROTTLED")


@pytest_twisted.ensureDeferred
async def test_a_sent_message_is_found_by_each_part_message_id(spool):
    await spool.queue([reply(0)])

    await spool.outbound_sent(
        reply(0).id, reference=5, message_ids=["m1", "m2"], operator="op1"
    )

    state = await spool.outbound(reply(0).id)
    assert (state.state, state.message_ids, state.parts_sent) == (
        "sent",
        ("m1", "m2"),
        2,
    )
    assert state.sent_at is not None
    assert await spool.reply_for("m2", "op1") == reply(0).id
    assert await spool.reply_for("m_unknown", "op1") is None
    assert await spool.outbound_due(reactor.seconds(), 10) == []
    assert spool.outbound_pending() == 0


@pytest_twisted.ensureDeferred
async def test_the_same_message_id_from_two_operators_finds_each_one_its_own(spool):
    mine, theirs = reply(0), reply(1, operator="op2")
    await spool.queue([mine, theirs])

    await spool.outbound_sent(mine.id, reference=1, message_ids=["7"], operator="op1")
    await spool.outbound_sent(theirs.id, reference=2, message_ids=["7"], operator="op2")

    assert await spool.reply_for("7", "op1") == mine.id
    assert await spool.reply_for("7", "op2") == theirs.id


@pytest_twisted.ensureDeferred
async def test_a_part_accepted_before_the_last_is_found_by_its_message_id(spool):
    await spool.queue([reply(0)])

    progress = spool.outbound_progress(
        reply(0).id, reference=5, parts_sent=1, message_ids=["m1"], operator="op1"
    )
    found = spool.reply_for("m1", "op1")

    await progress
    assert await found == reply(0).id


@pytest_twisted.ensureDeferred
async def test_a_failed_message_stores_its_reply_failed_event(spool):
    await spool.queue([reply(0)])

    await spool.outbound_failed(reply(0).id, 3, "ESME_RINVDSTADR", failed_event("x"))

    state = await spool.outbound(reply(0).id)
    assert (state.state, state.attempt, state.error) == (
        "failed",
        3,
        "ESME_RINVDSTADR",
    )
    [due] = await spool.due(reactor.seconds(), 10)
    assert (due.id, due.type) == ("msg_failed", "reply.failed")
    assert spool.pending() == 1
    assert spool.outbound_pending() == 0


@pytest_twisted.ensureDeferred
async def test_an_outbound_message_has_a_trail(spool):
    await spool.queue([reply(0)])
    await spool.outbound_progress(
        reply(0).id, reference=5, parts_sent=1, message_ids=["m1"], operator="op1"
    )
    await spool.outbound_retry(
        reply(0).id,
        1,
        0.0,
        "throttled",
        reference=5,
        parts_sent=1,
        message_ids=["m1"],
    )
    await spool.outbound_sent(
        reply(0).id, reference=5, message_ids=["m1", "m2"], operator="op1"
    )

    trail = await spool.trail(reply(0).id)

    assert steps(trail) == ["queued", "part_sent", "retry", "sent"]


@pytest_twisted.ensureDeferred
async def test_sent_messages_are_forgotten_after_outbound_keep(backend):
    spool = await backend.open(outbound_keep=0.001)
    await spool.queue([reply(0), reply(1)])
    await spool.outbound_sent(
        reply(0).id, reference=5, message_ids=["m1"], operator="op1"
    )
    await _tick(0.01)

    await spool.expire(0.0)

    assert await spool.outbound(reply(0).id) is None
    assert (await spool.outbound(reply(1).id)).state == "queued"
    assert spool.outbound_pending() == 1


@pytest_twisted.ensureDeferred
async def test_queued_messages_survive_reopening(backend, spool):
    await spool.queue([reply(0)])

    again = await reopened(backend, spool)

    assert again.outbound_pending() == 1
    assert (await again.outbound(reply(0).id)).message == reply(0)


# --- two-way messaging: conversations and USSD sessions -----------------------------


def message(event_id: str, at: float, source: str = "447700900001", session=None):
    key, ussd = conversation.keys(
        "message.received",
        {
            "operator": "op1",
            "from": {"address": source, "ton": 1, "npi": 1},
            "to": {"address": "88000", "ton": 0, "npi": 1},
            "session": session,
        },
    )
    body = json.dumps(
        {"type": "message.received", "data": {"id": event_id, "conversation": None}},
        separators=(",", ":"),
    ).encode()
    return Event(
        event_id, "message.received", "app", body, at, conversation=key, ussd=ussd
    )


def conversation_in(stored: Event) -> dict:
    return json.loads(stored.body)["data"]["conversation"]


async def conversation_due(spool, event_id: str) -> dict:
    due = {e.id: e for e in await spool.due(reactor.seconds(), 100)}
    return json.loads(due[event_id].body)["data"]["conversation"]


@pytest_twisted.ensureDeferred
async def test_messages_of_one_person_make_turns_of_one_conversation(spool):
    now = reactor.seconds()
    first = await spool.store(message("msg_1", now - 10))
    second = await spool.store(message("msg_2", now))

    assert conversation_in(first)["turn"] == 1
    assert conversation_in(second)["turn"] == 2
    assert conversation_in(second)["id"] == conversation_in(first)["id"]
    assert conversation_in(second)["id"] == "cnv_1"
    assert await conversation_due(spool, "msg_2") == conversation_in(second)


@pytest_twisted.ensureDeferred
async def test_a_message_after_conversation_idle_starts_a_new_conversation(backend):
    spool = await backend.open(conversation_idle=100.0)
    now = reactor.seconds()
    first = await spool.store(message("msg_1", now - 101))
    second = await spool.store(message("msg_2", now))

    assert conversation_in(second)["turn"] == 1
    assert conversation_in(second)["id"] != conversation_in(first)["id"]


@pytest_twisted.ensureDeferred
async def test_a_repeated_store_does_not_advance_the_turn(spool):
    now = reactor.seconds()
    await spool.store(message("msg_1", now))
    assert await spool.store(message("msg_1", now)) is None

    kept = await spool.conversation_of("op1|447700900001|88000")

    assert kept["turn"] == 1
    assert kept["last_at"] == now


@pytest_twisted.ensureDeferred
async def test_another_person_has_another_conversation(spool):
    now = reactor.seconds()
    first = await spool.store(message("msg_1", now))
    other = await spool.store(message("msg_2", now, source="447700900002"))

    assert conversation_in(other)["turn"] == 1
    assert conversation_in(other)["id"] != conversation_in(first)["id"]


USSD = {"id": 7, "op": "pssr_indication", "sequence": 1, "end": False}


@pytest_twisted.ensureDeferred
async def test_an_idle_ussd_session_ends_with_one_session_ended_event(backend):
    spool = await backend.open(ussd_idle=60.0)
    await spool.store(message("msg_1", reactor.seconds() - 61, session=USSD))

    ended = await spool.expire(0.0)
    again = await spool.expire(0.0)

    [event_] = ended
    assert again == []
    assert (event_.type, event_.webhook) == ("session.ended", "app")
    data = json.loads(event_.body)["data"]
    assert (data["reason"], data["last_message_id"]) == ("timeout", "msg_1")
    assert data["session"] == USSD
    assert data["from"]["address"] == "447700900001"
    assert event_.id in {e.id for e in await spool.due(reactor.seconds(), 10)}


@pytest_twisted.ensureDeferred
async def test_a_recent_ussd_session_stays_open(backend):
    spool = await backend.open(ussd_idle=60.0)
    await spool.store(message("msg_1", reactor.seconds() - 30, session=USSD))

    assert await spool.expire(0.0) == []


@pytest_twisted.ensureDeferred
async def test_a_ussd_session_ended_by_its_message_or_a_reply_has_no_event(backend):
    spool = await backend.open(ussd_idle=60.0)
    old = reactor.seconds() - 61
    await spool.store(message("msg_1", old, session=USSD | {"end": True}))
    await spool.store(message("msg_2", old, source="447700900002", session=USSD))

    await spool.end_session("op1|447700900002|7")

    assert await spool.expire(0.0) == []


@needs_redis
@pytest_twisted.ensureDeferred
async def test_two_instances_storing_one_persons_messages_give_consecutive_turns(
    instances,
):
    first, second = instances
    now = reactor.seconds()

    stored = await gatherResults(
        [(first if n % 2 else second).store(message(f"msg_{n}", now)) for n in range(6)]
    )

    turns = sorted(conversation_in(e)["turn"] for e in stored)
    assert turns == [1, 2, 3, 4, 5, 6]
    assert len({conversation_in(e)["id"] for e in stored}) == 1


class ConversingAssembler(Assembler):
    """Makes message.received bodies with the placeholder, as build_event does."""

    def __call__(self, records, complete):
        event_id, event_type, _ = super().__call__(records, complete)
        data = {
            "id": event_id,
            "from": {"address": "447700900001"},
            "to": {"address": "88000"},
            "operator": "op1",
            "session": None,
            "conversation": None,
        }
        body = json.dumps({"type": event_type, "data": data}, separators=(",", ":"))
        return event_id, event_type, body.encode()


@pytest_twisted.ensureDeferred
async def test_an_assembled_message_continues_the_senders_conversation(backend):
    spool = await backend.open(ConversingAssembler())
    single = await spool.store(message("msg_1", reactor.seconds()))

    await spool.store(segment("r1", 1, 2))
    assembled = await spool.store(segment("r1", 2, 2))

    assert conversation_in(assembled)["turn"] == 2
    assert conversation_in(assembled)["id"] == conversation_in(single)["id"]


# --- writes made in one reactor turn (the Redis spool sends them as one script) ---


@pytest_twisted.ensureDeferred
async def test_stores_in_one_turn_each_fire_with_their_own_result(spool):
    now = reactor.seconds()
    await spool.store(message("msg_0", now - 5))

    results = await gatherResults(
        [
            spool.store(message("msg_1", now - 4)),
            spool.store(message("msg_0", now - 5)),
            spool.store(message("msg_2", now - 3, source="447700900002")),
            spool.store(message("msg_3", now - 2)),
        ]
    )

    first, repeated, other, third = results
    assert repeated is None
    assert [first.id, other.id, third.id] == ["msg_1", "msg_2", "msg_3"]
    assert [conversation_in(e)["turn"] for e in (first, other, third)] == [2, 1, 3]
    assert spool.pending() == 4


@pytest_twisted.ensureDeferred
async def test_deliveries_in_one_turn_are_each_recorded_with_their_replies(spool):
    for n in range(4):
        await spool.store(event(f"msg_{n}"))
    replies = [reply(0, "msg_1"), reply(0, "msg_3")]

    await gatherResults(
        [
            spool.delivered("msg_0"),
            spool.delivered("msg_1", None, replies[:1]),
            spool.delivered("msg_2"),
            spool.delivered("msg_3", None, replies[1:]),
        ]
    )

    assert spool.pending() == 0
    assert await spool.due(reactor.seconds(), 10) == []
    for queued in replies:
        kept = await spool.outbound(queued.id)
        assert kept.message == queued


class Watched:
    """A Redis spool of its own prefix, and a connection of the test's to the
    same Redis, to see what the spool's commands did."""

    def __init__(self, redis_server, assembler=None):
        self.prefix = f"t{os.urandom(4).hex()}"
        self.spool = RedisSpool(
            redis_server.url, assembler or Assembler(), reactor, prefix=self.prefix
        )
        self.stats = txredisapi.lazyConnection("127.0.0.1", redis_server.port)

    def key(self, name: str) -> str:
        """The spool's key ``name``, with its hash tag."""
        return "{" + self.prefix + "}:" + name

    async def close(self) -> None:
        await self.stats.disconnect()
        await self.spool.close()


@pytest_twisted.async_yield_fixture
async def watched(redis_server):
    watched = Watched(redis_server)
    await watched.spool.open()
    yield watched
    await watched.close()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_sends_the_stores_of_one_turn_as_one_script_call(watched):
    stored, calls = await _stored_in_one_turn(
        watched, [event(f"msg_{n}") for n in range(50)]
    )

    assert [e.id for e in stored] == [f"msg_{n}" for n in range(50)]
    assert calls == 1


@pytest_twisted.ensureDeferred
async def test_due_hands_out_again_an_event_left_out_of_exclude(spool):
    for n in range(3):
        await spool.store(event(f"msg_{n}"))
    now = reactor.seconds()
    await spool.due(now, 10)

    again = await spool.due(now, 10, ["msg_0", "msg_2"])

    assert [e.id for e in again] == ["msg_1"]


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_due_reads_only_new_entries_while_all_handed_out_are_in_flight(
    watched,
):
    spool = watched.spool
    for n in range(3):
        await spool.store(event(f"msg_{n}"))
    now = reactor.seconds()
    held = [e.id for e in await spool.due(now, 10)]
    await spool.store(event("msg_3"))

    before = await _command_calls(watched.stats)
    later = await spool.due(now + 0.1, 10, held)
    after = await _command_calls(watched.stats)

    assert [e.id for e in later] == ["msg_3"]
    ran = {name: after[name] - before.get(name, 0) for name in after}
    assert ran.get("xreadgroup") == 1
    assert "xautoclaim" not in ran or ran["xautoclaim"] == 0


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_acknowledges_the_deliveries_of_one_turn_in_one_command(
    watched,
):
    spool, stats = watched.spool, watched.stats
    for n in range(4):
        await spool.store(event(f"msg_{n}"))
    due = await spool.due(reactor.seconds(), 10)

    before = await _command_calls(stats)
    await gatherResults([spool.delivered(e.id) for e in due])
    after = await _command_calls(stats)
    left = await stats.execute_command("XLEN", watched.key("events:app"))
    unacknowledged = await stats.execute_command(
        "XPENDING", watched.key("events:app"), "dispatchers"
    )

    assert len(due) == 4
    assert (after["xack"] - before.get("xack", 0)) == 1
    assert (after["xdel"] - before.get("xdel", 0)) == 1
    assert (int(left), int(unacknowledged[0])) == (0, 0)
    assert spool.pending() == 0


async def _command_calls(redis) -> dict[str, int]:
    """How many times Redis ran each command, from INFO commandstats."""
    info = await redis.execute_command("INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else info
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(rest.split("calls=")[1].split(",")[0])
    return calls


async def _stored_in_one_turn(watched: Watched, items: list) -> tuple[list, int]:
    """What the spool's stores of ``items`` in one turn gave, and how many
    scripts (EVALSHA) Redis ran for them."""
    before = await _evalsha_calls(watched.stats)
    results = await _stored_together(watched.spool, *items)
    after = await _evalsha_calls(watched.stats)
    return results, after - before


async def _evalsha_calls(redis) -> int:
    return (await _command_calls(redis)).get("evalsha", 0)


def _stored_together(spool, *items) -> Deferred:
    """What the spool's stores of ``items``, made in one reactor turn, gave."""
    return gatherResults([spool.store(item) for item in items])


@pytest_twisted.ensureDeferred
async def test_segments_of_one_message_in_one_turn_make_one_event(spool):
    results = await _stored_together(
        spool,
        segment("r1", 2, 3),
        segment("r2", 1, 2),
        segment("r1", 1, 3),
        segment("r1", 2, 3),
        segment("r1", 3, 3),
    )

    assert results[:4] == [None, None, None, None]
    assert results[4].id == "msg_r1"
    assert json.loads(results[4].body)["text"] == "<r1.1><r1.2><r1.3>"
    assert spool.reassemblies().count == 1


@pytest_twisted.ensureDeferred
async def test_a_message_left_open_by_a_turn_that_completed_another_expires(spool):
    stored = await _stored_together(
        spool, segment("r1", 1, 2), segment("r2", 1, 2), segment("r1", 2, 2)
    )

    expired = await spool.expire(older_than=reactor.seconds() + 1)

    assert [e.id for e in stored if e is not None] == ["msg_r1"]
    assert [json.loads(e.body) for e in expired] == [
        {"text": "<r2.1>", "complete": False}
    ]
    assert spool.reassemblies() == Reassemblies()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_message_completed_in_a_later_turn_leaves_the_open_set(watched):
    spool, stats = watched.spool, watched.stats
    await spool.store(segment("r1", 1, 3))
    opened = await stats.execute_command("ZCARD", watched.key("open"))
    # The second part joins the message and the third completes it, in one
    # script call.
    done = await _stored_together(spool, segment("r1", 2, 3), segment("r1", 3, 3))
    left = await stats.execute_command("ZCARD", watched.key("open"))

    assert json.loads(done[1].body)["text"] == "<r1.1><r1.2><r1.3>"
    assert (opened, left) == (1, 0)


@needs_redis
@pytest_twisted.ensureDeferred
async def test_expire_drops_a_member_of_the_open_set_whose_segments_are_gone(
    watched,
):
    spool, stats = watched.spool, watched.stats
    await spool.store(segment("r1", 1, 2, at=1000.0))
    await stats.execute_command("ZADD", watched.key("open"), 1000, watched.key("seg:0"))
    expired = await spool.expire(older_than=1001.0)
    left = await stats.execute_command("ZRANGE", watched.key("open"), 0, -1)

    assert [json.loads(e.body)["text"] for e in expired] == ["<r1.1>"]
    assert left == []


@needs_redis
@pytest_twisted.ensureDeferred
async def test_redis_adds_the_segments_of_one_turn_and_stores_their_events_in_one_call(
    watched,
):
    results, calls = await _stored_in_one_turn(
        watched,
        [segment(f"r{n}", seqnum, 2) for n in range(20) for seqnum in (1, 2)],
    )

    assert sorted(e.id for e in results if e is not None) == sorted(
        f"msg_r{n}" for n in range(20)
    )
    # This spool was given every segment: it assembles each message before
    # sending the segment that completes it, and one call adds the forty
    # segments and stores the twenty events.
    assert calls == 1
