"""
Fuzz the connector's PDU reader and decoder with valid and broken MO PDUs.

    .venv/bin/python bench/fuzz.py --cases 1000000 --seed 1

Each case is a byte stream of one to three deliver_sm or data_sm PDUs: valid
ones built with `pdu.encode_deliver_sm` / `pdu.encode_data_sm` from
`traffic.split` parts and from TLV sets an SMSC sends (SAR, USSD, vendor,
message_payload, receipts, ports), PDUs with random fields, random UDH and
random TLVs, or any of those mutated (bit flips, bytes inserted, deleted or
overwritten, lengths corrupted, truncation).  The stream goes through what the
daemon does with it: `pdu.Framer`, `pdu.parse_mo`, `decode.inspect`,
`decode.segment_record` (kept as JSON, as the spool keeps it) and
`decode.build_event`, whose envelope must be JSON too.

Only `pdu.PDUError` and `decode.DecodeError` may come out of that: they are
the answers the session sends.  Anything else is a finding, and so is a case
that takes longer than ``--limit`` seconds (an alarm interrupts it, so a hang
is reported rather than waited for).  The run prints the cases per second,
the findings (with the input in hex, to replay), and the slowest case; it
exits with status 1 when there was a finding.

tests/test_fuzz.py runs the same cases, fewer of them, in the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import attrs

from p2a_connector import decode, intake, pdu, traffic
from p2a_connector.models import Address

MAX_PDU_SIZE = 65536
ALPHABETS = ("gsm7", "latin1", "ascii")

PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)

TAG_SOURCE_PORT = 0x020A
TAG_DESTINATION_PORT = 0x020B
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427
TAG_USSD_SERVICE_OP = 0x0501
TAG_ITS_SESSION_INFO = 0x1383
SAR_TAGS = (0x020C, 0x020E, 0x020F)
# Tags the decoder reads values from, so random TLVs hit its parsing.
INTERESTING_TAGS = (
    *SAR_TAGS,
    TAG_SOURCE_PORT,
    TAG_DESTINATION_PORT,
    TAG_RECEIPTED_MESSAGE_ID,
    TAG_NETWORK_ERROR_CODE,
    TAG_MESSAGE_PAYLOAD,
    TAG_MESSAGE_STATE,
    TAG_USSD_SERVICE_OP,
    TAG_ITS_SESSION_INFO,
    0x001D,
    0x1401,
    0x1500,
    0xFFFF,
)
# UDH information elements: concatenation, ports, national language shifts.
INTERESTING_IEIS = (0x00, 0x08, 0x04, 0x05, 0x24, 0x25, 0x01, 0x70, 0xFF)
INTERESTING_CODINGS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 0x11, 0x18, 0xF0)

TEXTS = {
    "gsm7": "Hi [ok] {€} ~^|\\ @£$¥ èéùìò ÄÖÑÜ§ 0123 " * 5,
    "ucs2": "Привет 👋🏽 你好 🎌 — ok " * 6,
    "latin1": "Grüße aus Köln, ça va? " * 8,
    "ascii": "plain ascii text 0123456789 " * 8,
}
RECEIPT = (
    b"id:4f2a sub:001 dlvrd:001 submit date:2412031749 "
    b"done date:2412031750 stat:DELIVRD err:000 text:Hi"
)


class Hang(Exception):
    """A case ran past its time limit."""


@attrs.frozen
class Finding:
    """An input that made the reader or the decoder misbehave."""

    case: int
    error: str
    stream: bytes

    def describe(self) -> str:
        return f"case {self.case}: {self.error}\n  input: {self.stream.hex()}"


@attrs.define
class Report:
    cases: int = 0
    events: int = 0
    refused: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_case: int = -1
    findings: list[Finding] = attrs.field(factory=list)


# --- what the daemon does with a stream -----------------------------------


def check(stream: bytes) -> tuple[int, int]:
    """
    Feed ``stream`` to a Framer and every frame to the decoder, as a bind
    would: a refused PDU is answered and the next one read, and a corrupt
    stream (the Framer's PDUError) ends the connection.

    :returns: how many events were built and how many PDUs were refused.
    """
    framer = pdu.Framer(MAX_PDU_SIZE)
    framer.feed(stream)
    messages: dict[str, list[dict]] = {}
    refused = 0
    while True:
        try:
            received = framer.next_frame()
        except pdu.PDUError:
            refused += 1
            break
        if received is None:
            break
        try:
            key, record = _record(*received)
        except (pdu.PDUError, decode.DecodeError):
            refused += 1
            continue
        messages.setdefault(key or f"single-{len(messages)}", []).append(record)

    for records in messages.values():
        _build(records)
    return len(messages), refused


def _record(header: pdu.Header, body: bytes) -> tuple[str | None, dict]:
    mo = pdu.parse_mo(header.command_id, header.sequence_number, body)
    inspected = decode.inspect(mo)
    record = decode.segment_record(
        mo,
        inspected,
        operator="op1",
        bind="op1-a",
        received_at=1_700_000_000.0 + header.sequence_number % 1000,
    )
    key = None
    # The spool keeps records as JSON and builds events from what it reads.
    kept = json.loads(json.dumps(record))
    if inspected.concat is not None:
        key = decode.reassembly_key("op1", mo, inspected.concat)
    else:
        _single_as_read_back(kept, inspected)
    return key, kept


def _single_as_read_back(record: dict, inspected: decode.Inspected) -> None:
    """A message on its own, built from the PDU at once (as the intake
    does), is the event its record read back makes."""
    for complete in (True, False):
        options = _options(record)
        direct = decode.build_single_event(
            record, inspected, complete=complete, **options
        )
        read_back = decode.build_event([record], complete=complete, **options)
        if direct != read_back:
            raise AssertionError(f"built at once {direct} != read back {read_back}")
        _encoded(direct[1])


def _options(record: dict) -> dict:
    # The operator's alphabet for data_coding 0 varies with the input.
    alphabet = ALPHABETS[len(record["user_data"]) % len(ALPHABETS)]
    return {
        "event_id": "msg_fuzz",
        "options": decode.DecodeOptions(alphabet=alphabet),
        "completed_at": 1_700_000_100.0,
    }


def _build(records: list[dict]) -> None:
    for complete in (True, False):
        event_type, envelope = decode.build_event(
            records, complete=complete, **_options(records[0])
        )
        _encoded(envelope)
        if event_type == "message.received":
            text = envelope["data"]["text"]
            if text is not None and not isinstance(text, str):
                raise AssertionError(f"text is {type(text).__name__}, not str")


def _encoded(envelope: dict) -> None:
    """The webhook body the intake encodes is the one json.dumps makes."""
    body = intake.encode_body(envelope)
    expected = json.dumps(
        envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()
    if body != expected:
        raise AssertionError(f"encoded {body!r} != json.dumps {expected!r}")


# --- valid PDUs an SMSC sends ---------------------------------------------


def seeds() -> list[bytes]:
    """Valid deliver_sm and data_sm PDUs of every shape the connector meets."""
    found = []
    for coding, text in TEXTS.items():
        for method in ("udh8", "udh16", "sar", "payload", None):
            # One short_message holds at most 255 octets.
            sample = text[:60] if method is None else text
            for part in traffic.split(
                sample, coding, method, reference=0x34 if method == "udh8" else 0x1234
            ):
                found.append(_deliver_sm(part))
        found.append(
            pdu.encode_data_sm(
                7,
                source=PHONE,
                destination=SHORT_CODE,
                data_coding=traffic.DATA_CODING[coding],
                tlvs=[(TAG_MESSAGE_PAYLOAD, traffic.encode(text, coding))],
            )
        )

    ussd = [(TAG_USSD_SERVICE_OP, b"\x01"), (TAG_ITS_SESSION_INFO, b"\x2a\x00")]
    vendor = [(0x1401, b"\xca\xfe"), (0x1500, b"\x00" * 3), (0xFFFF, b"")]
    ports = [(TAG_SOURCE_PORT, b"\x23\xf0"), (TAG_DESTINATION_PORT, b"\x0b\x84")]
    receipt_tlvs = [
        (TAG_RECEIPTED_MESSAGE_ID, b"4f2a\x00"),
        (TAG_MESSAGE_STATE, b"\x02"),
        (TAG_NETWORK_ERROR_CODE, b"\x03\x00\x01"),
    ]
    gsm = traffic.encode("*100#", "gsm7")
    found += [
        _encode(short_message=gsm, tlvs=ussd),
        _encode(short_message=b"", tlvs=[*ussd, (TAG_MESSAGE_PAYLOAD, gsm)]),
        _encode(short_message=gsm, tlvs=vendor),
        _encode(short_message=b"\x01\x02\xff", data_coding=4, tlvs=ports),
        _encode(short_message=RECEIPT, esm_class=0x04),
        _encode(short_message=RECEIPT, esm_class=0x04, tlvs=receipt_tlvs),
        _encode(short_message=b"", tlvs=receipt_tlvs),
        _encode(
            esm_class=0x40,
            data_coding=4,
            short_message=bytes.fromhex("0605040b8423f0") + b"wap push",
        ),
        _encode(
            esm_class=0x40,
            short_message=bytes.fromhex("0b0003aa0201240101250101") + gsm,
        ),
        pdu.encode_data_sm(
            9,
            source=PHONE,
            destination=SHORT_CODE,
            tlvs=[*ussd, (TAG_MESSAGE_PAYLOAD, gsm), *vendor],
        ),
    ]
    return found


def _deliver_sm(part: traffic.Part) -> bytes:
    return _encode(
        esm_class=part.esm_class,
        data_coding=part.data_coding,
        short_message=part.short_message,
        tlvs=part.tlvs,
    )


def _encode(**fields) -> bytes:
    return pdu.encode_deliver_sm(3, source=PHONE, destination=SHORT_CODE, **fields)


# --- PDUs with random fields ----------------------------------------------


def random_udh(rng: random.Random) -> bytes:
    """A UDH of random elements, its lengths right or (sometimes) wrong."""
    body = bytearray()
    for _ in range(rng.randint(0, 4)):
        iei = rng.choice(INTERESTING_IEIS) if rng.random() < 0.8 else rng.randrange(256)
        if iei == 0x00 and rng.random() < 0.6:
            data = bytes([rng.randrange(256), rng.randint(0, 4), rng.randint(0, 5)])
        elif iei == 0x08 and rng.random() < 0.6:
            data = struct.pack(">HBB", rng.randrange(65536), *_numbers(rng))
        else:
            data = rng.randbytes(rng.randint(0, 6))
        length = len(data) if rng.random() < 0.9 else rng.randrange(256)
        body += bytes([iei, length]) + data
    length = len(body) if rng.random() < 0.9 else rng.randrange(256)
    return bytes([length]) + bytes(body)


def _numbers(rng: random.Random) -> tuple[int, int]:
    total = rng.randint(0, 4)
    return total, rng.randint(0, total + 1)


def random_tlvs(rng: random.Random) -> list[tuple[int, bytes]]:
    tlvs = []
    for _ in range(rng.randint(0, 5)):
        tag = (
            rng.choice(INTERESTING_TAGS)
            if rng.random() < 0.7
            else rng.randrange(1 << 16)
        )
        if tag == TAG_MESSAGE_PAYLOAD:
            value = random_user_data(rng)
        elif tag == TAG_USSD_SERVICE_OP and rng.random() < 0.3:
            value = str(rng.randrange(100)).encode() + b"\x00" * rng.randint(0, 1)
        else:
            value = rng.randbytes(rng.choice((0, 1, 1, 2, 2, 3, 4, 5, 8)))
        tlvs.append((tag, value))
    return tlvs


def random_user_data(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return random_udh(rng) + rng.randbytes(rng.randint(0, 40))
    if choice < 0.5:
        return RECEIPT[: rng.randint(0, len(RECEIPT))]
    if choice < 0.6:
        return bytes([0x1B]) * rng.randint(1, 9)
    return rng.randbytes(rng.randint(0, 200))


def random_pdu(rng: random.Random) -> bytes:
    """A deliver_sm or data_sm whose fields are random but fit the wire format."""
    esm_class = rng.choice((0, 0x40, 0x04, 0x24, 0x44, 0x08)) | (
        rng.randrange(256) if rng.random() < 0.3 else 0
    )
    data_coding = (
        rng.choice(INTERESTING_CODINGS) if rng.random() < 0.8 else rng.randrange(256)
    )
    source = Address(_digits(rng, 20), rng.randrange(256), rng.randrange(256))
    destination = Address(_digits(rng, 20), rng.randrange(256), rng.randrange(256))
    tlvs = random_tlvs(rng)
    if rng.random() < 0.25:
        return pdu.encode_data_sm(
            rng.randrange(1, 1 << 31),
            service_type=_digits(rng, 5),
            source=source,
            destination=destination,
            esm_class=esm_class,
            registered_delivery=rng.randrange(256),
            data_coding=data_coding,
            tlvs=tlvs,
        )
    short_message = b"" if rng.random() < 0.15 else random_user_data(rng)[:255]
    return pdu.encode_deliver_sm(
        rng.randrange(1, 1 << 31),
        service_type=_digits(rng, 5),
        source=source,
        destination=destination,
        esm_class=esm_class,
        protocol_id=rng.randrange(256),
        priority_flag=rng.randrange(256),
        registered_delivery=rng.randrange(256),
        data_coding=data_coding,
        short_message=short_message,
        tlvs=tlvs,
    )


def _digits(rng: random.Random, most: int) -> str:
    return "".join(rng.choice("0123456789+*#") for _ in range(rng.randint(0, most)))


# --- mutations --------------------------------------------------------------


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 4)):
        index = rng.randrange(len(data))
        data[index] ^= 1 << rng.randrange(8)


def _overwrite(rng: random.Random, data: bytearray) -> None:
    index = rng.randrange(len(data))
    data[index] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x1B, 0x40, rng.randrange(256)))


def _insert(rng: random.Random, data: bytearray) -> None:
    index = rng.randrange(len(data) + 1)
    data[index:index] = rng.randbytes(rng.randint(1, 8))


def _delete(rng: random.Random, data: bytearray) -> None:
    index = rng.randrange(len(data))
    del data[index : index + rng.randint(1, 8)]


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)) :]


def _command_length(rng: random.Random, data: bytearray) -> None:
    """Make command_length disagree with the PDU it heads."""
    if len(data) < 4:
        return
    (length,) = struct.unpack_from(">I", data)
    length = rng.choice(
        (
            length + rng.randint(-8, 8),
            rng.randrange(pdu.HEADER_SIZE),
            rng.randrange(MAX_PDU_SIZE),
            rng.randrange(1 << 32),
            MAX_PDU_SIZE,
            MAX_PDU_SIZE + 1,
        )
    )
    struct.pack_into(">I", data, 0, length % (1 << 32))


def _body_length(rng: random.Random, data: bytearray) -> None:
    """Overwrite a length-like octet: sm_length or a TLV's length."""
    if len(data) <= pdu.HEADER_SIZE:
        return
    index = rng.randrange(pdu.HEADER_SIZE, len(data))
    data[index] = rng.choice(
        (0, 1, 0xFF, data[index] + 1 & 0xFF, data[index] - 1 & 0xFF)
    )


def _command_id(rng: random.Random, data: bytearray) -> None:
    if len(data) < 8:
        return
    command_id = rng.choice(
        (
            pdu.DELIVER_SM,
            pdu.DATA_SM,
            pdu.ENQUIRE_LINK,
            0x80000005,
            rng.randrange(1 << 32),
        )
    )
    struct.pack_into(">I", data, 4, command_id)


MUTATIONS: tuple[Callable[[random.Random, bytearray], None], ...] = (
    _flip_bits,
    _overwrite,
    _insert,
    _delete,
    _truncate,
    _command_length,
    _body_length,
    _command_id,
)


def mutate(rng: random.Random, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        rng.choice(MUTATIONS)(rng, data)
    return bytes(data)


def one_pdu(rng: random.Random, valid: list[bytes]) -> bytes:
    """A valid, random or mutated PDU, or plain noise."""
    choice = rng.random()
    if choice < 0.15:
        return rng.choice(valid)
    if choice < 0.35:
        return random_pdu(rng)
    if choice < 0.65:
        return mutate(rng, rng.choice(valid))
    if choice < 0.97:
        return mutate(rng, random_pdu(rng))
    return rng.randbytes(rng.randint(0, 64))


def streams(seed: int, valid: list[bytes] | None = None) -> Iterator[bytes]:
    """An endless, reproducible sequence of cases for ``seed``."""
    rng = random.Random(seed)
    valid = valid if valid is not None else seeds()
    while True:
        yield b"".join(one_pdu(rng, valid) for _ in range(rng.choice((1, 1, 2, 3))))


# --- running ----------------------------------------------------------------


def _alarm(signum, frame) -> None:
    raise Hang()


def run(cases: int, seed: int, limit: float = 1.0) -> Report:
    """Run ``cases`` cases from ``seed``; every case gets at most ``limit`` s."""
    report = Report()
    previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    try:
        for case, stream in zip(range(cases), streams(seed)):
            _one(report, case, stream, limit)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    report.seconds = time.perf_counter() - started
    return report


def _one(report: Report, case: int, stream: bytes, limit: float) -> None:
    report.cases += 1
    began = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        events, refused = check(stream)
        report.events += events
        report.refused += refused
    except Hang:
        report.findings.append(Finding(case, f"took longer than {limit} s", stream))
    except Exception:  # noqa: BLE001 - any other exception is what we look for
        error = traceback.format_exc(limit=-3).strip()
        report.findings.append(Finding(case, error, stream))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    took = time.perf_counter() - began
    if took > report.slowest:
        report.slowest = took
        report.slowest_case = case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/fuzz.py",
        description="Fuzz pdu.Framer, pdu.parse_mo and the decoder in process.",
    )
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--limit", type=float, default=1.0, help="seconds a case may take (1)"
    )
    args = parser.parse_args(argv)

    report = run(args.cases, args.seed, args.limit)

    print(f"cases:       {report.cases} (seed {args.seed})")
    print(
        f"time:        {report.seconds:.1f} s, {report.cases / report.seconds:,.0f} cases/s"
    )
    print(f"events:      {report.events} built, {report.refused} PDUs refused")
    print(f"slowest:     case {report.slowest_case}, {report.slowest * 1000:.2f} ms")
    print(f"exceptions:  {len(report.findings)}")
    for finding in report.findings[:20]:
        print(finding.describe())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
