"""
The real daemon, end to end: SMSC simulator -> twistd p2a-connector -> receiver.

Each test starts `twistd -n p2a-connector` as a child process with its own
configuration, spool file and ports, so what is tested is what systemd runs,
including what happens when the process is killed.
"""

import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, utils
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.task import deferLater

from p2a_connector import traffic
from p2a_connector.harness import TEST_SECRET, Daemon, config_text
from p2a_connector.models import Address
from p2a_connector.receiver import Receiver, Reply
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK, status_code

PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def until(condition, timeout: float = 15.0, what: str = "condition"):
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        yield sleep(0.05)
        waited += 0.05


@pytest.fixture
def smsc(smpp_simulator):
    return smpp_simulator


@pytest.fixture
def daemon(tmp_path, receiver, smsc):
    """A function starting the daemon; every daemon started is killed at the end."""
    started = []

    def start(**extra: str) -> Daemon:
        config = tmp_path / "connector.toml"
        config.write_text(
            config_text(
                spool=tmp_path / "spool.db",
                webhook_url=receiver.url,
                smsc_port=smsc.listening.getHost().port,
                **extra,
            )
        )
        process = Daemon(reactor, config, tmp_path / "daemon.log")
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running:
            pytest_twisted.blockon(process.kill())


async def bound(smsc: SMSCSimulator, process: Daemon, timeout: float = 20.0):
    """
    The simulator's session once the daemon has bound, or a clear failure.

    The simulator counts a bind as done when it sends bind_resp; the daemon
    only once it has read it, which is what a test acting on the daemon
    (a SIGTERM, say) must wait for.
    """

    def failed(failure):
        raise AssertionError(f"the daemon did not bind; its log:\n{process.text()}")

    session = await smsc.whenBound().addTimeout(timeout, reactor).addErrback(failed)
    binds = smsc.binds
    await until(
        lambda: process.text().count("bound op1-") >= binds,
        timeout=timeout,
        what="the daemon logging its bind",
    )
    return session


def deliver(smsc: SMSCSimulator, part: traffic.Part, **fields) -> Deferred:
    return smsc.deliver(
        source=fields.pop("source", PHONE),
        destination=fields.pop("destination", SHORT_CODE),
        esm_class=part.esm_class,
        data_coding=part.data_coding,
        short_message=part.short_message,
        tlvs=part.tlvs,
        **fields,
    )


def events(receiver: Receiver) -> dict[str, dict]:
    """Verified payloads by webhook-id (retries of one event collapse)."""
    return {
        request.headers["webhook-id"]: request.verify(TEST_SECRET)
        for request in receiver.requests
    }


def sorted_texts(found: list[str | None]) -> list[str | None]:
    return sorted(found, key=lambda text: (text is None, text or ""))


def texts(receiver: Receiver) -> list[str | None]:
    """The text of each distinct message event, sorted (None for binary)."""
    return sorted_texts(
        [
            event["data"]["text"]
            for event in events(receiver).values()
            if event["type"] == "message.received"
        ]
    )


@pytest_twisted.ensureDeferred
async def test_every_form_of_message_arrives_once_and_signed(daemon, smsc, receiver):
    process = daemon()
    await bound(smsc, process)
    long_gsm = "A long message in GSM 7-bit with {braces} and €uro signs. " * 4
    long_ucs2 = "Длинное сообщение с эмодзи 👋🏽 в UCS2. " * 5
    segments_16 = traffic.split(long_ucs2, "ucs2", "udh16", reference=0xBEEF)

    statuses = []
    for part in [
        *traffic.split("Hello €1 [ok]", "gsm7", None),
        *traffic.split("Grüße", "latin1", None),
        *traffic.split("日本 🎌", "ucs2", None),
        *traffic.split(long_gsm, "gsm7", "udh8", reference=7),
        *reversed(segments_16),
        *traffic.split("SAR " * 50, "gsm7", "sar", reference=300),
        *traffic.split("payload " * 40, "gsm7", "payload"),
    ]:
        statuses.append(await deliver(smsc, part))
    statuses.append(await deliver(smsc, traffic.Part(b"\x01\x02\xff", 4)))

    assert statuses == [ESME_ROK] * len(statuses)
    await until(lambda: len(events(receiver)) == 8, what="8 events")
    assert texts(receiver) == sorted_texts(
        [
            "Hello €1 [ok]",
            "Grüße",
            "日本 🎌",
            long_gsm,
            long_ucs2,
            "SAR " * 50,
            "payload " * 40,
            None,
        ]
    )
    by_text = {e["data"]["text"]: e["data"] for e in events(receiver).values()}
    assert by_text[long_ucs2]["parts"] == {
        "total": len(segments_16),
        "received": len(segments_16),
        "reference": 0xBEEF,
        "method": "udh16",
        "complete": True,
    }
    assert by_text[long_gsm]["encoding"] == "gsm7"
    assert by_text["Grüße"]["encoding"] == "latin1"
    assert by_text[None]["binary"] == "AQL/"
    assert by_text["Hello €1 [ok]"]["from"] == PHONE.to_json()
    assert by_text["Hello €1 [ok]"]["operator"] == "op1"
    assert by_text["Hello €1 [ok]"]["bind"] == "op1-a"
    assert len(receiver.requests) == 8


@pytest_twisted.ensureDeferred
async def test_receipt_and_ussd_become_their_events(daemon, smsc, receiver):
    process = daemon()
    await bound(smsc, process)
    receipt = (
        b"id:4f2a sub:001 dlvrd:001 submit date:2412031749 "
        b"done date:2412031750 stat:DELIVRD err:000 text:Hi"
    )

    assert (
        await smsc.deliver(
            source=PHONE, destination=SHORT_CODE, esm_class=0x04, short_message=receipt
        )
        == ESME_ROK
    )
    assert (
        await smsc.deliver(
            source=PHONE,
            destination=SHORT_CODE,
            short_message=b"*123#",
            tlvs=[(0x0501, b"\x01"), (0x1383, b"\x2a\x00"), (0x1401, b"\xca\xfe")],
        )
        == ESME_ROK
    )

    await until(lambda: len(events(receiver)) == 2, what="2 events")
    by_type = {e["type"]: e["data"] for e in events(receiver).values()}
    assert by_type["receipt.received"]["receipt"]["stat"] == "DELIVRD"
    assert by_type["receipt.received"]["receipt"]["message_id"] == "4f2a"
    ussd = by_type["message.received"]
    assert ussd["text"] == "*123#"
    assert ussd["session"]["id"] == 0x2A
    assert ussd["session"]["op"] == "pssr_indication"
    assert ussd["smpp"]["tlvs"]["0x1401"] == "cafe"


@pytest_twisted.ensureDeferred
async def test_webhook_503_then_200_loses_nothing(daemon, smsc, receiver):
    receiver.script(503)
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("retry me", "gsm7", None)[0]) == ESME_ROK

    await until(lambda: len(receiver.requests) >= 2, timeout=20, what="2 attempts")
    ids = {request.headers["webhook-id"] for request in receiver.requests}
    bodies = {request.body for request in receiver.requests}
    assert len(ids) == 1 and len(bodies) == 1
    assert texts(receiver) == ["retry me"]


def cli(*args: str) -> Deferred:
    """Run the p2a-connector command; fires with (stdout, stderr, exit status)."""
    command = str(Path(sys.executable).with_name("p2a-connector"))
    return utils.getProcessOutputAndValue(command, args, env=os.environ)


@pytest_twisted.ensureDeferred
async def test_webhook_400_goes_to_dead_letters_and_can_be_replayed(
    daemon, smsc, receiver, tmp_path
):
    receiver.script(400)
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("rejected", "gsm7", None)[0]) == ESME_ROK
    await until(lambda: len(receiver.requests) == 1, what="one attempt")
    await process.stop()

    config = str(tmp_path / "connector.toml")
    out, err, status = await cli("dead-letters", "list", "--json", "--config", config)
    assert status == 0, err
    (letter,) = [json.loads(line) for line in out.decode().splitlines()]
    assert letter["id"] == receiver.requests[0].headers["webhook-id"]
    assert letter["reason"] == "HTTP 400"

    out, err, status = await cli("dead-letters", "replay", "--all", "--config", config)
    assert status == 0, err
    assert b"1 dead letter(s)" in out
    daemon()
    await until(lambda: len(receiver.requests) == 2, what="the replayed post")
    assert receiver.requests[1].headers["webhook-id"] == letter["id"]
    assert receiver.requests[1].body == receiver.requests[0].body


@pytest_twisted.ensureDeferred
async def test_full_spool_answers_temporary_status_then_drains(daemon, smsc, receiver):
    receiver.default = Reply.hang()
    process = daemon(spool_extra="max_pending = 3")
    await bound(smsc, process)
    part = traffic.split("queued", "gsm7", None)[0]

    accepted = [await deliver(smsc, part) for _ in range(3)]
    refused = await deliver(smsc, part)

    assert accepted == [ESME_ROK] * 3
    assert refused == status_code("ESME_RX_T_APPN")
    receiver.default = Reply()
    await until(lambda: len(receiver.requests) >= 3, what="held requests")
    receiver.release()
    await until(lambda: len(events(receiver)) == 3, what="drained")
    await sleep(0.3)
    assert await deliver(smsc, part) == ESME_ROK


@pytest_twisted.ensureDeferred
async def test_orphan_segment_is_delivered_incomplete(daemon, smsc, receiver):
    process = daemon(reassembly_extra="timeout = 1")
    await bound(smsc, process)
    first, _second = traffic.split("orphan " * 30, "gsm7", "udh8", reference=9)

    assert await deliver(smsc, first) == ESME_ROK

    await until(lambda: len(events(receiver)) == 1, timeout=10, what="orphan event")
    (event,) = events(receiver).values()
    assert event["data"]["parts"]["complete"] is False
    assert event["data"]["parts"]["received"] == 1
    assert event["data"]["parts"]["total"] == 2


@pytest_twisted.ensureDeferred
async def test_sigterm_unbinds_and_exits_cleanly(daemon, smsc):
    process = daemon()
    await bound(smsc, process)

    ended = await process.stop()

    # twistd ends itself with the signal it shut down for, as systemd expects.
    assert ended in ((0, None), (None, signal.SIGTERM)), process.text()
    assert "Traceback" not in process.text()
    assert "unbind" in smsc.commands()


@pytest_twisted.ensureDeferred
async def test_smsc_disconnect_is_followed_by_a_new_bind(daemon, smsc, receiver):
    process = daemon()
    await bound(smsc, process)
    rebound = smsc.nextBind()

    smsc.disconnect()
    await rebound.addTimeout(10, reactor)

    assert await deliver(smsc, traffic.split("after", "gsm7", None)[0]) == ESME_ROK
    await until(lambda: texts(receiver) == ["after"], what="delivery after rebind")


@pytest_twisted.ensureDeferred
async def test_sigkill_under_load_loses_nothing_acknowledged(daemon, smsc, receiver):
    """
    The SMSC sends a stream of single and two-part messages; the daemon is
    killed with SIGKILL in the middle, started again, and the SMSC offers
    again what was not acknowledged.  Every acknowledged message arrives.
    """
    process = daemon()
    session = await bound(smsc, process)
    messages = {
        f"m{i:04d} " + ("two-part filler " * 12 if i % 3 == 0 else "single"): i
        for i in range(600)
    }
    acknowledged: set[str] = set()
    outstanding = list(messages)
    kill_at = 120

    def offer(text: str, session) -> Deferred:
        number = messages[text]
        parts = traffic.split(text, "gsm7", "udh8", reference=number % 256)
        results = [
            session.deliver(
                source=PHONE,
                destination=SHORT_CODE,
                esm_class=part.esm_class,
                data_coding=part.data_coding,
                short_message=part.short_message,
            )
            for part in parts
        ]

        def all_ok(statuses):
            if all(status == ESME_ROK for status in statuses):
                acknowledged.add(text)
                if len(acknowledged) == kill_at:
                    killed.append(first_life.kill())

        return gatherResults(results, consumeErrors=True).addCallbacks(
            all_ok, lambda failure: None
        )

    # First life: offer 400, kill the daemon part-way through.  The SIGKILL
    # goes out as the 120th acknowledgement arrives, so the load is still
    # under way however fast the machine.
    first_life = process
    killed: list[Deferred] = []
    offers = [offer(text, session) for text in outstanding[:400]]
    await until(lambda: killed, what="some acknowledgements")
    await killed[0]
    await DeferredList(offers)
    acknowledged_first = set(acknowledged)
    assert kill_at <= len(acknowledged_first) < 400

    # Second life: the SMSC offers again everything not acknowledged.
    process = daemon()
    session = await bound(smsc, process)
    for text in [t for t in messages if t not in acknowledged]:
        await offer(text, session)

    assert acknowledged == set(messages)
    await until(
        lambda: set(texts(receiver)) >= acknowledged,
        timeout=60,
        what="every acknowledged message delivered",
    )
    assert process.running
    assert set(texts(receiver)) == set(messages)
    # An acknowledged message is never offered again, so it made exactly one
    # event (retried posts share its webhook-id).  Only a message stored but
    # killed before its acknowledgement went out may exist twice: SMPP gives
    # the SMSC's second offer nothing to recognise it by.
    counts = Counter(texts(receiver))
    assert all(counts[text] == 1 for text in acknowledged_first)


@pytest_twisted.ensureDeferred
async def test_segments_arriving_on_two_binds_make_one_message(daemon, smsc, receiver):
    second = SMSCSimulator("p2a", "secret")
    port = second.listen(reactor)
    try:
        process = daemon(
            bind_extra=(
                "\n[[operator.bind]]\n"
                'name = "op1-b"\nhost = "127.0.0.1"\n'
                f'port = {port}\nsystem_id = "p2a"\npassword = "secret"\n'
                'mode = "receiver"\n'
            )
        )
        await bound(smsc, process)
        await bound(second, process)
        text = "split across binds " * 12
        first, last = traffic.split(text, "gsm7", "udh8", reference=99)

        assert await deliver(smsc, first) == ESME_ROK
        assert await deliver(second, last) == ESME_ROK

        await until(lambda: len(events(receiver)) == 1, what="one event")
        (event,) = events(receiver).values()
        assert event["data"]["text"] == text
        assert event["data"]["bind"] in ("op1-a", "op1-b")
        assert second.received[0].command == "bind_receiver"
    finally:
        await second.stop()


def admin_url(process: Daemon) -> str:
    """The admin endpoint's base URL, from the line the daemon logs."""
    found = re.search(r"admin endpoint on (http://127\.0\.0\.1:\d+/)", process.text())
    assert found, process.text()
    return found.group(1)


@pytest_twisted.ensureDeferred
async def test_admin_endpoint_answers_health_readiness_and_metrics(daemon, smsc):
    process = daemon()
    await bound(smsc, process)
    base = admin_url(process)

    health = await treq.get(base + "healthz")
    ready = await treq.get(base + "readyz")
    metrics = await (await treq.get(base + "metrics")).text()

    assert health.code == 200
    assert ready.code == 200
    assert (await ready.json())["binds_down"] == []
    assert 'p2a_bind_up{bind="op1-a",operator="op1"} 1.0' in metrics
    assert "p2a_events_pending 0.0" in metrics
    assert "p2a_outbound_queued 0.0" in metrics


@pytest_twisted.ensureDeferred
async def test_readyz_says_which_bind_is_down(daemon, smsc):
    process = daemon()
    await bound(smsc, process)
    base = admin_url(process)

    smsc.refuse_status = status_code("ESME_RBINDFAIL")
    smsc.disconnect()
    response = None
    for _ in range(40):
        response = await treq.get(base + "readyz")
        if response.code == 503:
            break
        await sleep(0.1)

    assert response.code == 503
    body = await response.json()
    assert body["binds_down"] == ["op1-a"]
    assert body["operators_without_a_bound_bind"] == ["op1"]
    assert body["spool"] == "ok"
