"""
Any text a handset can send, split any way an SMSC splits it and delivered in
any order with repeats, decodes to exactly that text.

The texts are generated (hypothesis) over every alphabet the connector
decodes, the GSM national language tables included when `gsm7.encode` has
them; the segments come from `traffic.split`, go through the same
`decode.inspect` / `segment_record` / `build_event` steps the daemon uses,
and are also checked to survive the wire: `pdu.encode_deliver_sm` then
`pdu.Framer` and `pdu.parse_mo` give back the PDU that was meant.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2a_connector import decode, gsm7, pdu, traffic
from p2a_connector.models import Address

PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)

CODINGS = ["gsm7", "ucs2", "latin1", "ascii"]
METHODS = ["udh8", "udh16", "sar", "payload", None]
CONCATENATING = {"udh8", "udh16", "sar"}

# The GSM default table without its escape, and the extension table.
GSM_DEFAULT = [char for code, char in enumerate(gsm7.DEFAULT) if code != gsm7.ESCAPE]
GSM_EXTENSION = sorted(gsm7.EXTENSION.values())

# Astral characters become UTF-16 surrogate pairs in UCS2; they are drawn on
# their own as well so that most UCS2 texts have some.
ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))

CHARACTERS = {
    "gsm7": st.sampled_from(GSM_DEFAULT + GSM_EXTENSION),
    "ucs2": st.one_of(ANY_CHARACTER, ASTRAL),
    "latin1": st.characters(max_codepoint=0xFF),
    "ascii": st.characters(max_codepoint=0x7F),
}

# At most 400 characters and at least 8 octets a segment keep every split
# within the 255 segments a concatenation header can count.
MAX_CHARACTERS = 400
SIZES = st.one_of(st.none(), st.integers(min_value=8, max_value=160))

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def holds(check, *args) -> None:
    """
    Run the hypothesis property ``check(*args, data)``.

    The tests hand their parameters in here rather than stacking ``@given``
    under ``@pytest.mark.parametrize``: pytest-twisted wraps a hypothesis
    test's inner function once per parametrized item, and the wrappers of
    a shared function nest and fail.
    """

    @FAST
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        check(*args, data)

    run()


def texts(coding: str, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(CHARACTERS[coding], min_size=min_size, max_size=MAX_CHARACTERS)


def records_of(parts: list[traffic.Part]) -> list[dict]:
    """The spool records the daemon would keep for these PDUs, in this order."""
    records = []
    for received_at, part in enumerate(parts, start=1):
        mo = part.deliver_sm(PHONE, SHORT_CODE)
        records.append(
            decode.segment_record(
                mo,
                decode.inspect(mo),
                operator="op1",
                bind="op1-a",
                received_at=float(received_at),
            )
        )
    return records


def event_data(records: list[dict], complete: bool = True) -> dict:
    _, envelope = decode.build_event(
        records,
        event_id="msg_prop",
        options=decode.DecodeOptions(),
        complete=complete,
        completed_at=1e9,
    )
    return envelope["data"]


def delivered(draw, parts: list[traffic.Part]) -> list[traffic.Part]:
    """The parts shuffled, with some of them sent again (an SMSC retrying)."""
    shuffled = list(draw(st.permutations(parts)))
    repeats = draw(st.lists(st.sampled_from(parts), max_size=len(parts)))
    for repeat in repeats:
        shuffled.insert(draw(st.integers(0, len(shuffled))), repeat)
    return shuffled


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("coding", CODINGS)
def test_any_text_split_and_shuffled_with_repeats_decodes_to_itself(coding, method):
    holds(_any_text_split_and_shuffled_with_repeats_decodes_to_itself, coding, method)


def _any_text_split_and_shuffled_with_repeats_decodes_to_itself(coding, method, data):
    text = data.draw(texts(coding))
    reference = data.draw(st.integers(0, 0xFF if method == "udh8" else 0xFFFF))
    size = data.draw(SIZES)
    whole = data.draw(st.booleans())
    parts = traffic.split(text, coding, method, reference, size=size, whole=whole)

    got = event_data(records_of(delivered(data.draw, parts)))

    assert got["text"] == text
    assert got["encoding"] == coding
    assert got["data_coding"] == traffic.DATA_CODING[coding]
    assert "decode_error" not in got
    assert got["parts"]["total"] == len(parts)
    assert got["parts"]["received"] == len(parts)
    assert got["parts"]["complete"] is True
    if method in CONCATENATING and len(parts) > 1:
        assert got["parts"]["method"] == method
        assert got["parts"]["reference"] == reference
    else:
        assert got["parts"]["method"] is None
        assert got["parts"]["reference"] is None


STRADDLING = {
    "gsm7": st.text(st.sampled_from(GSM_EXTENSION + ["a"]), min_size=8, max_size=200),
    "ucs2": st.text(st.one_of(ASTRAL, st.just("a")), min_size=8, max_size=200),
}


def cuts_inside_a_character(data: bytes, coding: str, size: int) -> bool:
    """Whether cutting ``data`` every ``size`` octets splits an escape or a pair."""
    pieces = traffic.chunks(data, coding, size, whole=False)
    if coding == "ucs2":
        offset = 0
        for piece in pieces[:-1]:
            offset += len(piece)
            if offset % 2 or 0xD8 <= data[offset - 2] <= 0xDB:
                return True
        return False
    # The encoder never writes two escapes in a row, so a piece ending in
    # one has cut an escape from the code it announces.
    return any(piece[-1] == gsm7.ESCAPE for piece in pieces[:-1])


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar"])
@pytest.mark.parametrize("coding", sorted(STRADDLING))
def test_a_character_cut_between_two_segments_is_joined(coding, method):
    holds(_a_character_cut_between_two_segments_is_joined, coding, method)


def _a_character_cut_between_two_segments_is_joined(coding, method, data):
    text = data.draw(STRADDLING[coding])
    size = data.draw(st.integers(min_value=3, max_value=41))
    encoded = traffic.encode(text, coding)
    assume(cuts_inside_a_character(encoded, coding, size))
    parts = traffic.split(text, coding, method, reference=9, size=size, whole=False)

    got = event_data(records_of(delivered(data.draw, parts)))

    assert got["text"] == text
    assert "decode_error" not in got


def text_pieces(text: str, coding: str, size: int) -> list[str]:
    """
    The characters in each piece of a whole cut, found by encoding them one
    by one, so that the expectation does not rest on the decoder under test.
    """
    characters = iter(text)
    found = []
    for piece in traffic.chunks(traffic.encode(text, coding), coding, size):
        taken = ""
        octets = 0
        while octets < len(piece):
            character = next(characters)
            taken += character
            octets += len(traffic.encode(character, coding))
        assert octets == len(piece), "a whole cut fell inside a character"
        found.append(taken)
    return found


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar"])
@pytest.mark.parametrize("coding", CODINGS)
def test_missing_segments_leave_exactly_the_text_of_those_that_came(coding, method):
    holds(_missing_segments_leave_exactly_the_text_of_those_that_came, coding, method)


def _missing_segments_leave_exactly_the_text_of_those_that_came(coding, method, data):
    text = data.draw(texts(coding, min_size=30))
    size = data.draw(st.integers(min_value=8, max_value=40))
    parts = traffic.split(text, coding, method, reference=5, size=size)
    assume(len(parts) > 2)
    kept = sorted(
        data.draw(
            st.sets(st.integers(0, len(parts) - 1), min_size=1, max_size=len(parts) - 1)
        )
    )
    pieces = text_pieces(text, coding, size)
    expected = "".join(pieces[index] for index in kept)

    got = event_data(
        records_of(delivered(data.draw, [parts[i] for i in kept])), complete=False
    )

    assert got["text"] == expected
    assert got["parts"]["total"] == len(parts)
    assert got["parts"]["received"] == len(kept)
    assert got["parts"]["complete"] is False


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("coding", CODINGS)
def test_every_part_survives_the_wire_unchanged(coding, method):
    holds(_every_part_survives_the_wire_unchanged, coding, method)


def _every_part_survives_the_wire_unchanged(coding, method, data):
    text = data.draw(texts(coding))
    size = data.draw(SIZES)
    parts = traffic.split(text, coding, method, reference=0x34, size=size)
    assume(all(len(part.short_message) <= 0xFF for part in parts))
    framer = pdu.Framer(1 << 20)

    for sequence_number, part in enumerate(parts, start=1):
        meant = part.deliver_sm(PHONE, SHORT_CODE, sequence_number)
        framer.feed(
            pdu.encode_deliver_sm(
                sequence_number,
                source=PHONE,
                destination=SHORT_CODE,
                esm_class=part.esm_class,
                data_coding=part.data_coding,
                short_message=part.short_message,
                tlvs=part.tlvs,
            )
        )
        header, body = framer.next_frame()

        assert pdu.parse_mo(header.command_id, header.sequence_number, body) == meant
    assert framer.next_frame() is None


# --- national language shift tables -----------------------------------------

NATIONAL = hasattr(gsm7, "encode") and hasattr(gsm7, "LOCKING")
national = pytest.mark.skipif(
    not NATIONAL, reason="gsm7 has no national language tables (gsm7.encode)"
)


def national_characters(locking: int, single: int) -> list[str]:
    """Every character the two tables can write (the escape and gaps left out)."""
    table = gsm7.LOCKING.get(locking, gsm7.DEFAULT)
    shift = gsm7.SINGLE.get(single, gsm7.EXTENSION)
    found = {char for code, char in enumerate(table) if code != gsm7.ESCAPE}
    found |= set(shift.values())
    found.discard(gsm7.REPLACEMENT)
    return sorted(found)


def national_parts(
    text: str, locking: int, single: int, method: str | None, size: int, whole: bool
) -> list[traffic.Part]:
    """
    The segments a handset sends with national language shifts: every one
    names its tables in the UDH (IEI 0x25 locking, 0x24 single shift).
    """
    data = gsm7.encode(text, locking=locking, single=single)
    shifts = b""
    if single:
        shifts += bytes((0x24, 1, single))
    if locking:
        shifts += bytes((0x25, 1, locking))
    pieces = traffic.chunks(data, "gsm7", size, whole) or [b""]
    if method is None:
        pieces = [data]
    total = len(pieces)

    parts = []
    for seqnum, piece in enumerate(pieces, start=1):
        elements = shifts
        tlvs: tuple[tuple[int, bytes], ...] = ()
        if method == "udh8":
            elements = bytes((0x00, 3, 0x42, total, seqnum)) + shifts
        elif method == "udh16":
            elements = bytes((0x08, 4, 0x12, 0x34, total, seqnum)) + shifts
        elif method == "sar":
            tlvs = (
                (traffic.TAG_SAR_MSG_REF_NUM, b"\x12\x34"),
                (traffic.TAG_SAR_TOTAL_SEGMENTS, bytes((total,))),
                (traffic.TAG_SAR_SEGMENT_SEQNUM, bytes((seqnum,))),
            )
        udh = bytes((len(elements),)) + elements if elements else b""
        esm_class = traffic.UDHI if udh else 0
        parts.append(traffic.Part(udh + piece, 0x00, esm_class, tlvs))
    return parts


LANGUAGE_IDS = st.sampled_from(
    [0, *sorted(getattr(gsm7, "LANGUAGES", {}))] if NATIONAL else [0]
)


@national
@pytest.mark.parametrize("method", ["udh8", "udh16", "sar", None], ids=str)
def test_national_language_text_decodes_to_itself(method):
    holds(_national_language_text_decodes_to_itself, method)


def _national_language_text_decodes_to_itself(method, data):
    locking = data.draw(LANGUAGE_IDS, label="locking")
    single = data.draw(LANGUAGE_IDS, label="single")
    characters = national_characters(locking, single)
    text = data.draw(
        st.text(st.sampled_from(characters), max_size=300 if method else 100)
    )
    size = data.draw(st.integers(min_value=8, max_value=150))
    whole = data.draw(st.booleans())
    parts = national_parts(text, locking, single, method, size, whole)

    got = event_data(records_of(delivered(data.draw, parts)))

    assert got["text"] == text
    assert got["encoding"] == "gsm7"
    assert "decode_error" not in got
    assert got["parts"]["total"] == len(parts)
    assert got["parts"]["received"] == len(parts)
