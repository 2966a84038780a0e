"""
Replies into submit_sm parts: the alphabet chosen, where long texts are cut,
and that what is sent decodes back, through our own decoder, to the text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import records_of

from p2a_connector import decode, gsm7, traffic
from p2a_connector.alphabets import DecodeOptions
from p2a_connector.compose import UDHI, ComposeError, compose, encoding_for

GSM_DEFAULT = [char for code, char in enumerate(gsm7.DEFAULT) if code != gsm7.ESCAPE]
GSM_EXTENSION = sorted(gsm7.EXTENSION.values())
GSM_TEXT = st.text(st.sampled_from(GSM_DEFAULT + GSM_EXTENSION), max_size=500)
ANY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
    ),
    max_size=300,
)


def sent_text(composed, *, alphabet="gsm7", packed=False) -> str:
    """The text a receiver decodes from the parts, as our inbound side does."""
    records = records_of(
        [
            traffic.Part(
                part.short_message, part.data_coding, part.esm_class, part.tlvs
            )
            for part in composed.parts
        ]
    )
    _, envelope = decode.build_event(
        records,
        event_id="msg_t",
        options=DecodeOptions(alphabet=alphabet, gsm7_packed=packed),
        complete=True,
        completed_at=1.0,
    )
    return envelope["data"]["text"]


def test_gsm_text_goes_as_data_coding_0():
    composed = compose("Hello [world] {€}", reference=1)

    assert composed.encoding == "gsm7"
    assert [p.data_coding for p in composed.parts] == [0]


def test_a_character_outside_gsm_makes_the_whole_text_ucs2():
    assert encoding_for("Hello ☃") == "ucs2"
    assert compose("Hello ☃", reference=1).parts[0].data_coding == 0x08


def test_160_gsm_septets_fit_one_message_and_161_take_two_parts():
    one = compose("a" * 160, reference=1)
    two = compose("a" * 161, reference=7)

    assert len(one.parts) == 1 and one.parts[0].esm_class == 0
    assert len(two.parts) == 2
    assert [p.short_message[:6] for p in two.parts] == [
        bytes((5, 0, 3, 7, 2, 1)),
        bytes((5, 0, 3, 7, 2, 2)),
    ]
    assert [len(p.short_message) - 6 for p in two.parts] == [153, 8]
    assert all(p.esm_class == UDHI for p in two.parts)


def test_an_extension_character_counts_two_septets_and_is_never_cut():
    composed = compose("a" * 152 + "€" + "b" * 10, reference=1)

    first, second = (p.short_message[6:] for p in composed.parts)
    assert first == b"a" * 152
    assert second[:2] == bytes((gsm7.ESCAPE, 0x65))


def test_70_ucs2_characters_fit_one_message_and_parts_hold_67():
    assert len(compose("☃" * 70, reference=1).parts) == 1
    parts = compose("☃" * 71, reference=1).parts
    assert [len(p.short_message) - 6 for p in parts] == [134, 8]


def test_a_surrogate_pair_is_never_cut():
    composed = compose("☃" * 66 + "😀" + "☃" * 5, reference=1)

    first = composed.parts[0].short_message[6:]
    assert first.decode("utf-16-be") == "☃" * 66


def test_udh16_and_sar_and_payload_carry_long_texts():
    text = "x" * 200
    udh16 = compose(text, reference=0x1234, method="udh16").parts
    sar = compose(text, reference=9, method="sar").parts
    (payload,) = compose(text, reference=1, method="payload").parts

    assert udh16[0].short_message[:7] == bytes((6, 8, 4, 0x12, 0x34, 2, 1))
    assert [dict(p.tlvs)[0x020F] for p in sar] == [b"\x01", b"\x02"]
    assert payload.short_message == b"" and dict(payload.tlvs)[0x0424] == b"x" * 200


def test_a_latin1_smsc_gets_latin1_octets_for_text_gsm_can_show():
    composed = compose("café", reference=1, alphabet="latin1")

    assert composed.parts[0].short_message == "café".encode("latin-1")
    assert compose("Δ", reference=1, alphabet="latin1").encoding == "ucs2"


def test_more_parts_than_allowed_is_refused_with_the_count():
    with pytest.raises(ComposeError, match="needs 3 parts"):
        compose("a" * 400, reference=1, max_parts=2)


def test_an_unknown_method_is_refused():
    with pytest.raises(ComposeError, match="method must be one of"):
        compose("hi", reference=1, method="sms")


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(
    text=GSM_TEXT,
    method=st.sampled_from(["udh8", "udh16", "sar", "payload"]),
    packed=st.booleans(),
    reference=st.integers(0, 65535),
)
def test_any_gsm_text_decodes_back_to_itself(text, method, packed, reference):
    composed = compose(text, reference=reference, method=method, packed=packed)

    assert composed.encoding == "gsm7"
    received = sent_text(composed, packed=packed)
    if packed and text[-1:] in ("\r", "@"):
        # 23.038: a final CR or '@' on an octet boundary is followed by a CR.
        assert received in (text, text + "\r")
    else:
        assert received == text


@PROPERTY
@given(text=ANY_TEXT, method=st.sampled_from(["udh8", "udh16", "sar", "payload"]))
def test_any_text_decodes_back_to_itself(text, method):
    composed = compose(text, reference=3, method=method)

    assert sent_text(composed) == text


def test_packed_text_with_seven_spare_bits_is_padded_with_cr_not_zeros():
    # Seven septets take 49 bits: seven octets leave seven bits over.
    (part,) = compose("abcdefg", reference=1, packed=True).parts

    assert part.short_message == gsm7.pack(gsm7.encode("abcdefg\r"))


def test_packed_text_ending_in_cr_on_an_octet_boundary_gets_another_cr():
    # Eight septets fill seven octets exactly.
    (part,) = compose("abcdefg\r", reference=1, packed=True).parts

    assert part.short_message == gsm7.pack(gsm7.encode("abcdefg\r\r"))


def test_a_full_packed_message_ending_in_at_is_split_rather_than_misread():
    text = "a" * 159 + "@"

    parts = compose(text, reference=1, packed=True).parts

    assert len(parts) == 2
    assert sent_text(compose(text, reference=1, packed=True), packed=True) == text
