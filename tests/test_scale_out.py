"""
Several daemons on one Redis: receivers sharing reassembly, dispatchers
sharing delivery, and a dispatcher killed with events in flight.

Every daemon is a real `twistd -n p2a-connector --role ...` process; the
Redis is a private redis-server on a free port.
"""

import json
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
import txredisapi
from conftest import whole_events_only
from redis_server import Cluster, RedisServer, Sentinel, available
from test_end_to_end import (
    PHONE,
    SHORT_CODE,
    admin_url,
    bound,
    cli,
    deliver,
    events,
    sleep,
    until,
)
from test_spool_contract import woken_by_a_store
from twisted.internet import reactor, utils

from p2a_connector import traffic
from p2a_connector.conversation import conversation_key
from p2a_connector.harness import Daemon, config_text
from p2a_connector.receiver import Reply
from p2a_connector.redis_cluster import key_slot
from p2a_connector.redis_shards import ShardedSpool, shard_of
from p2a_connector.redis_spool import RedisSpool
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK

pytestmark = pytest.mark.skipif(
    not available(), reason="no redis-server binary on this machine"
)


@pytest.fixture(params=["redis", "cluster"])
def redis(request, tmp_path):
    """One redis-server, or a Redis Cluster of three masters."""
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis")
    else:
        server = Cluster(tmp_path / "cluster")
    server.start()
    yield server
    server.stop()


def spool_lines(redis) -> str:
    """The [spool] lines, beside its url, that name a cluster's nodes."""
    if not isinstance(redis, Cluster):
        return ""
    nodes = ", ".join(f'"{host}:{port}"' for host, port in redis.seeds)
    return f"cluster = [{nodes}]\nshards = 4"


@pytest.fixture
def daemons(tmp_path, receiver, redis):
    """A function starting one daemon with a role; all are killed at the end."""
    started = []

    def start(role: str, smsc: SMSCSimulator | None = None, name: str = "a") -> Daemon:
        config = tmp_path / f"{role}-{name}.toml"
        # A dispatcher has no binds to keep up; its configuration still names
        # one, which it never dials.
        port = smsc.listening.getHost().port if smsc is not None else 9
        config.write_text(
            config_text(
                webhook_url=receiver.url,
                smsc_port=port,
                redis_url=redis.url,
                bind_name=f"op1-{name}",
                spool_extra="claim_idle = 1\n" + spool_lines(redis),
            )
        )
        process = Daemon(
            reactor, config, tmp_path / f"{role}-{name}.log", args=("--role", role)
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running:
            pytest_twisted.blockon(process.kill())


@pytest.fixture
def second_smsc():
    simulator = SMSCSimulator("p2a", "secret")
    simulator.listen(reactor)
    yield simulator
    pytest_twisted.blockon(simulator.stop())


@pytest_twisted.ensureDeferred
async def test_a_receiver_and_a_dispatcher_deliver_together(
    daemons, smpp_simulator, receiver
):
    receiving = daemons("receiver", smpp_simulator)
    dispatching = daemons("dispatcher")
    await bound(smpp_simulator, receiving)

    part = traffic.split("via redis", "gsm7", None)[0]
    assert await deliver(smpp_simulator, part) == ESME_ROK

    await until(lambda: len(events(receiver)) == 1, what="the event")
    await until(lambda: "delivered msg_" in dispatching.text(), what="its log line")
    assert "delivered msg_" not in receiving.text()


async def wake_subscribers(redis) -> int:
    """How many connections listen to the spool's wake-ups, on any channel."""
    host, port = (
        redis.seeds[0] if isinstance(redis, Cluster) else ("127.0.0.1", redis.port)
    )
    connection = await txredisapi.Connection(host, port, reconnect=False)
    try:
        channels = await connection.execute_command("PUBSUB", "CHANNELS", "*stored")
        if not channels:
            return 0
        counts = await connection.execute_command("PUBSUB", "NUMSUB", *channels)
        return sum(int(n) for n in counts[1::2])
    finally:
        await connection.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_dispatcher_listens_for_the_receivers_stores(
    daemons, smpp_simulator, receiver, redis
):
    """
    A dispatcher process subscribes to the spool's wake-ups (one channel per
    cluster shard), a receiver does not: its own stores wake nobody it runs.
    """
    receiving = daemons("receiver", smpp_simulator)
    await bound(smpp_simulator, receiving)
    assert await wake_subscribers(redis) == 0

    dispatching = daemons("dispatcher")
    shards = 4 if isinstance(redis, Cluster) else 1
    subscribed = []

    async def listening() -> bool:
        subscribed.append(await wake_subscribers(redis))
        return subscribed[-1] == shards

    for _ in range(200):
        if await listening():
            break
        await sleep(0.05)
    assert subscribed[-1] == shards, dispatching.text()

    part = traffic.split("woken", "gsm7", None)[0]
    assert await deliver(smpp_simulator, part) == ESME_ROK
    await until(lambda: len(events(receiver)) == 1, what="the event")
    metrics = await (await treq.get(admin_url(dispatching) + "metrics")).text()
    assert "p2a_wakeups_total 1.0" in metrics


@pytest_twisted.ensureDeferred
async def test_a_reply_queued_by_a_dispatcher_is_sent_by_the_receiver(
    daemons, smpp_simulator, receiver
):
    receiver.script(
        Reply(
            200,
            headers=(("content-type", "application/json"),),
            body=b'{"reply": {"text": "answered through redis"}}',
        )
    )
    receiving = daemons("receiver", smpp_simulator)
    daemons("dispatcher")
    await bound(smpp_simulator, receiving)

    part = traffic.split("question", "gsm7", None)[0]
    assert await deliver(smpp_simulator, part) == ESME_ROK
    (sent,) = await smpp_simulator.whenSubmitted(1).addTimeout(15, reactor)

    assert sent.pdu.short_message == b"answered through redis"
    assert sent.pdu.destination.address == PHONE.address


@pytest_twisted.ensureDeferred
async def test_segments_on_two_receivers_make_exactly_one_webhook(
    daemons, smpp_simulator, second_smsc, receiver
):
    first = daemons("receiver", smpp_simulator, name="a")
    second = daemons("receiver", second_smsc, name="b")
    daemons("dispatcher")
    await bound(smpp_simulator, first)
    await bound(second_smsc, second)
    text = "one message over two instances " * 6
    head, tail = traffic.split(text, "gsm7", "udh16", reference=0x5A5A)

    assert await deliver(smpp_simulator, head, source=PHONE) == ESME_ROK
    assert await deliver(second_smsc, tail, destination=SHORT_CODE) == ESME_ROK

    await until(lambda: len(receiver.requests) >= 1, what="the event")
    await sleep(0.5)
    assert [e["data"]["text"] for e in events(receiver).values()] == [text]
    assert len(receiver.requests) == 1


@pytest_twisted.ensureDeferred
async def test_a_killed_dispatcher_events_are_delivered_by_another(
    daemons, smpp_simulator, receiver
):
    receiver.default = Reply.hang()
    receiving = daemons("receiver", smpp_simulator)
    doomed = daemons("dispatcher", name="doomed")
    await bound(smpp_simulator, receiving)
    for number in range(5):
        part = traffic.split(f"in flight {number}", "gsm7", None)[0]
        assert await deliver(smpp_simulator, part) == ESME_ROK
    await until(lambda: len(receiver.requests) == 5, what="5 posts held")
    held = {request.headers["webhook-id"] for request in receiver.requests}

    await doomed.kill()
    receiver.default = Reply()
    daemons("dispatcher", name="survivor")

    await until(lambda: len(receiver.requests) >= 10, what="5 posts again")
    again = {request.headers["webhook-id"] for request in receiver.requests[5:]}
    assert again == held
    texts = sorted(e["data"]["text"] for e in events(receiver).values())
    assert texts == [f"in flight {number}" for number in range(5)]


@pytest_twisted.ensureDeferred
async def test_dead_letters_are_listed_and_replayed_by_the_command_line(
    daemons, smpp_simulator, receiver, tmp_path
):
    receiver.script(400, 400, 400)
    process = daemons("receiver", smpp_simulator)
    # A dispatcher looks at the spool often, so it finds the replayed events.
    daemons("dispatcher")
    await bound(smpp_simulator, process)
    for number in range(3):
        part = traffic.split(f"rejected {number}", "gsm7", None)[0]
        assert await deliver(smpp_simulator, part) == ESME_ROK
    await until(lambda: len(receiver.requests) == 3, what="three attempts")
    rejected = {request.headers["webhook-id"] for request in receiver.requests}
    config = str(tmp_path / "receiver-a.toml")

    # A post's answer reaches the receiver before its dead letter is written.
    listed: set[str] = set()
    for _ in range(20):
        out, err, status = await cli(
            "dead-letters", "list", "--json", "--config", config
        )
        assert status == 0, err
        listed = {json.loads(line)["id"] for line in out.decode().splitlines()}
        if len(listed) == 3:
            break
        await sleep(0.25)
    assert listed == rejected

    out, err, status = await cli("dead-letters", "replay", "--all", "--config", config)
    assert status == 0, err
    assert b"3 dead letter(s)" in out
    await until(lambda: len(receiver.requests) == 6, what="the replayed posts")
    assert {r.headers["webhook-id"] for r in receiver.requests[3:]} == rejected


@pytest_twisted.ensureDeferred
async def test_a_role_needs_the_redis_spool(tmp_path, receiver):
    config = tmp_path / "sqlite.toml"
    config.write_text(
        config_text(spool=tmp_path / "s.db", webhook_url=receiver.url, smsc_port=9)
    )
    twistd = str(Path(sys.executable).with_name("twistd"))

    out, err, code = await utils.getProcessOutputAndValue(
        twistd,
        ["--nodaemon", "p2a-connector", "--config", str(config), "--role", "receiver"],
    )

    assert code != 0
    assert b'needs spool.backend = "redis"' in out + err


@pytest_twisted.ensureDeferred
async def test_redis_restarted_mid_load_loses_nothing_acknowledged(
    daemons, smpp_simulator, receiver, redis
):
    """
    Redis goes away while the SMSC keeps offering: the daemon answers the
    busy status meanwhile, and once Redis is back (same AOF) it accepts
    again without a restart; every acknowledged message is delivered.
    """
    process = daemons("all", smpp_simulator)
    session = await bound(smpp_simulator, process)
    texts = [f"r{number:03d}" for number in range(200)]
    acknowledged: set[str] = set()
    refused: set[str] = set()

    async def offer(text: str) -> None:
        part = traffic.split(text, "gsm7", None)[0]
        status = await session.deliver(
            source=PHONE,
            destination=SHORT_CODE,
            data_coding=part.data_coding,
            short_message=part.short_message,
        )
        (acknowledged if status == ESME_ROK else refused).add(text)

    for text in texts[:90]:
        await offer(text)
    redis.stop()
    # Each offer waits for the spool's one-second timeout: a few suffice.
    for text in texts[90:95]:
        await offer(text)
    redis.start()
    for text in texts[95:]:
        await offer(text)
    # As an SMSC would: offer again what was answered with the busy status.
    for _ in range(20):
        missing = sorted(set(texts) - acknowledged)
        if not missing:
            break
        for text in missing:
            await offer(text)
        await sleep(0.5)

    assert set(texts[90:95]) <= refused, "Redis being down never showed"
    assert acknowledged == set(texts)
    await until(
        lambda: {e["data"]["text"] for e in events(receiver).values()} == set(texts),
        timeout=30,
        what="every acknowledged message delivered",
    )


async def failover_keeps_delivering(
    tmp_path, smpp_simulator, receiver, kill, *, redis_url: str, spool_extra: str
) -> None:
    """
    A daemon on this Redis delivers a message; ``kill`` fails a master; a
    message offered until the spool takes it (the busy status meanwhile,
    unless the failover was quicker than the spool's timeout) is delivered
    too.
    """
    config = tmp_path / "failover.toml"
    config.write_text(
        config_text(
            webhook_url=receiver.url,
            smsc_port=smpp_simulator.listening.getHost().port,
            redis_url=redis_url,
            spool_extra=spool_extra,
        )
    )
    process = Daemon(reactor, config, tmp_path / "daemon.log")
    process.start()
    try:
        session = await bound(smpp_simulator, process)
        part = traffic.split("before failover", "gsm7", None)[0]
        assert await deliver(smpp_simulator, part) == ESME_ROK
        await until(lambda: len(events(receiver)) == 1, what="the first event")
        await sleep(0.5)  # let the replica catch up before its master dies

        kill()
        after = traffic.split("after failover", "gsm7", None)[0]
        status = None
        for _ in range(60):
            status = await session.deliver(
                source=PHONE,
                destination=SHORT_CODE,
                data_coding=after.data_coding,
                short_message=after.short_message,
            )
            if status == ESME_ROK:
                break
            await sleep(0.5)

        assert status == ESME_ROK, process.text()
        await until(
            lambda: (
                "after failover"
                in {e["data"]["text"] for e in events(receiver).values()}
            ),
            timeout=20,
            what="delivery through the promoted replica",
        )
    finally:
        if process.running:
            await process.kill()


@pytest_twisted.async_yield_fixture
async def watched_master(tmp_path):
    """A master, its replica and a Sentinel watching them: (master, sentinel)."""
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", replica_of=master.port)
    replica.start()
    sentinel = Sentinel(tmp_path / "sentinel", master.port)
    sentinel.start()
    # A new Sentinel answers at once but needs a moment of talking to the
    # master and its replica before it will name the master to clients.
    await sleep(1.5)
    yield master, sentinel
    sentinel.stop()
    replica.stop()
    master.stop()


@pytest_twisted.ensureDeferred
async def test_sentinel_failover_and_delivery_continues(
    tmp_path, smpp_simulator, receiver, watched_master
):
    master, sentinel = watched_master
    await failover_keeps_delivering(
        tmp_path,
        smpp_simulator,
        receiver,
        master.kill,
        redis_url="redis://127.0.0.1:6379/0",
        spool_extra=f'sentinels = ["127.0.0.1:{sentinel.port}"]',
    )


@pytest_twisted.ensureDeferred
async def test_wake_ups_come_through_sentinel_before_and_after_a_failover(
    watched_master,
):
    """
    A watching spool found its master through Sentinel; once the master
    dies and a replica is promoted, it subscribes on the new master and
    hears the stores made there.
    """
    master, sentinel = watched_master
    options = {"sentinels": [("127.0.0.1", sentinel.port)], "timeout": 0.5}
    url = "redis://127.0.0.1:6379/0"
    storing = RedisSpool(url, whole_events_only, reactor, **options)
    watching = RedisSpool(url, whole_events_only, reactor, **options)

    woken = await woken_before_and_after(storing, watching, master.kill)

    assert set(woken) == {"app"}


async def woken_before_and_after(storing, watching, failure) -> list[str]:
    """
    Open both spools, see a store wake the watching one, bring about the
    ``failure``, and store until the watcher is woken again; what woke it
    the second time.
    """
    woken: list[str] = []
    try:
        await storing.open()
        await watching.open()
        watching.watch(woken.append)
        await woken_by_a_store(storing, woken)

        failure()
        woken.clear()
        await woken_by_a_store(storing, woken, attempts=120)
    finally:
        await storing.close()
        await watching.close()
    return woken


@pytest_twisted.ensureDeferred
async def test_cluster_wake_ups_move_to_another_node_when_theirs_fails(tmp_path):
    """
    A watching spool subscribes through the first seed; once that node
    dies, it subscribes through another and hears the stores again, those
    on the promoted replica's shards included.
    """
    cluster = Cluster(tmp_path / "cluster", masters=3, replicas=1)
    try:
        cluster.start()
        options = {"shards": 4, "timeout": 0.5}
        storing = ShardedSpool(
            cluster.seeds, cluster.url, whole_events_only, reactor, **options
        )
        watching = ShardedSpool(
            cluster.seeds, cluster.url, whole_events_only, reactor, **options
        )
        woken = await woken_before_and_after(storing, watching, cluster.nodes[0].kill)
    finally:
        cluster.stop()

    assert set(woken) == {"app"}


@pytest_twisted.ensureDeferred
async def test_cluster_failover_and_delivery_continues(
    tmp_path, smpp_simulator, receiver
):
    cluster = Cluster(tmp_path / "cluster", masters=3, replicas=1)
    try:
        cluster.start()
        # The master of the shard this person's conversation is in.
        person = conversation_key("op1", PHONE.address, SHORT_CODE.address)
        tag = "{" + f"p2a:{shard_of(person, 4)}" + "}"
        master = cluster.master_of(key_slot(tag))

        def kill() -> None:
            held = cluster.cli(master, "EXISTS", f"{tag}:cnv:{person}").strip()
            assert held == "1", "the conversation is not on the master killed"
            master.kill()

        await failover_keeps_delivering(
            tmp_path,
            smpp_simulator,
            receiver,
            kill,
            redis_url=cluster.url,
            spool_extra=spool_lines(cluster),
        )
    finally:
        cluster.stop()
