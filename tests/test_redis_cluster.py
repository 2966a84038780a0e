"""
The Redis spool on a Redis Cluster: hash slots as the cluster computes
them, shards spread over masters, bounds shared out between shards, slots
moved while the spool runs, and a master failing over to its replica.

Every cluster is real: redis-server processes in cluster mode on free
loopback ports, joined by ``redis-cli --cluster create``.  The spool's
contract on a cluster is in test_spool_contract.py (kind ``cluster``).
"""

import json
import os

import pytest
import pytest_twisted
from redis_server import Cluster, available
from test_spool_contract import Assembler, event, segment
from twisted.internet import reactor
from twisted.internet.task import deferLater

from p2a_connector.redis_cluster import Cluster as RedisCluster
from p2a_connector.redis_cluster import key_slot
from p2a_connector.redis_shards import ShardedSpool, shard_of
from p2a_connector.spool import SpoolError, SpoolLimit

pytestmark = pytest.mark.skipif(
    not available(), reason="no redis-server binary on this machine"
)


def sharded(cluster: Cluster, **options) -> ShardedSpool:
    options = {"shards": 4, "prefix": f"t{os.urandom(4).hex()}", **options}
    return ShardedSpool(cluster.seeds, cluster.url, Assembler(), reactor, **options)


@pytest_twisted.async_yield_fixture
async def spools():
    """Opens sharded spools; all are closed at the end."""
    opened = []

    async def open_(cluster: Cluster, **options) -> ShardedSpool:
        spool = sharded(cluster, **options)
        await spool.open()
        opened.append(spool)
        return spool

    yield open_
    for spool in opened:
        await spool.close()


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def test_key_slots_are_the_clusters(redis_cluster):
    node = redis_cluster.nodes[0]
    keys = ["p2a", "{p2a:3}:ev:msg_1", "a{}b", "{}{x}", "x{y}z{w}", "msg_ä"]

    for key in keys:
        assert key_slot(key) == int(redis_cluster.cli(node, "CLUSTER", "KEYSLOT", key))


def test_a_conversation_has_one_shard_whatever_the_process():
    key = "op1|447700900001|88000"

    assert shard_of(key, 16) == shard_of(key, 16)
    assert {shard_of(f"op1|44770090{n:04d}|88000", 16) for n in range(200)} == set(
        range(16)
    )


@pytest_twisted.ensureDeferred
async def test_shards_spread_over_the_masters(redis_cluster, spools):
    # The default prefix: its 16 tags fall on every third of the slots.
    spool = await spools(redis_cluster, shards=16, prefix="p2a")

    masters = {
        redis_cluster.master_of(shard._route.slot).port for shard in spool.shards
    }

    assert len(masters) == 3
    assert len(spool.cluster.masters) == 3


@pytest_twisted.ensureDeferred
async def test_segments_offered_to_two_instances_make_one_event(redis_cluster, spools):
    first = await spools(redis_cluster)
    second = await spools(redis_cluster, prefix=first.prefix)

    assert await first.store(segment("x", 1, 2)) is None
    completed = await second.store(segment("x", 2, 2))
    again = await first.store(segment("x", 2, 2))

    assert json.loads(completed.body)["text"] == "<x.1><x.2>"
    assert again is None
    assert [e.id for e in await first.due(reactor.seconds(), 10)] == [completed.id]


@pytest_twisted.ensureDeferred
async def test_each_shard_enforces_its_share_of_a_bound(redis_cluster, spools):
    spool = await spools(redis_cluster, shards=2, max_reassemblies=4)
    refs = [f"r{n}" for n in range(40)]
    refused = []

    for ref in refs:
        try:
            await spool.store(segment(ref, 1, 2, operator=ref))
        except SpoolLimit as limit:
            refused.append((ref, limit.bound))

    assert spool.reassemblies().count == 4
    assert [shard.reassemblies().count for shard in spool.shards] == [2, 2]
    assert {bound for _, bound in refused} == {2}
    assert len(refused) == 36


@pytest_twisted.ensureDeferred
async def test_an_event_is_found_by_id_in_whichever_shard_keeps_it(
    redis_cluster, spools
):
    spool = await spools(redis_cluster, shards=8)
    for n in range(12):
        await spool.store(event(f"msg_{n}"))
    # Never handed out by due, so not known to be in any shard.
    await spool.dead("msg_7", 1, "gone")

    assert [letter["id"] for letter in await spool.dead_letters()] == ["msg_7"]
    assert await spool.dead_letter_count() == 1
    assert spool.pending() == 11
    assert [step["step"] for step in await spool.trail("msg_7")][-1] == "dead_lettered"


@pytest_twisted.ensureDeferred
async def test_due_hands_out_each_event_once_a_limit_at_a_time(redis_cluster, spools):
    spool = await spools(redis_cluster, shards=4)
    stored = [f"msg_{n}" for n in range(12)]
    for event_id in stored:
        await spool.store(event(event_id))
    now = reactor.seconds()

    handed, looks = [], []
    while got := await spool.due(now, 3, handed):
        looks.append(len(got))
        handed += [e.id for e in got]

    assert looks == [3, 3, 3, 3]
    assert sorted(handed) == sorted(stored)


@pytest_twisted.ensureDeferred
async def test_events_kept_past_a_limit_are_let_go_before_another_may_claim_them(
    redis_cluster, spools
):
    first = await spools(redis_cluster, shards=4, claim_idle=0.4)
    second = await spools(redis_cluster, shards=4, claim_idle=0.4, prefix=first.prefix)
    stored = [f"msg_{n}" for n in range(8)]
    for event_id in stored:
        await first.store(event(event_id))
    # Two handed out, the other six kept by the first instance for its next
    # look; then it stalls for longer than claim_idle.
    taken = [e.id for e in await first.due(reactor.seconds(), 2)]
    await _sleep(0.5)

    claimed = [e.id for e in await second.due(reactor.seconds(), 10)]
    later = await first.due(reactor.seconds(), 10, taken)

    assert sorted(claimed) == sorted(stored)
    assert later == []


class Migration:
    """
    A slot on its way from its master to another, as a reshard moves it:
    the target importing, the source migrating, keys moved one call at a
    time, and at `finish` the target serving it.
    """

    def __init__(self, cluster: Cluster, slot: int):
        self.cluster = cluster
        self.slot = str(slot)
        self.source = cluster.master_of(slot)
        self.target = next(n for n in _masters(cluster) if n is not self.source)
        source_id = cluster.cli(self.source, "CLUSTER", "MYID").strip()
        self._target_id = cluster.cli(self.target, "CLUSTER", "MYID").strip()
        cluster.cli(
            self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id
        )
        cluster.cli(
            self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._target_id
        )

    def move(self, *keys: str) -> None:
        self.cluster.cli(
            self.source,
            "MIGRATE",
            "127.0.0.1",
            str(self.target.port),
            "",
            "0",
            "5000",
            "KEYS",
            *keys,
        )

    def move_all(self) -> None:
        while keys := self.cluster.cli(
            self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, "100"
        ).split():
            self.move(*keys)

    def finish(self) -> None:
        for node in _masters(self.cluster):
            self.cluster.cli(
                node, "CLUSTER", "SETSLOT", self.slot, "NODE", self._target_id
            )


def _masters(cluster: Cluster) -> list:
    return [
        node
        for node in cluster.nodes
        if node.process is not None
        and "role:master" in cluster.cli(node, "INFO", "replication")
    ]


@pytest_twisted.ensureDeferred
async def test_a_shard_moved_to_another_master_is_followed(redis_cluster, spools):
    spool = await spools(redis_cluster, shards=1)
    slot = spool.shards[0]._route.slot
    before = redis_cluster.master_of(slot).port
    for n in range(5):
        await spool.store(event(f"msg_{n}"))

    migration = Migration(redis_cluster, slot)
    migration.move_all()
    migration.finish()
    await spool.store(event("msg_5"))

    after = redis_cluster.master_of(slot).port
    assert after != before
    assert spool.cluster.serving(slot) == ("127.0.0.1", after)
    assert [e.id for e in await spool.due(reactor.seconds(), 10)] == [
        f"msg_{n}" for n in range(6)
    ]
    assert spool.pending() == 6


@pytest_twisted.ensureDeferred
async def test_a_key_already_migrating_is_read_where_it_went(redis_cluster):
    client = RedisCluster(redis_cluster.seeds, reactor, timeout=1.0, options={})
    await client.start()
    tag = "{" + f"t{os.urandom(4).hex()}" + "}"
    route = client.route(tag)
    await route.execute_command("SET", tag + ":moving", "here")
    migration = Migration(redis_cluster, route.slot)
    try:
        migration.move(tag + ":moving")

        # The source answers ASK: the key is on the target, the slot not yet.
        assert await route.execute_command("GET", tag + ":moving") == "here"
        assert client.serving(route.slot) == ("127.0.0.1", migration.source.port)
    finally:
        migration.finish()
        await client.disconnect()


@pytest.fixture
def replicated_cluster(tmp_path):
    """
    Three masters with two replicas each: a master killed fails over to a
    replica that still has another replica for ``wait_replicas = 1``.
    """
    cluster = Cluster(tmp_path / "replicated", masters=3, replicas=2)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_master_is_replaced_and_nothing_acknowledged_is_lost(
    replicated_cluster, spools
):
    spool = await spools(replicated_cluster, shards=1, wait_replicas=1)
    slot = spool.shards[0]._route.slot
    for n in range(20):
        await spool.store(event(f"msg_{n:02d}"))

    replicated_cluster.master_of(slot).kill()
    stored = None
    for _ in range(60):
        try:
            stored = await spool.store(event("msg_after"))
            break
        except SpoolError:
            await _sleep(0.5)

    assert stored is not None, "the replica never took over"
    due = await spool.due(reactor.seconds(), 100)
    assert [e.id for e in due] == [f"msg_{n:02d}" for n in range(20)] + ["msg_after"]


@pytest_twisted.ensureDeferred
async def test_no_node_answering_is_a_clear_error():
    spool = ShardedSpool(
        [("127.0.0.1", 9)], "redis://127.0.0.1:9/0", Assembler(), reactor
    )

    with pytest.raises(
        SpoolError, match="127.0.0.1:9: no answer within 1 s; check spool.cluster"
    ):
        await spool.open()


@pytest_twisted.ensureDeferred
async def test_a_redis_without_cluster_mode_is_a_clear_error(redis_server):
    spool = ShardedSpool(
        [("127.0.0.1", redis_server.port)], redis_server.url, Assembler(), reactor
    )

    with pytest.raises(SpoolError, match="cluster support disabled"):
        await spool.open()


@pytest_twisted.ensureDeferred
async def test_a_cluster_not_serving_every_slot_is_a_clear_error(tmp_path):
    lone = Cluster(tmp_path / "lone", masters=1)
    lone.nodes[0].start()  # cluster mode, but no slots assigned
    try:
        spool = ShardedSpool(lone.seeds, lone.url, Assembler(), reactor)
        with pytest.raises(SpoolError, match="serves 0 of 16384 slots"):
            await spool.open()
    finally:
        lone.stop()
