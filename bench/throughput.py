"""
End-to-end throughput and latency of the real daemon, on this machine.

    .venv/bin/python bench/throughput.py --messages 20000 --parts 1
    .venv/bin/python bench/throughput.py --messages 10000 --parts 2
    .venv/bin/python bench/throughput.py --messages 10000 --rate 1000
    .venv/bin/python bench/throughput.py --spool redis --dispatchers 2

The daemon runs as its own ``twistd -n p2a-connector`` process
(`p2a_connector.harness.Daemon`).  With ``--spool sqlite`` (the default) it
is one process on the durable sqlite spool (WAL, synchronous = FULL, group
commit) in a fresh directory.  With ``--spool redis`` the spool is a private
redis-server started for the run on a free loopback port (AOF on, no
snapshots, ``--appendfsync`` everysec by default) and stopped at the end;
``--dispatchers 0`` runs one process of role ``all`` on it, ``--dispatchers
N`` one ``--role receiver`` process holding the bind and N ``--role
dispatcher`` processes posting the webhooks.  ``--spool cluster`` is the
same on a private Redis Cluster of three masters (no replicas), the spool
split into ``--shards`` shards.  The project's SMSC
simulator, in this process, binds it and offers ``--messages`` deliver_sm,
either as fast as ``--window`` outstanding PDUs allow (``--rate 0``) or paced
at ``--rate`` messages per second.  Every message has its own text and its
own source address, so nothing is deduplicated by accident.

The webhook receiver runs in a child process by default (``--receiver
process``), so that receiving and checking 5,000 posts a second does not
compete with the simulator for one interpreter; ``--receiver inline`` puts it
in this process instead.  Both are twisted.web, which on this machine spends
about 0.3 ms of CPU per post: a third of a core at 1,000 posts a second,
taken from the connector's two.  ``--receiver lean`` is a child process that
speaks just enough HTTP/1.1 for the connector's posts (`LeanHTTP`), at a
fraction of that, standing for an application on another machine.  It answers 200 to every post and verifies every
signature with a plain HMAC-SHA256 check written here, and every
``--sample``-th request also with the `standardwebhooks` library, which is
too slow to run on each request at these rates.  A request failing either
check counts as a failure.

At the end it checks that nothing was lost: the distinct webhook-ids and
distinct texts received must both equal the messages sent, and every text
sent must be among them.  It prints a table (or ``--json``) and exits 0 only
then; 1 when something was lost, a signature failed, or ``--duration`` ran
out first.

Measured: deliver_sm_resp latency (from writing the deliver_sm to reading
its response, per PDU), webhook latency (from the deliver_sm_resp of a
message's last part to its POST reaching the receiver), the rates of
acknowledgement and of end-to-end delivery, and the CPU time each process
used (each daemon process and redis-server apart), which shows how the two
cores were shared.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from twisted.internet import defer, protocol, task
from twisted.web.resource import Resource
from twisted.web.server import Site

from p2a_connector import pdu, signing, traffic
from p2a_connector.harness import TEST_SECRET, Daemon, config_text
from p2a_connector.models import Address
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK, status_name

# The tests' private redis-server, so the benchmark never touches a Redis
# anyone else uses.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_server import Cluster, RedisServer, available

SHORT_CODE = Address("88000", 3, 0)
_PERCENTILES = (50, 90, 99)
# The receivers' listen backlog, as a web server's would be (nginx 511,
# gunicorn 2048).  Twisted's 50 is under the 64 connections a lane opens
# at once: the SYNs past it were dropped and sent again a second later,
# which showed as webhook latencies of about 1,050 ms.
RECEIVER_BACKLOG = 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the receiver -----------------------------------------------------------


class Collector(Resource):
    """Answers 200 to every POST and keeps what is needed to count it."""

    isLeaf = True

    def __init__(self, secret: str, sample: int, expected: int, on_complete=None):
        super().__init__()
        self.key = signing.secret_key(secret)
        self.webhook = Webhook(secret)
        self.sample = sample
        self.expected = expected
        self.on_complete = on_complete
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.ids: set[str] = set()
        self.failures: list[str] = []
        self.sampled = 0

    def render_POST(self, request) -> bytes:
        headers = request.requestHeaders
        self.check(
            time.monotonic(),
            request.content.read(),
            *(
                headers.getRawHeaders(name, [b""])[0].decode()
                for name in (b"webhook-id", b"webhook-timestamp", b"webhook-signature")
            ),
        )
        request.setHeader(b"content-length", b"0")
        return b""

    def check(
        self, arrived: float, body: bytes, event_id: str, timestamp: str, signature: str
    ) -> None:
        """Verify and count one post, however it arrived."""
        if not self._signed(event_id, timestamp, body, signature):
            self.failures.append(f"{event_id}: bad HMAC signature")
        if len(self.arrivals) % self.sample == 0:
            self.sampled += 1
            try:
                self.webhook.verify(
                    body,
                    {
                        "webhook-id": event_id,
                        "webhook-timestamp": timestamp,
                        "webhook-signature": signature,
                    },
                )
            except Exception as e:  # noqa: BLE001 - counted as a failure
                self.failures.append(f"{event_id}: standardwebhooks: {e}")

        self.arrivals.append((arrived, event_id, body))
        self.ids.add(event_id)
        if len(self.ids) == self.expected and self.on_complete is not None:
            self.on_complete()

    def _signed(self, event_id: str, timestamp: str, body: bytes, header: str) -> bool:
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        signed = f"{event_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.key, signed, hashlib.sha256).digest()
        expected = b"v1," + base64.b64encode(digest)
        return any(
            hmac.compare_digest(expected, candidate.encode())
            for candidate in header.split(" ")
        )

    def results(self) -> dict:
        """What the main process needs, with texts parsed after the run."""
        return {
            "arrivals": [
                [arrived, event_id, json.loads(body)["data"]["text"]]
                for arrived, event_id, body in self.arrivals
            ],
            "failures": self.failures,
            "sampled": self.sampled,
        }


class LeanHTTP(protocol.Protocol):
    """
    ``--receiver lean``: just enough HTTP/1.1 for the connector's posts
    (keep-alive, Content-Length bodies), so the receiver's share of the two
    cores is small, as an application on another machine would cost nothing
    here.  Every post is still verified by `Collector.check`.
    """

    _OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, collector: Collector):
        self.collector = collector
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = self.buffer[:end].split(b"\r\n")
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().decode()
            length = int(fields.get(b"content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.collector.check(
                time.monotonic(),
                body,
                fields.get(b"webhook-id", ""),
                fields.get(b"webhook-timestamp", ""),
                fields.get(b"webhook-signature", ""),
            )
            answers += 1
        if answers:
            self.transport.write(self._OK * answers)


class _QuietSite(Site):
    noisy = False

    def log(self, request) -> None:
        pass


def serve_receiver(args: argparse.Namespace) -> None:
    """The child process: print the port, collect, dump results on SIGTERM."""
    from twisted.internet import reactor

    def complete() -> None:
        sys.stdout.write("complete\n")
        sys.stdout.flush()

    collector = Collector(TEST_SECRET, args.sample, args.expect, complete)
    if args.receiver == "lean":
        factory = protocol.Factory.forProtocol(lambda: LeanHTTP(collector))
    else:
        factory = _QuietSite(collector)
    port = reactor.listenTCP(
        0, factory, backlog=RECEIVER_BACKLOG, interface="127.0.0.1"
    )

    def dump(*_: Any) -> None:
        try:
            Path(args.out).write_text(json.dumps(collector.results()))
        finally:
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, dump)
    sys.stdout.write(f"port {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run(installSignalHandlers=False)


class _ReceiverProcess(protocol.ProcessProtocol):
    def __init__(self):
        self.port: defer.Deferred[int] = defer.Deferred()
        self.complete: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"port ") and not self.port.called:
                self.port.callback(int(line.split()[1]))
            elif line == b"complete" and not self.complete.called:
                self.complete.callback(None)

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


# --- the SMSC side ----------------------------------------------------------


class Offer:
    """
    Sends pre-encoded deliver_sm through the simulator's bound session, at
    most ``window`` unanswered, and records when each was sent and answered.
    """

    def __init__(self, session, messages: list[list[bytes]], window: int):
        self.session = session
        self.window = window
        self.queue = [
            (index, part, len(parts) - 1 - n)
            for index, parts in enumerate(messages)
            for n, part in enumerate(parts)
        ]
        self.queue.reverse()
        self.outstanding = 0
        self.sent = 0
        self.resp_latency: list[float] = []
        self.acked_at: dict[int, float] = {}
        self.refused: dict[str, int] = {}
        self.first_sent: float | None = None
        self.last_acked = 0.0
        self.window_full = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self._budget: int | None = None

    def run(self, budget: int | None = None) -> None:
        """Send what the window (and, when paced, ``budget``) allows."""
        if budget is not None:
            self._budget = budget
        while self.queue and self.outstanding < self.window:
            if self._budget is not None and self.sent >= self._budget:
                return
            self._send(*self.queue.pop())
        if self.queue and (self._budget is None or self.sent < self._budget):
            self.window_full += 1

    def _send(self, index: int, encoded: bytes, remaining: int) -> None:
        self.outstanding += 1
        self.sent += 1
        sent = time.monotonic()
        if self.first_sent is None:
            self.first_sent = sent
        d = self.session.request(
            lambda seq: encoded[:12] + seq.to_bytes(4, "big") + encoded[16:]
        )
        d.addCallback(self._answered, index, encoded, remaining, sent)

    def _answered(self, header, index: int, encoded: bytes, remaining: int, sent):
        now = time.monotonic()
        self.outstanding -= 1
        self.resp_latency.append(now - sent)
        if header.command_status == ESME_ROK:
            if remaining == 0:
                self.acked_at[index] = now
            self.last_acked = now
        else:
            # A temporary refusal: the SMSC keeps the message and offers it
            # again, as a real one would.
            name = status_name(header.command_status)
            self.refused[name] = self.refused.get(name, 0) + 1
            self.queue.append((index, encoded, remaining))
        if not self.queue and self.outstanding == 0:
            if not self.done.called:
                self.done.callback(None)
        else:
            self.run()


def build_messages(count: int, parts: int) -> tuple[list[list[bytes]], list[str]]:
    """Every message's deliver_sm PDUs (sequence_number 0) and its text."""
    messages, texts = [], []
    for index in range(count):
        source = Address(f"4479{index:08d}", 1, 1)
        if parts == 1:
            text = f"bench message {index:08d} " + "x" * 60
            split = traffic.split(text, "gsm7", None)
        else:
            text = f"bench long message {index:08d} " + "y" * 250
            split = traffic.split(text, "gsm7", "udh8", reference=index % 256)
        if len(split) != parts:
            raise AssertionError(f"{len(split)} parts, expected {parts}")
        messages.append(
            [
                pdu.encode_deliver_sm(
                    0,
                    source=source,
                    destination=SHORT_CODE,
                    esm_class=part.esm_class,
                    data_coding=part.data_coding,
                    short_message=part.short_message,
                )
                for part in split
            ]
        )
        texts.append(text)
    return messages, texts


# --- measuring ----------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """
    User and system CPU time of a process (this one by default); of another
    process, with that of its children that ended: redis-server forks one
    for each AOF rewrite, and it takes a tenth more.
    """
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime
    return sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max, in milliseconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)
    result = {}
    for p in _PERCENTILES:
        rank = max(0, min(len(ordered) - 1, -(-p * len(ordered) // 100) - 1))
        result[f"p{p}"] = ordered[rank] * 1000
    result["max"] = ordered[-1] * 1000
    return result


def _wait(d: defer.Deferred, seconds: float, reactor) -> defer.Deferred[bool]:
    """True when ``d`` fired within ``seconds``, False when it did not."""
    outcome: defer.Deferred[bool] = defer.Deferred()

    def fired(_: Any) -> None:
        if not outcome.called:
            outcome.callback(True)

    def late() -> None:
        if not outcome.called:
            outcome.callback(False)

    timer = reactor.callLater(max(seconds, 0.0), late)
    d.addBoth(fired)

    def settled(result: bool) -> bool:
        if timer.active():
            timer.cancel()
        return result

    return outcome.addCallback(settled)


class PrivateRedis:
    """
    The run's own Redis: one redis-server, or with ``shards`` a Redis
    Cluster of three masters (no replicas) that the spool is split over.
    The AOF is on; the tests' class fsyncs every write, so the benchmark's
    ``appendfsync`` is set on each server once it answers.
    """

    def __init__(self, work: Path, appendfsync: str, shards: int = 0):
        self.shards = shards
        if shards:
            self._cluster = Cluster(work / "cluster")
            self.servers = self._cluster.nodes
        else:
            self._cluster = None
            self.servers = [RedisServer(work / "redis")]
        (self._cluster or self.servers[0]).start()
        for server in self.servers:
            _set_appendfsync(server, appendfsync)

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def spool_lines(self) -> str:
        """The [spool] lines beside the url: the cluster's nodes and shards."""
        if not self.shards:
            return ""
        nodes = ", ".join(f'"127.0.0.1:{server.port}"' for server in self.servers)
        return f"cluster = [{nodes}]\nshards = {self.shards}"

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(server.process.pid) for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _set_appendfsync(server: RedisServer, appendfsync: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), 2) as s:
        s.sendall(
            b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nappendfsync\r\n"
            + f"${len(appendfsync)}\r\n{appendfsync}\r\n".encode()
        )
        answer = s.recv(64)
    if not answer.startswith(b"+OK"):
        raise RuntimeError(f"CONFIG SET appendfsync {appendfsync}: {answer!r}")


def start_daemons(
    reactor, work: Path, text: str, dispatchers: int, nice: int = 0
) -> dict[str, Daemon]:
    """
    The daemon processes by name: ``all`` alone, or one ``receiver`` and
    ``dispatcher-1`` ... ``dispatcher-N``, all with the same configuration
    (a dispatcher never dials the bind it names).  ``nice`` lowers the
    dispatchers' CPU priority, as ``Nice=`` in their systemd unit would.
    """
    config = work / "connector.toml"
    config.write_text(text)
    if dispatchers == 0:
        roles = {"all": ()}
    else:
        roles = {"receiver": ("--role", "receiver")}
        for n in range(1, dispatchers + 1):
            roles[f"dispatcher-{n}"] = ("--role", "dispatcher")
    daemons = {
        name: Daemon(reactor, config, work / f"{name}.log", args=args, buffered=True)
        for name, args in roles.items()
    }
    for name, daemon in daemons.items():
        daemon.start()
        if nice and name.startswith("dispatcher"):
            os.setpriority(os.PRIO_PROCESS, daemon.process.pid, nice)
    return daemons


def _cpu(daemons: dict[str, Daemon], redis, receiver_pid) -> dict[str, float]:
    cpu = {f"twistd {name}": cpu_seconds(d.process.pid) for name, d in daemons.items()}
    if redis is not None:
        cpu["redis-server"] = redis.cpu_seconds()
    cpu["bench"] = cpu_seconds()
    cpu["receiver"] = cpu_seconds(receiver_pid) if receiver_pid else 0.0
    return cpu


async def run(reactor, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.duration
    work = Path(tempfile.mkdtemp(prefix="p2a-bench-"))
    messages, texts = build_messages(args.messages, args.parts)
    redis = None
    if args.spool != "sqlite":
        shards = args.shards if args.spool == "cluster" else 0
        redis = PrivateRedis(work, args.appendfsync, shards)
    status = 1
    try:
        status = await _run(reactor, args, deadline, work, messages, texts, redis)
        return status
    finally:
        if redis is not None:
            redis.stop()
        # A run that passed leaves nothing behind (its Redis files and spool
        # take tens of MB); one that did not keeps its logs to look at.
        if status == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            sys.stderr.write(f"the daemons' logs and files are kept in {work}\n")


# How long the benchmark waits for a process it stops before it kills it.
STOP_WAIT = 30.0


async def _run(reactor, args, deadline, work, messages, texts, redis) -> int:
    # The receiver.
    receiver_process = None
    receiver_pid = None
    if args.receiver in ("process", "lean"):
        receiver_process = _ReceiverProcess()
        results_file = work / "received.json"
        child = reactor.spawnProcess(
            receiver_process,
            sys.executable,
            [
                sys.executable,
                os.path.abspath(__file__),
                "--serve-receiver",
                "--receiver",
                args.receiver,
                "--expect",
                str(args.messages),
                "--sample",
                str(args.sample),
                "--out",
                str(results_file),
            ],
            env=dict(os.environ),
        )
        receiver_pid = child.pid

        def stop_if_running() -> None:
            # A run that ended early (the daemon did not bind, a dispatcher
            # did not start) never asks the receiver for its results.
            if not receiver_process.ended.called:
                child.signalProcess("KILL")

        reactor.addSystemEventTrigger("before", "shutdown", stop_if_running)
        receiver_port = await receiver_process.port
        complete = receiver_process.complete
    else:
        complete = defer.Deferred()
        collector = Collector(
            TEST_SECRET, args.sample, args.messages, lambda: complete.callback(None)
        )
        listening = reactor.listenTCP(
            0, _QuietSite(collector), backlog=RECEIVER_BACKLOG, interface="127.0.0.1"
        )
        receiver_port = listening.getHost().port

    # The SMSC and the daemon processes.
    simulator = SMSCSimulator("p2a", "secret", clock=reactor)
    smsc_port = simulator.listen(reactor)
    if redis is not None:
        spool = {"redis_url": redis.url, "spool_extra": redis.spool_lines}
    else:
        spool = {
            "spool": work / "spool.db",
            "spool_extra": f"commit_interval = {args.commit_interval}",
        }
    text = config_text(
        webhook_url=f"http://127.0.0.1:{receiver_port}/hook",
        smsc_port=smsc_port,
        bind_extra=f"window = {args.window}",
        **spool,
    )
    text = text.replace("check_interval = 0.2", "check_interval = 5")
    text = text.replace(
        "\ntimeout = 5\n", f"\ntimeout = 5\nconcurrency = {args.concurrency}\n"
    )
    daemons = start_daemons(reactor, work, text, args.dispatchers, args.dispatcher_nice)
    binding = daemons.get("all") or daemons["receiver"]

    try:
        bound = await _wait_bound(simulator, binding, reactor)
        if bound is None:
            sys.stderr.write(f"the daemon did not bind; its log:\n{binding.text()}\n")
            return 1
        if args.dispatchers:
            await _wait_started(daemons, reactor)
        if args.pause:
            pids = ", ".join(f"{n} {d.process.pid}" for n, d in daemons.items())
            sys.stderr.write(f"twistd pids: {pids}; starting in {args.pause} s\n")
            await task.deferLater(reactor, args.pause, lambda: None)

        cpu_before = _cpu(daemons, redis, receiver_pid)
        wall_start = time.monotonic()

        offer = Offer(bound, messages, args.window)
        pacer = None
        if args.rate > 0:
            start = time.monotonic()
            total_pdus = len(offer.queue)

            def pace() -> None:
                due = int((time.monotonic() - start) * args.rate * args.parts) + 1
                offer.run(min(due, total_pdus))

            pacer = task.LoopingCall(pace)
            pacer.clock = reactor
            pacer.start(0.001)
        else:
            offer.run()

        acked = await _wait(offer.done, deadline - time.monotonic(), reactor)
        if pacer is not None and pacer.running:
            pacer.stop()
        delivered = acked and await _wait(
            complete, deadline - time.monotonic(), reactor
        )
        if delivered:
            # Let late duplicates, if any, arrive and be counted.
            await task.deferLater(reactor, 0.5, lambda: None)
        wall_end = time.monotonic()
        cpu_after = _cpu(daemons, redis, receiver_pid)
    finally:
        for daemon in daemons.values():
            if daemon.running and not await _wait(daemon.stop(), STOP_WAIT, reactor):
                sys.stderr.write(f"a daemon did not stop within {STOP_WAIT} s\n")
                await daemon.kill()
        await _wait(simulator.stop(), STOP_WAIT, reactor)

    if receiver_process is not None:
        child.signalProcess("TERM")
        if not await _wait(receiver_process.ended, STOP_WAIT, reactor):
            child.signalProcess("KILL")
            await receiver_process.ended
            raise RuntimeError(f"the receiver did not stop within {STOP_WAIT} s")
        received = json.loads(results_file.read_text())
    else:
        await listening.stopListening()
        received = collector.results()

    report = _report(
        args, offer, texts, received, cpu_before, cpu_after, wall_start, wall_end
    )
    report["acked_in_time"] = acked
    report["delivered_in_time"] = delivered
    report["work_dir"] = str(work)
    _print(report, args)
    return 0 if report["ok"] else 1


async def _wait_started(daemons: dict[str, Daemon], reactor, timeout: float = 20.0):
    """Until every dispatcher process has its spool open."""
    for _ in range(int(timeout / 0.05)):
        if all("spool open" in d.text() for d in daemons.values()):
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError("a dispatcher did not start; see its log (path below)")


async def _wait_bound(simulator, daemon, reactor, timeout: float = 20.0):
    session = await _wait(simulator.whenBound(), timeout, reactor)
    if not session:
        return None
    for _ in range(int(timeout / 0.05)):
        if "bound op1-a" in daemon.text():
            return simulator.session
        await task.deferLater(reactor, 0.05, lambda: None)
    return None


def _report(args, offer, texts, received, cpu_before, cpu_after, start, end):
    arrivals = received["arrivals"]
    ids = {event_id for _, event_id, _ in arrivals}
    got_texts = {text for _, _, text in arrivals}
    sent_texts = set(texts)
    missing = len(sent_texts - got_texts)
    first_arrival: dict[str, float] = {}
    for arrived, _, text in arrivals:
        first_arrival.setdefault(text, arrived)

    webhook_latency = [
        first_arrival[texts[index]] - acked
        for index, acked in offer.acked_at.items()
        if texts[index] in first_arrival
    ]
    last_arrival = max((a for a, _, _ in arrivals), default=end)
    first_sent = offer.first_sent or start
    n = args.messages
    e2e_seconds = last_arrival - first_sent
    ack_seconds = offer.last_acked - first_sent
    wall = end - start
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}

    ok = (
        len(ids) == n
        and len(got_texts) == n
        and missing == 0
        and not received["failures"]
        and len(offer.acked_at) == n
    )
    return {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "parameters": {
            "messages": n,
            "parts": args.parts,
            "spool": args.spool,
            "dispatchers": args.dispatchers,
            "dispatcher_nice": args.dispatcher_nice,
            "appendfsync": args.appendfsync if args.spool != "sqlite" else None,
            "shards": args.shards if args.spool == "cluster" else None,
            "rate": args.rate,
            "window": args.window,
            "concurrency": args.concurrency,
            "commit_interval": (
                args.commit_interval if args.spool == "sqlite" else None
            ),
            "receiver": args.receiver,
            "sample": args.sample,
        },
        "ok": ok,
        "sent_pdus": offer.sent,
        "refused": offer.refused,
        "window_full": offer.window_full,
        "acked_messages": len(offer.acked_at),
        "posts": len(arrivals),
        "distinct_ids": len(ids),
        "distinct_texts": len(got_texts),
        "missing_texts": missing,
        "signature_failures": len(received["failures"]),
        "failures_sample": received["failures"][:5],
        "verified_hmac": len(arrivals),
        "verified_standardwebhooks": received["sampled"],
        "ack_rate": n / ack_seconds if ack_seconds > 0 else None,
        "end_to_end_rate": n / e2e_seconds if e2e_seconds > 0 else None,
        "end_to_end_seconds": e2e_seconds,
        "deliver_sm_resp_ms": percentiles(offer.resp_latency),
        "webhook_ms": percentiles(webhook_latency),
        "cpu_seconds": cpu,
        "cpu_percent_of_one_core": {
            name: 100 * seconds / wall for name, seconds in cpu.items()
        },
        # Steadier than the rates on a machine others share: the CPU each
        # process spent per message, however long the run took.
        "cpu_us_per_message": {
            name: 1e6 * seconds / n for name, seconds in cpu.items()
        },
        "wall_seconds": wall,
    }


def _print(report: dict, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report, indent=2))
        return

    def ms(values: dict) -> str:
        if not values:
            return "-"
        return " / ".join(f"{values[k]:.1f}" for k in ("p50", "p90", "p99", "max"))

    def rate(value) -> str:
        return "-" if value is None else f"{value:,.0f} msg/s"

    p = report["parameters"]
    cpu = report["cpu_percent_of_one_core"]
    if p["spool"] != "sqlite":
        spool = f"spool={p['spool']} appendfsync={p['appendfsync']}"
        if p["spool"] == "cluster":
            spool += f" (3 masters, {p['shards']} shards)"
        processes = (
            "all"
            if not p["dispatchers"]
            else (f"receiver + {p['dispatchers']} dispatcher(s)")
        )
    else:
        spool = f"spool=sqlite commit_interval={p['commit_interval']}"
        processes = "all"
    per_message = report["cpu_us_per_message"]

    def daemons(values: dict) -> str:
        return ", ".join(
            f"{name} {value:.0f}"
            for name, value in values.items()
            if name not in ("bench", "receiver")
        )

    daemon_cpu = daemons(cpu)
    rows = [
        ("command", report["command"]),
        (
            "parameters",
            (
                f"messages={p['messages']} parts={p['parts']} "
                f"rate={p['rate'] or 'max'} window={p['window']} "
                f"concurrency={p['concurrency']} {spool} "
                f"receiver={p['receiver']}"
            ),
        ),
        ("daemon processes", processes),
        ("acknowledged", rate(report["ack_rate"])),
        ("end to end", rate(report["end_to_end_rate"])),
        (
            "deliver_sm_resp ms",
            ms(report["deliver_sm_resp_ms"]) + "  (p50/p90/p99/max)",
        ),
        ("webhook ms", ms(report["webhook_ms"]) + "  (resp -> POST arrives)"),
        (
            "received",
            (
                f"{report['posts']} posts, {report['distinct_ids']} distinct ids, "
                f"{report['distinct_texts']} distinct texts, "
                f"{report['missing_texts']} missing"
            ),
        ),
        (
            "signatures",
            (
                f"{report['verified_hmac']} HMAC-checked, "
                f"{report['verified_standardwebhooks']} also by standardwebhooks, "
                f"{report['signature_failures']} failed"
            ),
        ),
        ("temporary refusals", str(report["refused"] or "none")),
        (
            "cpu, % of one core",
            f"{daemon_cpu}, simulator {cpu['bench']:.0f}, "
            f"webhook receiver {cpu['receiver']:.0f}"
            + (" (in the simulator's process)" if p["receiver"] == "inline" else ""),
        ),
        (
            "cpu µs per message",
            (
                f"{daemons(per_message)}, simulator {per_message['bench']:.0f}, "
                f"webhook receiver {per_message['receiver']:.0f}"
            ),
        ),
        ("result", "nothing lost" if report["ok"] else "FAILED: see above"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="End-to-end throughput and latency of p2a-connector.",
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--parts", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--rate", type=float, default=0, help="messages/s offered; 0: window-bound"
    )
    parser.add_argument(
        "--window", type=int, default=64, help="unanswered deliver_sm, both ends"
    )
    parser.add_argument(
        "--duration", type=float, default=120, help="give up after this many seconds"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16, help="webhook posts")
    parser.add_argument(
        "--commit-interval", type=float, default=0.002, help="sqlite only"
    )
    parser.add_argument(
        "--spool",
        choices=("sqlite", "redis", "cluster"),
        default="sqlite",
        help="cluster: the Redis spool on a private three-master Redis Cluster",
    )
    parser.add_argument(
        "--shards", type=int, default=4, help="cluster only: spool.shards"
    )
    parser.add_argument(
        "--dispatchers",
        type=int,
        default=0,
        help="redis, cluster: 0 one process of role all; N a receiver + N dispatchers",
    )
    parser.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default="everysec",
        help="the private redis-server's AOF fsync policy",
    )
    parser.add_argument(
        "--dispatcher-nice",
        type=int,
        default=0,
        help="redis and cluster: the dispatcher processes' nice value (0-19)",
    )
    parser.add_argument(
        "--receiver",
        choices=("process", "lean", "inline"),
        default="process",
        help="twisted.web in a child process, minimal HTTP in one, or twisted.web here",
    )
    parser.add_argument(
        "--sample", type=int, default=10, help="check every Nth with standardwebhooks"
    )
    parser.add_argument(
        "--pause", type=float, default=0, help="seconds between bind and traffic"
    )
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_receiver:
        serve_receiver(args)
        return 0
    if args.messages < 1 or args.window < 1 or args.sample < 1:
        parser.error("--messages, --window and --sample must be at least 1")
    if args.dispatchers < 0:
        parser.error("--dispatchers must be 0 or more")
    if args.dispatchers and args.spool == "sqlite":
        parser.error("--dispatchers needs a Redis spool: sqlite allows role all only")
    if args.spool != "sqlite" and not available():
        parser.error(f"--spool {args.spool} needs a redis-server binary on the PATH")
    if args.shards < 1:
        parser.error("--shards must be at least 1")

    async def react(reactor) -> None:
        status = await run(reactor, args)
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(react(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
