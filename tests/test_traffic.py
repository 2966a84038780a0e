"""
Text split as a phone would, then reassembled and decoded: the same text.

These tie `traffic` (what the simulator sends) to `decode` (what the
connector makes of it), for every alphabet and concatenation form.
"""

import random

import pytest

from p2a_connector import decode, traffic
from p2a_connector.models import Address

TEXTS = {
    "gsm7": "Hello [world] {€} ~^|\\ @£$¥èéùìò ÄÖÑÜ§ " * 8,
    "ucs2": "Привет, мир 👋🏽 你好 — " * 12,
    "latin1": "Grüße aus Köln, ça va? " * 12,
    "ascii": "plain ascii text 0123456789 " * 12,
}


PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)


def reassemble(parts: list[traffic.Part], alphabet: str = "gsm7") -> dict:
    records = []
    for part in parts:
        mo = part.deliver_sm(PHONE, SHORT_CODE)
        records.append(
            decode.segment_record(
                mo, decode.inspect(mo), operator="op1", bind="b", received_at=1.0
            )
        )
    _, envelope = decode.build_event(
        records,
        event_id="msg_1",
        options=decode.DecodeOptions(alphabet=alphabet),
        complete=True,
        completed_at=2.0,
    )
    return envelope["data"]


@pytest.mark.parametrize("coding", sorted(TEXTS))
@pytest.mark.parametrize("method", ["udh8", "udh16", "sar"])
def test_split_shuffled_and_repeated_segments_give_back_the_text(coding, method):
    parts = traffic.split(TEXTS[coding], coding, method, reference=77)
    assert len(parts) > 1
    shuffled = parts + parts[:1]
    random.Random(4).shuffle(shuffled)

    data = reassemble(shuffled)

    assert data["text"] == TEXTS[coding]
    assert data["parts"]["total"] == len(parts)
    assert data["parts"]["method"] == method
    assert data["parts"]["complete"] is True


@pytest.mark.parametrize("coding", ["gsm7", "ucs2"])
def test_a_cut_through_an_escape_or_surrogate_pair_is_joined(coding):
    text = "€" * 40 if coding == "gsm7" else "👋" * 40
    parts = traffic.split(text, coding, "udh8", size=33, whole=False)
    cut = traffic.chunks(traffic.encode(text, coding), coding, 33, whole=False)
    assert any(len(piece) % 2 for piece in cut)

    assert reassemble(parts)["text"] == text


def test_message_payload_carries_a_long_text_in_one_pdu():
    text = TEXTS["ucs2"]

    data = reassemble(traffic.split(text, "ucs2", "payload"))

    assert data["text"] == text
    assert data["parts"]["total"] == 1


def test_whole_cuts_never_split_an_escape():
    data = traffic.gsm7_encode("a€€€€€€")
    pieces = traffic.chunks(data, "gsm7", 4)

    assert b"".join(pieces) == data
    assert all(piece[-1] != 0x1B for piece in pieces)


def test_gsm7_encode_refuses_a_character_outside_the_alphabet():
    with pytest.raises(ValueError):
        traffic.gsm7_encode("ж")


@pytest.mark.parametrize(
    ("text", "coding", "size"),
    [("€", "gsm7", 1), ("👋", "ucs2", 3), ("ab", "ucs2", 1), ("abc", "gsm7", 0)],
)
def test_a_segment_too_small_for_one_character_is_refused(text, coding, size):
    with pytest.raises(ValueError):
        traffic.split(text, coding, "udh8", size=size)


@pytest.mark.parametrize(("method", "reference"), [("udh8", 256), ("udh16", 65536)])
def test_a_reference_out_of_range_is_refused(method, reference):
    with pytest.raises(ValueError, match="reference"):
        traffic.split("a" * 400, "gsm7", method, reference=reference)


def test_more_than_255_segments_is_refused():
    with pytest.raises(ValueError, match="255"):
        traffic.split("a" * 300, "gsm7", "udh8", size=1)
