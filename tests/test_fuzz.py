"""
No input takes a bind down: random and mutated PDUs, in process and on a
real bind.

The cases come from bench/fuzz.py, which runs a million of them on demand;
here a bounded number runs in the suite.  In process, only the refusals
(`pdu.PDUError`, `decode.DecodeError`) may come out of the reader and the
decoder, and no case may take more than a second.  On a bind, an
`ESMEProtocol` over real TCP to the simulator gets streams of such PDUs
mixed with enquire_link; every PDU gets the answer its bytes call for, the
bind then still answers enquire_link, and a stream corrupt at the framing
level closes that connection, with a generic_nack, and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
import sys
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from p2a_connector import decode, pdu
from p2a_connector.models import MOPdu
from p2a_connector.session import ESMEProtocol
from p2a_connector.smpp_status import ESME_ROK, status_code


def _load_fuzz():
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("p2a_bench_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()

SEED = 20261203
IN_PROCESS_CASES = 20_000
BATCHES = 60
PDUS_PER_BATCH = 10
# Probes use sequence numbers that a mutated PDU is unlikely to carry.
PROBE_BASE = 0x7FFF0000


def test_the_seed_corpus_is_valid_traffic():
    valid = fuzz.seeds()

    results = [fuzz.check(stream) for stream in valid]

    assert len(valid) > 40
    assert results == [(1, 0)] * len(valid)


def test_random_and_mutated_pdus_raise_only_the_refusals_and_never_hang():
    report = fuzz.run(IN_PROCESS_CASES, SEED, limit=1.0)

    assert report.cases == IN_PROCESS_CASES
    assert [finding.describe() for finding in report.findings] == []
    assert report.slowest < 1.0
    # The cases reach the decoder, not only the framing checks.
    assert report.events > IN_PROCESS_CASES // 4
    assert report.refused > IN_PROCESS_CASES // 4


# --- on a real bind ---------------------------------------------------------


def _answer(mo: MOPdu, session: ESMEProtocol):
    """What the daemon's intake does, without a spool: decode and acknowledge."""
    try:
        inspected = decode.inspect(mo)
    except decode.DecodeError as e:
        return succeed(e.status)
    record = decode.segment_record(
        mo, inspected, operator="op1", bind=session.bind_name, received_at=1.0
    )
    decode.build_event(
        [json.loads(json.dumps(record))],
        event_id="msg_fuzz",
        options=decode.DecodeOptions(),
        complete=inspected.concat is None,
        completed_at=2.0,
    )
    return succeed(ESME_ROK)


@attrs.frozen
class Answer:
    command_id: int
    sequence_number: int
    status: int


@attrs.define
class Expected:
    """
    What the ESME must do with the bytes sent so far, worked out by framing
    them with `pdu.Framer` and answering each frame as SMPP requires.

    ``outcome`` is ``open`` (every frame answered, nothing left over),
    ``partial`` (a PDU still waits for ``missing`` octets), ``corrupt``
    (the framing broke: generic_nack and close) or ``unbound`` (an unbind
    came: unbind_resp and close).
    """

    max_pdu_size: int
    framer: pdu.Framer = attrs.field(init=False)
    sent: bytearray = attrs.field(init=False, factory=bytearray)
    framed: int = attrs.field(init=False, default=0)
    answers: list[Answer] = attrs.field(init=False, factory=list)
    outcome: str = attrs.field(init=False, default="open")
    missing: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.framer = pdu.Framer(self.max_pdu_size)

    def feed(self, data: bytes) -> None:
        self.sent += data
        self.framer.feed(data)
        while True:
            try:
                received = self.framer.next_frame()
            except pdu.PDUError as e:
                sequence_number = self.framer.sequence_number_of_partial()
                self.answers.append(Answer(pdu.GENERIC_NACK, sequence_number, e.status))
                self.outcome = "corrupt"
                return
            if received is None:
                break
            header, body = received
            self.framed += header.command_length
            self._answer(header, body)
            if header.command_id == pdu.UNBIND:
                self.outcome = "unbound"
                return

        buffered = len(self.sent) - self.framed
        if buffered == 0:
            self.outcome = "open"
            self.missing = 0
            return
        self.outcome = "partial"
        if buffered < 4:
            self.missing = 4 - buffered
        else:
            (length,) = struct.unpack_from(">I", self.sent, self.framed)
            self.missing = length - buffered

    def _answer(self, header: pdu.Header, body: bytes) -> None:
        seq = header.sequence_number
        command_id = header.command_id
        if header.is_response or command_id == pdu.ALERT_NOTIFICATION:
            return
        if command_id in (pdu.DELIVER_SM, pdu.DATA_SM):
            answer = Answer(
                command_id | pdu.RESPONSE_BIT, seq, self._status(header, body)
            )
        elif command_id in (pdu.ENQUIRE_LINK, pdu.UNBIND):
            answer = Answer(command_id | pdu.RESPONSE_BIT, seq, ESME_ROK)
        else:
            answer = Answer(pdu.GENERIC_NACK, seq, status_code("ESME_RINVCMDID"))
        self.answers.append(answer)

    @staticmethod
    def _status(header: pdu.Header, body: bytes) -> int:
        try:
            mo = pdu.parse_mo(header.command_id, header.sequence_number, body)
            decode.inspect(mo)
        except (pdu.PDUError, decode.DecodeError) as e:
            return e.status
        return ESME_ROK


def _batch(rng: random.Random, valid: list[bytes]) -> bytes:
    """
    Broken and valid PDUs with enquire_link between some of them.

    In most batches each PDU's command_length is then made true again, so
    that the broken bodies reach the parser instead of ending the stream.
    """
    framed = rng.random() < 0.7
    pieces = []
    for _ in range(PDUS_PER_BATCH):
        piece = fuzz.one_pdu(rng, valid)
        if framed:
            piece = _reframed(piece)
        pieces.append(piece)
        if rng.random() < 0.3:
            pieces.append(pdu.encode_enquire_link(rng.randrange(1, PROBE_BASE)))
    return b"".join(pieces)


def _reframed(data: bytes) -> bytes:
    """``data`` with a command_length that matches it (padded to a header)."""
    framed = bytearray(data.ljust(pdu.HEADER_SIZE, b"\0"))
    struct.pack_into(">I", framed, 0, len(framed))
    return bytes(framed)


def _answers_since(simulator, start: int) -> list[Answer]:
    return [
        Answer(received.command_id, received.sequence_number, received.status)
        for received in simulator.received[start:]
    ]


@pytest.fixture
def bind_to(smpp_simulator, smpp_bind):
    """A function opening a new bound ESME session to the simulator."""
    config = smpp_bind()
    port = smpp_simulator.listening.getHost().port
    opened: list[ESMEProtocol] = []

    async def connect() -> tuple[ESMEProtocol, object]:
        esme = ESMEProtocol(config, _answer, reactor)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await connectProtocol(endpoint, esme)
        opened.append(esme)
        await esme.bindESME()
        return esme, await smpp_simulator.whenBound()

    yield config, connect
    for esme in opened:
        if esme.state != "closed":
            esme.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_bind_answers_every_broken_pdu_and_closes_only_a_corrupt_stream(
    smpp_simulator, bind_to, smpp_wait, smpp_logged_failures
):
    config, connect = bind_to
    rng = random.Random(SEED)
    valid = fuzz.seeds()
    outcomes: dict[str, int] = {}
    esme = None

    for batch in range(BATCHES):
        if esme is None or esme.state == "closed":
            esme, smsc = await connect()
            expected = Expected(config.max_pdu_size)
            start = len(smpp_simulator.received)

        probe = PROBE_BASE + batch
        data = _batch(rng, valid) + pdu.encode_enquire_link(probe)
        expected.feed(data)
        while expected.outcome == "partial":
            # Complete the PDU the stream left open, then probe again.
            more = b"\0" * expected.missing
            expected.feed(more)
            if expected.outcome == "open":
                more += pdu.encode_enquire_link(probe)
                expected.feed(pdu.encode_enquire_link(probe))
            data += more
        smsc.send_raw(data)
        outcomes[expected.outcome] = outcomes.get(expected.outcome, 0) + 1

        if expected.outcome in ("corrupt", "unbound"):
            await esme.whenClosed().addTimeout(5, reactor)
            await smsc.whenClosed().addTimeout(5, reactor)
            got = _answers_since(smpp_simulator, start)
            assert got[: len(expected.answers)] == expected.answers
            esme = None
            continue

        answered = Answer(pdu.ENQUIRE_LINK | pdu.RESPONSE_BIT, probe, ESME_ROK)
        await smpp_wait(
            lambda a=answered, s=start: a in _answers_since(smpp_simulator, s)
        )
        assert _answers_since(smpp_simulator, start) == expected.answers
        assert esme.state == "bound"

    assert smpp_logged_failures == []
    assert sum(outcomes.values()) == BATCHES
    assert outcomes.get("open", 0) > 0
    assert outcomes.get("corrupt", 0) > 0
