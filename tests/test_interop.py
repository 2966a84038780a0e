"""
The real daemon against an SMSC written by others: node-smpp.

tests/interop/smsc.js is an SMSC built on the npm package ``smpp``, whose
codec shares nothing with ours.  It accepts the daemon's bind and sends a
corpus of deliver_sm covering every decoding path: GSM 7-bit with extension
characters, UCS2 with emoji, Latin-1, two-part udh8, three-part udh16, SAR,
message_payload, a delivery receipt, binary, USSD and a vendor TLV.  Some
texts are given as octets, some as text that node-smpp encodes itself.
Every message must reach the webhook receiver once, signed, with its text.

``make test`` installs the package first (``make interop``); without Node.js
the test is skipped and says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from p2a_connector import traffic
from p2a_connector.harness import TEST_SECRET, Daemon, config_text
from p2a_connector.receiver import Receiver
from p2a_connector.smpp_status import ESME_ROK

INTEROP = Path(__file__).resolve().parent / "interop"
PHONE = ["447700900123", 1, 1]
SHORT_CODE = ["88000", 3, 0]

GSM_TEXT = "Hello {world} [€5] ~^|\\ @£$¥ èé ÄÖÑÜ§ ¿¡ Δ_ΦΓ"
NODE_GSM_TEXT = "node-smpp's own GSM: {€} [x] ~ ^ | \\ @ £ ¥ à"
UCS2_TEXT = "Привет 👋🏽 你好 🎌 — ok"
LATIN1_TEXT = "Grüße aus Köln, ça va? ½ ©"
UDH8_TEXT = "A two-part message in GSM 7-bit with {braces} and €uro. " * 3
UDH16_TEXT = "Три части в UCS2 с эмодзи 👋🏽🎉 и ещё текст. " * 3
SAR_TEXT = "SAR segments carry no UDH at all, only TLVs. " * 8
PAYLOAD_TEXT = "message_payload holds the whole text in one PDU. " * 6
RECEIPT = (
    "id:4f2a sub:001 dlvrd:001 submit date:2412031749 "
    "done date:2412031750 stat:DELIVRD err:000 text:Hi"
)


def entry(**fields) -> dict:
    return {"source": PHONE, "destination": SHORT_CODE, **fields}


def octets(data: bytes) -> dict:
    return {"hex": data.hex()}


def from_part(part: traffic.Part) -> dict:
    """A corpus entry sending this part's octets as they are."""
    assert not part.tlvs
    return entry(
        esm_class=part.esm_class,
        data_coding=part.data_coding,
        short_message=octets(part.short_message),
    )


def node_encoded_udh16(text: str, reference: int) -> list[dict]:
    """
    UCS2 segments whose text node-smpp encodes itself, behind our UDH: the
    text is cut where `traffic.split` cuts it, between characters.
    """
    found = []
    for part in traffic.split(text, "ucs2", "udh16", reference=reference):
        header_length = part.short_message[0] + 1
        udh, body = (
            part.short_message[:header_length],
            part.short_message[header_length:],
        )
        found.append(
            entry(
                esm_class=0x40,
                data_coding=8,
                short_message={"text": body.decode("utf-16-be"), "udh": udh.hex()},
            )
        )
    return found


def sar_entries(text: str, reference: int) -> list[dict]:
    """SAR segments with the TLVs named as node-smpp names them."""
    found = []
    for part in traffic.split(text, "gsm7", "sar", reference=reference, size=120):
        tlvs = {tag: value for tag, value in part.tlvs}
        found.append(
            entry(
                data_coding=0,
                short_message=octets(part.short_message),
                tlvs={
                    "sar_msg_ref_num": int.from_bytes(tlvs[0x020C], "big"),
                    "sar_total_segments": tlvs[0x020E][0],
                    "sar_segment_seqnum": tlvs[0x020F][0],
                },
            )
        )
    return found


def corpus() -> tuple[list[dict], int]:
    """The deliver_sm to send, and how many events they make."""
    udh8 = traffic.split(UDH8_TEXT, "gsm7", "udh8", reference=42)
    assert len(udh8) == 2
    udh16 = node_encoded_udh16(UDH16_TEXT, reference=0xBEEF)
    assert len(udh16) == 3
    sar = sar_entries(SAR_TEXT, reference=300)
    assert len(sar) == 3

    entries = [
        from_part(traffic.split(GSM_TEXT, "gsm7", None)[0]),
        entry(data_coding=0, short_message={"text": NODE_GSM_TEXT}),
        entry(data_coding=8, short_message={"text": UCS2_TEXT}),
        entry(data_coding=3, short_message={"text": LATIN1_TEXT}),
        *[from_part(part) for part in reversed(udh8)],
        udh16[1],
        udh16[2],
        udh16[0],
        *sar,
        entry(data_coding=0, tlvs={"message_payload": {"text": PAYLOAD_TEXT}}),
        entry(
            esm_class=0x04,
            short_message=octets(RECEIPT.encode("ascii")),
            tlvs={"receipted_message_id": "4f2a", "message_state": 2},
        ),
        entry(data_coding=4, short_message=octets(b"\x01\x02\xff")),
        entry(
            data_coding=0,
            short_message={"text": "*123#"},
            tlvs={"ussd_service_op": 1, "its_session_info": octets(b"\x2a\x00")},
            vendor_tlvs=[[0x1401, "cafe"]],
        ),
    ]
    return entries, 11


class _Lines(protocol.ProcessProtocol):
    """The SMSC's JSON lines as they come, and its stderr for failures."""

    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.stderr = b""
        self._partial = b""
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.ended.callback(None)

    def of(self, event: str) -> list[dict]:
        return [line for line in self.lines if line["event"] == event]


@inlineCallbacks
def until(condition, what: str, timeout: float = 20.0):
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        yield deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


@pytest.fixture
def node():
    found = shutil.which("node")
    if found is None:
        pytest.skip("Node.js is not installed: node-smpp cannot run")
    if not (INTEROP / "node_modules" / "smpp").is_dir():
        pytest.fail(
            "node-smpp is not installed in tests/interop: run `make interop` "
            "(npm ci in tests/interop)"
        )
    return found


@pytest.fixture
def node_smsc(node, tmp_path):
    """A function starting smsc.js with a corpus; each one is stopped at the end."""
    started = []

    def start(entries: list[dict]) -> _Lines:
        path = tmp_path / "corpus.json"
        path.write_text(json.dumps(entries, ensure_ascii=False))
        lines = _Lines()
        process = reactor.spawnProcess(
            lines,
            node,
            [node, str(INTEROP / "smsc.js"), str(path)],
            path=str(INTEROP),
            env=None,
        )
        started.append((process, lines))
        return lines

    yield start
    for process, lines in started:
        if not lines.ended.called:
            process.signalProcess("KILL")
            pytest_twisted.blockon(lines.ended)


@pytest.fixture
def daemon(tmp_path, receiver):
    started = []

    def start(smsc_port: int) -> Daemon:
        config = tmp_path / "connector.toml"
        config.write_text(
            config_text(
                spool=tmp_path / "spool.db",
                webhook_url=receiver.url,
                smsc_port=smsc_port,
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


def verified(receiver: Receiver) -> dict[str, dict]:
    """Each event by webhook-id, its signature checked by standardwebhooks."""
    return {
        request.headers["webhook-id"]: request.verify(TEST_SECRET)
        for request in receiver.requests
    }


@pytest_twisted.ensureDeferred
async def test_every_message_node_smpp_sends_arrives_decoded_and_signed(
    node_smsc, daemon, receiver
):
    entries, expected_events = corpus()
    smsc = node_smsc(entries)
    await until(lambda: smsc.of("listening"), "node-smpp listening")
    process = daemon(smsc.of("listening")[0]["port"])

    def finished() -> bool:
        if smsc.ended.called:
            raise AssertionError(f"smsc.js ended early:\n{smsc.stderr.decode()}")
        return bool(smsc.of("done"))

    try:
        await until(finished, "the corpus being acknowledged", timeout=30)
        await until(lambda: len(verified(receiver)) == expected_events, "events")
    except AssertionError as e:
        raise AssertionError(
            f"{e}\nsmsc.js said: {smsc.lines}\ndaemon log:\n{process.text()}"
        ) from None

    assert [line["command_status"] for line in smsc.of("deliver_sm_resp")] == [
        ESME_ROK
    ] * len(entries)
    assert smsc.of("bound")[0]["accepted"] is True
    events = list(verified(receiver).values())
    assert len(receiver.requests) == expected_events
    messages = {
        event["data"]["text"]: event["data"]
        for event in events
        if event["type"] == "message.received"
    }
    assert sorted(messages, key=str) == sorted(
        [
            GSM_TEXT,
            NODE_GSM_TEXT,
            UCS2_TEXT,
            LATIN1_TEXT,
            UDH8_TEXT,
            UDH16_TEXT,
            SAR_TEXT,
            PAYLOAD_TEXT,
            None,
            "*123#",
        ],
        key=str,
    )
    assert all("decode_error" not in data for data in messages.values())
    assert messages[GSM_TEXT]["encoding"] == "gsm7"
    assert messages[UCS2_TEXT]["encoding"] == "ucs2"
    assert messages[LATIN1_TEXT]["encoding"] == "latin1"
    assert messages[UDH8_TEXT]["parts"] == {
        "total": 2,
        "received": 2,
        "reference": 42,
        "method": "udh8",
        "complete": True,
    }
    assert messages[UDH16_TEXT]["parts"]["method"] == "udh16"
    assert messages[UDH16_TEXT]["parts"]["reference"] == 0xBEEF
    assert messages[UDH16_TEXT]["parts"]["received"] == 3
    assert messages[SAR_TEXT]["parts"]["method"] == "sar"
    assert messages[SAR_TEXT]["parts"]["reference"] == 300
    assert messages[None]["binary"] == "AQL/"
    assert messages["*123#"]["session"]["id"] == 0x2A
    assert messages["*123#"]["session"]["op"] == "pssr_indication"
    assert messages["*123#"]["smpp"]["tlvs"]["0x1401"] == "cafe"
    assert messages[GSM_TEXT]["from"] == {
        "address": "447700900123",
        "ton": 1,
        "npi": 1,
    }

    (receipt,) = [e["data"] for e in events if e["type"] == "receipt.received"]
    assert receipt["receipt"]["message_id"] == "4f2a"
    assert receipt["receipt"]["stat"] == "DELIVRD"

    await process.stop()
    await until(lambda: smsc.of("unbind"), "the daemon's unbind")
    assert "Traceback" not in process.text()
