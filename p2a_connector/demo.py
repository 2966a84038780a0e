"""
``make demo``: the whole path, SMSC to webhook, on this machine, in seconds.

It starts the SMSC simulator and a webhook receiver that checks every
signature with the public ``standardwebhooks`` library, runs the real daemon
under twistd against them with the embedded sqlite spool, sends sample
traffic in several encodings and concatenation forms, prints what the
receiver got, shuts the daemon down with SIGTERM, and exits: 0 when every
message arrived correctly signed, 1 otherwise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from standardwebhooks.webhooks import WebhookVerificationError
from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from p2a_connector import traffic
from p2a_connector.harness import TEST_SECRET, Daemon, config_text
from p2a_connector.models import Address
from p2a_connector.receiver import Receiver
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import status_name

PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)
WORK = Path("var/demo")

LONG_GSM = (
    "This message is longer than one SMS, so the phone split it into parts "
    "with a concatenation header, and the SMSC delivered each part as its own "
    "deliver_sm; the connector joins them again into one event. [€5] {ok}"
)
LONG_UCS2 = (
    "Здравствуйте! Это длинное сообщение в UCS2 с эмодзи 🎉👍🏽, в трёх частях. " * 2
)


def samples() -> list[tuple[str, list[traffic.Part]]]:
    """What the simulated SMSC sends: a name and the deliver_sm parts."""
    ucs2_parts = traffic.split(LONG_UCS2, "ucs2", "udh16", reference=0x1F2E)
    return [
        (
            "GSM 7-bit, one part",
            traffic.split("Hello from the demo! €10 @ £5", "gsm7", None),
        ),
        ("Latin-1", traffic.split("Grüße aus Köln", "latin1", None)),
        ("UCS2 with emoji", traffic.split("你好 👋", "ucs2", None)),
        ("GSM 7-bit, 8-bit UDH", traffic.split(LONG_GSM, "gsm7", "udh8", reference=42)),
        ("UCS2, 16-bit UDH, reversed", list(reversed(ucs2_parts))),
        ("SAR TLVs", traffic.split("Segmented by SAR TLVs. " * 9, "gsm7", "sar", 512)),
        (
            "message_payload",
            traffic.split("All in message_payload. " * 10, "gsm7", "payload"),
        ),
        (
            "binary (data_coding 4)",
            [traffic.Part(bytes.fromhex("0605040b8423f0010603"), 4, esm_class=0x40)],
        ),
    ]


async def run(reactor) -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)

    receiver = Receiver(reactor)
    await receiver.start()
    smsc = SMSCSimulator("p2a", "secret")
    port = smsc.listen(reactor)
    config = WORK / "connector.toml"
    config.write_text(
        config_text(
            spool=WORK.resolve() / "spool.db", webhook_url=receiver.url, smsc_port=port
        )
    )
    daemon = Daemon(reactor, config.resolve(), WORK / "daemon.log")
    print(f"SMSC simulator on 127.0.0.1:{port}, receiver at {receiver.url}")
    print(f"starting: twistd -n p2a-connector --config {config}")
    daemon.start()

    ok = False
    try:
        await smsc.whenBound().addTimeout(20, reactor)
        print("daemon bound to the simulator as a transceiver\n")
        expected = await send(smsc)
        await receiver.wait_for(expected, timeout=20)
        ok = show(receiver)
    finally:
        if daemon.running:
            await daemon.stop()
        await smsc.stop()
        await receiver.stop()
        if not ok:
            print(f"demo failed; the daemon's log is {WORK / 'daemon.log'}")

    print(f"\ndaemon stopped (SIGTERM); its log: {WORK / 'daemon.log'}")
    if not ok:
        raise SystemExit(1)


async def send(smsc: SMSCSimulator) -> int:
    count = 0
    for name, parts in samples():
        statuses = []
        for part in parts:
            status = await smsc.deliver(
                source=PHONE,
                destination=SHORT_CODE,
                esm_class=part.esm_class,
                data_coding=part.data_coding,
                short_message=part.short_message,
                tlvs=part.tlvs,
            )
            statuses.append(status_name(status))
        print(f"SMSC sent {name:<28} {len(parts)} deliver_sm -> {', '.join(statuses)}")
        count += 1

    receipt = b"id:7a3f sub:001 dlvrd:001 submit date:2612031749 done date:2612031750 stat:DELIVRD err:000 text:Hi"
    status = await smsc.deliver(
        source=PHONE, destination=SHORT_CODE, esm_class=0x04, short_message=receipt
    )
    print(f"SMSC sent {'a delivery receipt':<28} 1 deliver_sm -> {status_name(status)}")
    status = await smsc.deliver(
        source=PHONE,
        destination=SHORT_CODE,
        short_message=b"*100#",
        tlvs=[(0x0501, b"\x01"), (0x1383, b"\x07\x00")],
    )
    print(f"SMSC sent {'a USSD request':<28} 1 deliver_sm -> {status_name(status)}")
    return count + 2


def show(receiver: Receiver) -> bool:
    print(f"\nthe receiver got {len(receiver.requests)} POSTs:")
    ok = True
    for request in receiver.requests:
        try:
            event = request.verify(TEST_SECRET)
        except WebhookVerificationError as e:
            print(f"  signature REJECTED for {request.headers.get('webhook-id')}: {e}")
            ok = False
            continue
        data = event["data"]
        print(
            f"\n  {event['type']}  webhook-id {request.headers['webhook-id']}  (signature verified)"
        )
        if event["type"] == "receipt.received":
            print(
                f"    receipt for {data['receipt']['message_id']}: {data['receipt']['stat']}"
            )
            continue
        parts = data["parts"]
        print(
            f"    {data['from']['address']} -> {data['to']['address']}  "
            f"{data['encoding']} (data_coding {data['data_coding']}), "
            f"parts {parts['received']}/{parts['total']} {parts['method'] or ''}"
        )
        if data.get("session"):
            print(f"    USSD session {json.dumps(data['session'])}")
        if data.get("ports"):
            print(f"    application ports {json.dumps(data['ports'])}")
        if data["text"] is None:
            print(f"    binary: {data['binary']}")
        else:
            print(f"    text: {data['text']}")
    return ok


def main() -> None:
    task.react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
