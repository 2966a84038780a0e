"""From a received PDU to the webhook event: inspect, record, build."""

import base64
import json
import random

import pytest

from p2a_connector import decode, gsm7, segments
from p2a_connector.models import TLV, Address, MOPdu
from p2a_connector.smpp_status import status_code

RECEIVED_AT = 1764784170.0
COMPLETED_AT = 1764784171.5


def make_mo(
    short_message: bytes = b"",
    *,
    data_coding: int = 0,
    esm_class: int = 0,
    tlvs: tuple = (),
    command: str = "deliver_sm",
    source: str = "447700900123",
    destination: str = "88000",
) -> MOPdu:
    return MOPdu(
        command=command,
        sequence_number=7,
        service_type="",
        source=Address(source, 1, 1),
        destination=Address(destination, 3, 0),
        esm_class=esm_class,
        protocol_id=0,
        priority_flag=0,
        registered_delivery=0,
        data_coding=data_coding,
        short_message=short_message,
        tlvs=tuple(TLV(tag, value) for tag, value in tlvs),
    )


def record_of(mo: MOPdu, received_at: float = RECEIVED_AT) -> dict:
    return decode.segment_record(
        mo, decode.inspect(mo), operator="acme", bind="acme-0", received_at=received_at
    )


def event_of(
    records: list[dict], *, complete: bool = True, **options
) -> tuple[str, dict]:
    return decode.build_event(
        records,
        event_id="msg_01TEST",
        options=decode.DecodeOptions(**options),
        complete=complete,
        completed_at=COMPLETED_AT,
    )


def data_of(mo: MOPdu, **options) -> dict:
    return event_of([record_of(mo)], **options)[1]["data"]


def udh8(reference: int, total: int, seqnum: int) -> bytes:
    return bytes([5, 0x00, 3, reference, total, seqnum])


def segment(reference: int, total: int, seqnum: int, body: bytes, **fields) -> MOPdu:
    return make_mo(udh8(reference, total, seqnum) + body, esm_class=0x40, **fields)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the envelope --------------------------------------------------------


def test_single_message_envelope():
    event_type, envelope = event_of([record_of(make_mo(b"Hi"))])

    assert event_type == "message.received"
    assert envelope["type"] == "message.received"
    assert envelope["timestamp"] == "2025-12-03T17:49:31.500Z"
    assert set(envelope) == {"type", "timestamp", "data"}


def test_single_message_data():
    data = data_of(make_mo(b"Hi"))

    assert data == {
        "id": "msg_01TEST",
        "from": {"address": "447700900123", "ton": 1, "npi": 1},
        "to": {"address": "88000", "ton": 3, "npi": 0},
        "text": "Hi",
        "binary": None,
        "encoding": "gsm7",
        "data_coding": 0,
        "parts": {
            "total": 1,
            "received": 1,
            "reference": None,
            "method": None,
            "complete": True,
        },
        "operator": "acme",
        "bind": "acme-0",
        "received_at": "2025-12-03T17:49:30.000Z",
        "completed_at": "2025-12-03T17:49:31.500Z",
        "smpp": {
            "command": "deliver_sm",
            "service_type": "",
            "esm_class": 0,
            "message_type": 0,
            "protocol_id": 0,
            "priority_flag": 0,
            "registered_delivery": 0,
            "tlvs": {},
        },
        "session": None,
        "conversation": None,
    }


def test_event_is_json_serialisable():
    envelope = event_of([record_of(make_mo("é".encode("latin-1"), data_coding=3))])[1]

    assert json.loads(json.dumps(envelope)) == envelope


def test_iso_time_is_utc_with_milliseconds():
    assert decode.iso_time(1796320170.123) == "2026-12-03T17:49:30.123Z"


def test_iso_time_rounds_to_the_nearest_millisecond():
    assert decode.iso_time(1796320170.9996) == "2026-12-03T17:49:31.000Z"


# --- data_coding ---------------------------------------------------------


@pytest.mark.parametrize(
    ("alphabet", "octets", "text"),
    [
        ("gsm7", b"\x00\x01\x1b\x65", "@£€"),
        ("latin1", b"caf\xe9", "café"),
        ("ascii", b"plain", "plain"),
    ],
)
def test_data_coding_0_uses_the_operator_alphabet(alphabet, octets, text):
    data = data_of(make_mo(octets, data_coding=0), alphabet=alphabet)

    assert (data["text"], data["encoding"]) == (text, alphabet)


@pytest.mark.parametrize(
    ("data_coding", "octets", "text", "encoding"),
    [
        (1, b"IA5 text @", "IA5 text @", "ascii"),
        (3, b"Gr\xfc\xdfe", "Grüße", "latin1"),
        (5, "日本".encode("shift_jis"), "日本", "shift_jis"),
        (6, "Привет".encode("iso8859_5"), "Привет", "iso8859_5"),
        (7, "שלום".encode("iso8859_8"), "שלום", "iso8859_8"),
        (8, "Ωmega".encode("utf-16-be"), "Ωmega", "ucs2"),
        (10, "日本".encode("iso2022_jp"), "日本", "iso2022_jp"),
        (13, "𠀋".encode("shift_jisx0213"), "𠀋", "shift_jisx0213"),
        (14, "한국".encode("euc_kr"), "한국", "euc_kr"),
    ],
    ids=lambda value: str(value) if isinstance(value, int) else None,
)
def test_smpp_data_coding_values(data_coding, octets, text, encoding):
    data = data_of(make_mo(octets, data_coding=data_coding))

    assert data["text"] == text
    assert data["encoding"] == encoding
    assert data["data_coding"] == data_coding


def test_ucs2_decodes_a_surrogate_pair():
    data = data_of(make_mo("ok 😀".encode("utf-16-be"), data_coding=8))

    assert data["text"] == "ok 😀"


@pytest.mark.parametrize("data_coding", [2, 4, 9, 11, 12, 15])
def test_binary_and_reserved_smpp_values_are_binary(data_coding):
    data = data_of(make_mo(b"\x00\xffbin", data_coding=data_coding))

    assert data["text"] is None
    assert data["binary"] == b64(b"\x00\xffbin")
    assert data["encoding"] == "binary"


@pytest.mark.parametrize(
    ("data_coding", "encoding"),
    [
        (0x10, "gsm7"),  # general group, class 0 (flash)
        (0x11, "gsm7"),
        (0x14, "binary"),  # general group, 8-bit data
        (0x18, "ucs2"),  # general group, UCS2, class 0
        (0x1C, "binary"),  # general group, reserved alphabet
        (0x30, "binary"),  # compressed
        (0x48, "ucs2"),  # automatic deletion group, UCS2
        (0x80, "binary"),  # reserved group
        (0xC0, "gsm7"),  # message waiting, discard
        (0xD1, "gsm7"),  # message waiting, store
        (0xE0, "ucs2"),  # message waiting, store, UCS2
        (0xF0, "gsm7"),  # message class group, GSM 7-bit
        (0xF1, "gsm7"),
        (0xF4, "binary"),  # message class group, 8-bit data
        (0xF6, "binary"),
    ],
)
def test_gsm_coding_groups(data_coding, encoding):
    assert decode.encoding_for(data_coding, "latin1") == encoding


def test_message_class_group_text_decodes_as_gsm7():
    data = data_of(make_mo(b"\x1b\x3cflash\x1b\x3e", data_coding=0xF0))

    assert data["text"] == "[flash]"


def test_binary_message_has_no_decode_error():
    data = data_of(make_mo(b"\xff\xfe", data_coding=4))

    assert "decode_error" not in data
    assert "raw" not in data


# --- undecodable text ----------------------------------------------------


def test_gsm7_octet_above_0x7f_is_replaced_and_delivered_raw():
    data = data_of(make_mo(b"ok\x9b", data_coding=0))

    assert data["text"] == "ok\ufffd"
    assert data["raw"] == b64(b"ok\x9b")
    assert data["decode_error"] is True


def test_ascii_octet_above_0x7f_without_fallback_is_replaced_and_delivered_raw():
    data = data_of(make_mo(b"a\xe9", data_coding=1), fallback=False)

    assert data["text"] == "a\ufffd"
    assert data["raw"] == b64(b"a\xe9")
    assert data["decode_error"] is True


def test_ucs2_of_odd_length_is_replaced_and_delivered_raw():
    data = data_of(make_mo(b"\x00A\x00", data_coding=8))

    assert data["text"] == "A\ufffd"
    assert data["decode_error"] is True


def test_ucs2_lone_surrogate_is_replaced_and_delivered_raw():
    data = data_of(make_mo(b"\xd8\x3d\x00A", data_coding=8))

    assert data["text"] == "\ufffdA"
    assert data["decode_error"] is True


def test_clean_text_has_no_raw_and_no_flag():
    data = data_of(make_mo(b"fine"))

    assert "raw" not in data
    assert "decode_error" not in data


# --- inspect: UDH, SAR, message_payload ----------------------------------


def test_inspect_plain_message():
    inspected = decode.inspect(make_mo(b"hello"))

    assert inspected == decode.Inspected("message", None, b"", b"hello")


def test_inspect_8_bit_udh_concatenation():
    inspected = decode.inspect(segment(0x2A, 3, 2, b"part two"))

    assert inspected.concat == decode.Concat(0x2A, 3, 2, "udh8")
    assert inspected.udh == udh8(0x2A, 3, 2)
    assert inspected.user_data == b"part two"


def test_inspect_16_bit_udh_concatenation():
    mo = make_mo(b"\x06\x08\x04\x01\x02\x02\x01first", esm_class=0x40)

    inspected = decode.inspect(mo)

    assert inspected.concat == decode.Concat(0x0102, 2, 1, "udh16")
    assert inspected.user_data == b"first"


def test_inspect_sar_concatenation():
    mo = make_mo(
        b"sar part",
        tlvs=((0x020C, b"\x01\x2c"), (0x020E, b"\x02"), (0x020F, b"\x02")),
    )

    assert decode.inspect(mo).concat == decode.Concat(300, 2, 2, "sar")


def test_inspect_sar_with_a_tlv_missing_is_a_plain_message():
    mo = make_mo(b"x", tlvs=((0x020C, b"\x01\x2c"), (0x020E, b"\x02")))

    assert decode.inspect(mo).concat is None


def test_inspect_reads_message_payload_when_short_message_is_empty():
    mo = make_mo(b"", tlvs=((0x0424, b"long text"),))

    assert decode.inspect(mo).user_data == b"long text"


def test_inspect_finds_udh_inside_message_payload():
    mo = make_mo(b"", esm_class=0x40, tlvs=((0x0424, udh8(9, 2, 1) + b"payload part"),))

    inspected = decode.inspect(mo)

    assert inspected.concat == decode.Concat(9, 2, 1, "udh8")
    assert inspected.user_data == b"payload part"


def test_data_sm_text_comes_from_message_payload():
    mo = make_mo(b"", command="data_sm", tlvs=((0x0424, b"via data sm"),))

    data = data_of(mo)

    assert data["text"] == "via data sm"
    assert data["smpp"]["command"] == "data_sm"


def test_short_message_wins_over_message_payload():
    mo = make_mo(b"short", tlvs=((0x0424, b"payload"),))

    assert decode.inspect(mo).user_data == b"short"


@pytest.mark.parametrize(
    ("total", "seqnum"), [(3, 0), (3, 4), (1, 1)], ids=["zero", "past", "one"]
)
def test_segment_numbers_a_receiver_must_ignore_make_a_plain_message(total, seqnum):
    inspected = decode.inspect(segment(5, total, seqnum, b"alone"))

    assert inspected.concat is None
    assert inspected.user_data == b"alone"


def test_sar_segment_number_zero_makes_a_plain_message():
    mo = make_mo(
        b"x", tlvs=((0x020C, b"\x00\x01"), (0x020E, b"\x02"), (0x020F, b"\x00"))
    )

    assert decode.inspect(mo).concat is None


def test_udh_length_past_the_message_is_refused_with_rinvmsglen():
    mo = make_mo(b"\x0a\x00\x03\x01\x02\x01ab", esm_class=0x40)

    with pytest.raises(decode.DecodeError) as raised:
        decode.inspect(mo)

    assert raised.value.status == status_code("ESME_RINVMSGLEN")
    assert "UDH length 10" in raised.value.reason


def test_udh_element_past_the_header_is_refused_with_rinvmsglen():
    mo = make_mo(b"\x05\x00\x07\x01\x02\x01text", esm_class=0x40)

    with pytest.raises(decode.DecodeError) as raised:
        decode.inspect(mo)

    assert raised.value.status == status_code("ESME_RINVMSGLEN")


def test_udh_indicator_on_an_empty_message_is_refused():
    with pytest.raises(decode.DecodeError) as raised:
        decode.inspect(make_mo(b"", esm_class=0x40))

    assert raised.value.status == status_code("ESME_RINVMSGLEN")


# --- records -------------------------------------------------------------


def test_record_survives_a_json_round_trip():
    record = record_of(segment(1, 2, 1, b"abc", tlvs=((0x1401, b"\xa1"),)))

    assert json.loads(json.dumps(record)) == record


SEGMENTS_AS_RECEIVED = {
    "udh 8-bit, gsm7": segment(1, 2, 1, b"abc", tlvs=((0x1401, b"\xa1"),)),
    "udh 16-bit, ucs2": make_mo(
        bytes([6, 0x08, 4, 1, 2, 2, 1]) + "é€".encode("utf-16-be"),
        esm_class=0x40,
        data_coding=8,
    ),
    "udh with a national shift": make_mo(
        bytes([8, 0x00, 3, 4, 2, 1, 0x25, 1, 1]) + b"text", esm_class=0x40
    ),
    "sar": make_mo(
        b"sar part",
        tlvs=((0x020C, b"\x01\x2c"), (0x020E, b"\x02"), (0x020F, b"\x02")),
    ),
    "udh in message_payload": make_mo(
        b"", esm_class=0x40, tlvs=((0x0424, udh8(9, 2, 1) + b"payload part"),)
    ),
    "binary": segment(3, 2, 2, b"\x00\xff\x10", data_coding=4),
    "plain": make_mo(b"not a segment"),
}


@pytest.mark.parametrize("mo", SEGMENTS_AS_RECEIVED.values(), ids=SEGMENTS_AS_RECEIVED)
def test_the_part_made_on_receipt_is_what_the_spooled_record_reads_back_as(mo):
    # A spool that still holds the segment gives the assembler this Part in
    # place of the record; the event must not depend on which it got.
    inspected = decode.inspect(mo)
    record = decode.segment_record(
        mo, inspected, operator="acme", bind="acme-0", received_at=RECEIVED_AT
    )
    spooled = json.loads(json.dumps(record))

    assert decode.part_of(record, inspected) == segments.read([spooled])[0]
    assert event_of([decode.part_of(record, inspected)]) == event_of([spooled])


def test_a_message_assembles_alike_from_parts_records_or_both():
    mos = [segment(5, 2, 1, b"first "), segment(5, 2, 2, b"second")]
    records = [record_of(mo) for mo in mos]
    parts = [
        decode.part_of(record, decode.inspect(mo)) for record, mo in zip(records, mos)
    ]

    expected = event_of(records)
    assert expected[1]["data"]["text"] == "first second"
    assert event_of(parts) == expected
    assert event_of([parts[0], records[1]]) == expected


def test_record_holds_the_pdu_fields():
    record = record_of(segment(1, 2, 1, b"abc", tlvs=((0x1401, b"\xa1"),)))

    assert record["udh"] == "050003010201"
    assert record["user_data"] == b64(b"abc")
    assert record["tlvs"] == [[0x1401, "a1"]]
    assert record["concat"] == {
        "reference": 1,
        "total": 2,
        "seqnum": 1,
        "method": "udh8",
    }
    assert record["source"] == {"address": "447700900123", "ton": 1, "npi": 1}
    assert (record["operator"], record["bind"]) == ("acme", "acme-0")
    assert record["received_at"] == RECEIVED_AT


def test_record_drops_the_message_payload_that_carried_the_text():
    record = record_of(make_mo(b"", tlvs=((0x0424, b"text"), (0x1401, b"\x01"))))

    assert record["tlvs"] == [[0x1401, "01"]]


def test_record_keeps_a_message_payload_beside_short_message():
    record = record_of(make_mo(b"short", tlvs=((0x0424, b"payload"),)))

    assert record["tlvs"] == [[0x0424, b"payload".hex()]]


def test_reassembly_key_is_shared_by_the_segments_of_one_message():
    first, second = segment(7, 2, 1, b"a"), segment(7, 2, 2, b"b")

    key = decode.reassembly_key("acme", first, decode.inspect(first).concat)

    assert key == decode.reassembly_key("acme", second, decode.inspect(second).concat)
    assert key == '["acme","447700900123","88000","udh8",7,2]'


def test_reassembly_key_is_the_text_json_dumps_makes_for_any_address():
    # Segments stored by any version meet under the same key: addresses are
    # Latin-1 text and may hold any of its 256 characters.
    every = "".join(chr(code) for code in range(1, 256))
    mo = segment(7, 2, 1, b"a", source=every, destination='"\\\u2028')
    concat = decode.inspect(mo).concat

    key = decode.reassembly_key("opérateur", mo, concat)

    assert key == json.dumps(
        ["opérateur", every, '"\\\u2028', "udh8", 7, 2],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def test_reassembly_key_differs_by_reference_and_operator():
    mo = segment(7, 2, 1, b"a")
    other = segment(8, 2, 1, b"a")
    concat = decode.inspect(mo).concat

    assert decode.reassembly_key("acme", mo, concat) != decode.reassembly_key(
        "acme", other, decode.inspect(other).concat
    )
    assert decode.reassembly_key("acme", mo, concat) != decode.reassembly_key(
        "zeta", mo, concat
    )


# --- reassembly ----------------------------------------------------------


def test_segments_join_in_order():
    records = [
        record_of(segment(3, 2, 1, b"Hello, ")),
        record_of(segment(3, 2, 2, b"world")),
    ]

    data = event_of(records)[1]["data"]

    assert data["text"] == "Hello, world"
    assert data["parts"] == {
        "total": 2,
        "received": 2,
        "reference": 3,
        "method": "udh8",
        "complete": True,
    }


def test_segments_out_of_order_join_by_segment_number():
    records = [
        record_of(segment(3, 3, 3, b"three")),
        record_of(segment(3, 3, 1, b"one ")),
        record_of(segment(3, 3, 2, b"two ")),
    ]

    assert event_of(records)[1]["data"]["text"] == "one two three"


def test_duplicated_segment_is_used_once():
    records = [
        record_of(segment(3, 2, 1, b"once ")),
        record_of(segment(3, 2, 1, b"once "), received_at=RECEIVED_AT + 5),
        record_of(segment(3, 2, 2, b"only")),
    ]

    data = event_of(records)[1]["data"]

    assert data["text"] == "once only"
    assert data["parts"]["received"] == 2


def test_incomplete_message_carries_what_arrived():
    records = [
        record_of(segment(3, 3, 1, b"first ")),
        record_of(segment(3, 3, 3, b"last")),
    ]

    data = event_of(records, complete=False)[1]["data"]

    assert data["text"] == "first last"
    assert data["parts"]["complete"] is False
    assert data["parts"]["received"] == 2
    assert data["parts"]["total"] == 3


def test_ucs2_surrogate_pair_split_across_segments():
    emoji = "Hi 😀".encode("utf-16-be")
    records = [
        record_of(segment(4, 2, 2, emoji[6:], data_coding=8)),
        record_of(segment(4, 2, 1, emoji[:6], data_coding=8)),
    ]

    data = event_of(records)[1]["data"]

    assert data["text"] == "Hi 😀"
    assert "decode_error" not in data


def test_gsm_escape_split_across_segments():
    records = [
        record_of(segment(4, 2, 1, b"cost 5\x1b")),
        record_of(segment(4, 2, 2, b"\x65")),
    ]

    assert event_of(records)[1]["data"]["text"] == "cost 5€"


def test_escape_before_a_missing_segment_is_not_joined_across_the_gap():
    records = [
        record_of(segment(4, 3, 1, b"a\x1b")),
        record_of(segment(4, 3, 3, b"\x65")),
    ]

    data = event_of(records, complete=False)[1]["data"]

    assert data["text"] == "a e"


def test_sar_segments_join():
    def sar(seqnum: int, body: bytes) -> MOPdu:
        return make_mo(
            body,
            tlvs=((0x020C, b"\x00\x11"), (0x020E, b"\x02"), (0x020F, bytes([seqnum]))),
        )

    data = event_of([record_of(sar(2, b"world")), record_of(sar(1, b"hello "))])[1][
        "data"
    ]

    assert data["text"] == "hello world"
    assert data["parts"]["method"] == "sar"
    assert data["parts"]["reference"] == 0x11
    assert data["smpp"]["tlvs"] == {}


def test_received_at_is_the_earliest_segment():
    records = [
        record_of(segment(3, 2, 2, b"b"), received_at=RECEIVED_AT + 1),
        record_of(segment(3, 2, 1, b"a"), received_at=RECEIVED_AT + 2),
    ]

    data = event_of(records)[1]["data"]

    assert data["received_at"] == decode.iso_time(RECEIVED_AT + 1)
    assert data["completed_at"] == decode.iso_time(COMPLETED_AT)


def test_binary_segments_join_into_one_binary():
    records = [
        record_of(segment(3, 2, 2, b"\x03\x04", data_coding=4)),
        record_of(segment(3, 2, 1, b"\x01\x02", data_coding=4)),
    ]

    data = event_of(records)[1]["data"]

    assert data["binary"] == b64(b"\x01\x02\x03\x04")
    assert data["text"] is None


# --- ports, other UDH elements, TLVs -------------------------------------


def test_ports_from_a_16_bit_port_element():
    mo = make_mo(b"\x06\x05\x04\x0b\x84\x23\xf0wap", esm_class=0x40, data_coding=4)

    data = data_of(mo)

    assert data["ports"] == {"source": 0x23F0, "destination": 0x0B84}
    assert data["binary"] == b64(b"wap")


def test_ports_from_an_8_bit_port_element():
    mo = make_mo(b"\x04\x04\x02\xf5\x10x", esm_class=0x40)

    assert data_of(mo)["ports"] == {"source": 0x10, "destination": 0xF5}


def test_ports_from_source_and_destination_port_tlvs():
    mo = make_mo(b"x", tlvs=((0x020A, b"\x23\xf0"), (0x020B, b"\x0b\x84")))

    assert data_of(mo)["ports"] == {"source": 0x23F0, "destination": 0x0B84}


def test_message_without_ports_has_no_ports_key():
    assert "ports" not in data_of(make_mo(b"x"))


def test_unknown_udh_element_is_kept():
    mo = make_mo(b"\x08\x00\x03\x2a\x02\x01\x0a\x01\x01text", esm_class=0x40)
    records = [record_of(mo), record_of(segment(0x2A, 2, 2, b" more"))]

    data = event_of(records)[1]["data"]

    assert data["udh"] == [{"iei": 0x0A, "data": "01"}]
    assert data["text"] == "text more"


def test_message_without_other_udh_elements_has_no_udh_key():
    assert "udh" not in data_of(segment(1, 2, 1, b"x"))


def test_vendor_tlv_is_kept_as_hex():
    data = data_of(make_mo(b"x", tlvs=((0x1401, b"\xa1\xb2"),)))

    assert data["smpp"]["tlvs"] == {"0x1401": "a1b2"}


def test_unnamed_tlv_outside_the_vendor_range_is_kept_as_hex():
    data = data_of(make_mo(b"x", tlvs=((0x4001, b"\x00"),)))

    assert data["smpp"]["tlvs"] == {"0x4001": "00"}


def test_known_tlvs_by_name_with_simple_values():
    data = data_of(
        make_mo(
            b"x",
            tlvs=(
                (0x0204, b"\x00\x2a"),
                (0x0202, b"\xa0\x01"),
                (0x001D, b"note\x00"),
                (0x0017, b"\x00\x00\x0e\x10"),
            ),
        )
    )

    assert data["smpp"]["tlvs"] == {
        "user_message_reference": 42,
        "source_subaddress": "a001",
        "additional_status_info_text": "note",
        "qos_time_to_live": 3600,
    }


def test_repeated_tlv_gives_the_list_of_its_values():
    data = data_of(make_mo(b"x", tlvs=((0x1401, b"\x01"), (0x1401, b"\x02"))))

    assert data["smpp"]["tlvs"] == {"0x1401": ["01", "02"]}


def test_sme_delivery_acknowledgement_is_a_message_with_its_type():
    data = data_of(make_mo(b"ack", esm_class=0x08))

    assert data["text"] == "ack"
    assert data["smpp"]["message_type"] == 0x08


# --- USSD ----------------------------------------------------------------


def test_ussd_session_is_decoded():
    mo = make_mo(b"*100#", tlvs=((0x0501, b"\x01"), (0x1383, b"\x2a\x07")))

    assert data_of(mo)["session"] == {
        "id": 0x2A,
        "op": "pssr_indication",
        "sequence": 3,
        "end": True,
    }


@pytest.mark.parametrize(
    ("code", "op"),
    [
        (0, "pssd_indication"),
        (2, "ussr_request"),
        (3, "ussn_request"),
        (16, "pssd_response"),
        (17, "pssr_response"),
        (18, "ussr_confirm"),
        (19, "ussn_confirm"),
    ],
)
def test_ussd_operation_names(code, op):
    mo = make_mo(b"1", tlvs=((0x0501, bytes([code])), (0x1383, b"\x01\x02")))

    session = data_of(mo)["session"]

    assert session["op"] == op
    assert session["end"] is False


def test_ussd_operation_without_session_info():
    mo = make_mo(b"1", tlvs=((0x0501, b"\x12"),))

    assert data_of(mo)["session"] == {
        "id": None,
        "op": "ussr_confirm",
        "sequence": None,
        "end": None,
    }


def test_ussd_operation_sent_as_decimal_text():
    mo = make_mo(b"1", tlvs=((0x0501, b"17\x00"),))

    assert data_of(mo)["session"]["op"] == "pssr_response"


def test_message_without_ussd_tlvs_has_no_session():
    assert data_of(make_mo(b"x"))["session"] is None


# --- receipts ------------------------------------------------------------

RECEIPT_TEXT = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2412031749 "
    b"done date:2412031750 stat:DELIVRD err:000 text:Hello"
)


def test_receipt_by_message_type_is_a_receipt_event():
    event_type, envelope = event_of([record_of(make_mo(RECEIPT_TEXT, esm_class=0x04))])

    assert event_type == "receipt.received"
    assert envelope["type"] == "receipt.received"
    assert envelope["timestamp"] == decode.iso_time(COMPLETED_AT)


def test_receipt_event_data():
    data = data_of(make_mo(RECEIPT_TEXT, esm_class=0x04))

    assert data["id"] == "msg_01TEST"
    assert data["receipt"]["message_id"] == "0123456789"
    assert data["receipt"]["stat"] == "DELIVRD"
    assert data["receipt"]["err"] == "000"
    assert data["receipt"]["submit_date"] == "2024-12-03T17:49:00"
    assert data["receipt"]["done_date"] == "2024-12-03T17:50:00"
    assert data["receipt"]["text"] == "Hello"
    assert data["text"] == RECEIPT_TEXT.decode()
    assert data["from"]["address"] == "447700900123"
    assert data["to"]["address"] == "88000"
    assert (data["operator"], data["bind"]) == ("acme", "acme-0")
    assert data["received_at"] == decode.iso_time(RECEIVED_AT)
    assert data["smpp"]["message_type"] == 0x04


def test_intermediate_notification_is_a_receipt():
    mo = make_mo(b"id:1 stat:ENROUTE", esm_class=0x24)

    assert event_of([record_of(mo)])[0] == "receipt.received"


def test_receipted_message_id_tlv_makes_a_receipt():
    mo = make_mo(b"", tlvs=((0x001E, b"4f2a\x00"), (0x0427, b"\x02")))

    assert decode.inspect(mo).kind == "receipt"


def test_tlv_only_receipt():
    mo = make_mo(
        b"",
        esm_class=0x04,
        tlvs=((0x001E, b"4f2a\x00"), (0x0427, b"\x05"), (0x0423, b"\x03\x00\x0b")),
    )

    data = data_of(mo)

    assert data["receipt"]["message_id"] == "4f2a"
    assert data["receipt"]["message_state"] == {"code": 5, "name": "UNDELIVERABLE"}
    assert data["receipt"]["network_error_code"] == {"type": 3, "code": 11}
    assert data["receipt"]["stat"] is None
    assert data["smpp"]["tlvs"]["receipted_message_id"] == "4f2a"
    assert data["smpp"]["tlvs"]["message_state"] == 5


def test_receipt_text_is_read_as_ascii_not_gsm7():
    text = b"ID:ab_12 Submit_Date:241203174905 Stat:UNDELIV Err:001"

    data = data_of(make_mo(text, esm_class=0x04), alphabet="gsm7")

    assert data["receipt"]["message_id"] == "ab_12"
    assert data["receipt"]["submit_date"] == "2024-12-03T17:49:05"
    assert data["receipt"]["stat"] == "UNDELIV"


def test_receipt_in_message_payload():
    mo = make_mo(b"", esm_class=0x04, tlvs=((0x0424, b"id:99 stat:EXPIRED"),))

    data = data_of(mo)

    assert data["receipt"]["message_id"] == "99"
    assert data["receipt"]["stat"] == "EXPIRED"


def test_receipt_is_never_a_segment():
    mo = make_mo(
        b"id:1 stat:DELIVRD",
        esm_class=0x04,
        tlvs=((0x020C, b"\x00\x01"), (0x020E, b"\x02"), (0x020F, b"\x01")),
    )

    assert decode.inspect(mo).concat is None


# --- decode options ------------------------------------------------------


def test_build_event_without_options_reads_data_coding_0_as_gsm7():
    _, envelope = decode.build_event(
        [record_of(make_mo(b"\x00\x1b\x65"))],
        event_id="msg_01TEST",
        complete=True,
        completed_at=COMPLETED_AT,
    )

    assert envelope["data"]["text"] == "@€"


def test_data_coding_0_as_utf8():
    data = data_of(make_mo("naïve ✓".encode()), alphabet="utf8")

    assert (data["text"], data["encoding"]) == ("naïve ✓", "utf8")


def test_override_reads_data_coding_0_as_latin1():
    data = data_of(make_mo(b"Gr\xfc\xdfe"), coding_overrides=((0, "latin1"),))

    assert (data["text"], data["encoding"]) == ("Grüße", "latin1")
    assert data["data_coding"] == 0


def test_override_reads_data_coding_1_as_gsm7():
    data = data_of(make_mo(b"\x00 home", data_coding=1), coding_overrides={1: "gsm7"})

    assert (data["text"], data["encoding"]) == ("@ home", "gsm7")


def test_override_to_binary_delivers_the_bytes():
    data = data_of(make_mo(b"\x01\x02", data_coding=3), coding_overrides={3: "binary"})

    assert data["text"] is None
    assert data["binary"] == b64(b"\x01\x02")


def test_override_of_another_value_leaves_data_coding_0_alone():
    data = data_of(make_mo(b"\x00"), coding_overrides={1: "latin1"})

    assert (data["text"], data["encoding"]) == ("@", "gsm7")


# --- fallback ------------------------------------------------------------


def test_utf8_under_data_coding_0_falls_back_to_utf8():
    octets = "café ☕".encode()

    data = data_of(make_mo(octets))

    assert data["text"] == "café ☕"
    assert data["encoding"] == "utf8"
    assert data["decode_fallback"] == {"declared": "gsm7", "used": "utf8"}
    assert data["raw"] == b64(octets)
    assert "decode_error" not in data


def test_latin1_under_data_coding_0_falls_back_to_latin1():
    data = data_of(make_mo(b"Gr\xfc\xdfe"))

    assert data["text"] == "Grüße"
    assert data["decode_fallback"] == {"declared": "gsm7", "used": "latin1"}


def test_ucs2_under_data_coding_0_falls_back_to_ucs2():
    octets = "Καλημέρα".encode("utf-16-be")

    data = data_of(make_mo(octets))

    assert data["text"] == "Καλημέρα"
    assert data["decode_fallback"] == {"declared": "gsm7", "used": "ucs2"}
    assert data["raw"] == b64(octets)


def test_ucs2_emoji_under_data_coding_0_falls_back_to_ucs2():
    data = data_of(make_mo("😀".encode("utf-16-be")))

    assert data["text"] == "😀"
    assert data["encoding"] == "ucs2"


def test_ascii_octet_above_0x7f_falls_back_to_latin1():
    data = data_of(make_mo(b"a\xe9", data_coding=1))

    assert data["text"] == "aé"
    assert data["decode_fallback"] == {"declared": "ascii", "used": "latin1"}


def test_ucs2_of_odd_length_that_reads_as_latin1_falls_back_to_latin1():
    data = data_of(make_mo(b"Hello", data_coding=8))

    assert data["text"] == "Hello"
    assert data["decode_fallback"] == {"declared": "ucs2", "used": "latin1"}


def test_text_that_reads_under_its_declared_coding_is_not_second_guessed():
    # Cyrillic UCS2 has no octet above 0x7F; read as GSM 7-bit it is clean.
    octets = "Да".encode("utf-16-be")

    data = data_of(make_mo(octets))

    assert data["encoding"] == "gsm7"
    assert "decode_fallback" not in data
    assert "raw" not in data


def test_fallback_off_keeps_the_declared_coding_with_replacements():
    data = data_of(make_mo("café".encode()), fallback=False)

    assert data["text"] == "caf\ufffd\ufffd"
    assert data["encoding"] == "gsm7"
    assert data["decode_error"] is True
    assert "decode_fallback" not in data


def test_without_a_plausible_alternative_the_declared_reading_stands():
    data = data_of(make_mo(b"ok\x9b"))

    assert data["encoding"] == "gsm7"
    assert data["decode_error"] is True
    assert "decode_fallback" not in data


def test_fallback_reads_the_joined_segments():
    octets = "ünïcødé ✓ text".encode()
    records = [
        record_of(segment(6, 2, 2, octets[7:])),
        record_of(segment(6, 2, 1, octets[:7])),
    ]

    data = event_of(records)[1]["data"]

    assert data["text"] == "ünïcødé ✓ text"
    assert data["encoding"] == "utf8"
    assert data["raw"] == b64(octets)


def test_receipt_in_utf8_under_data_coding_1_falls_back_to_utf8():
    text = "id:7 stat:DELIVRD text:Grüße".encode()

    data = data_of(make_mo(text, esm_class=0x04, data_coding=1))

    assert data["receipt"]["text"] == "Grüße"
    assert data["decode_fallback"] == {"declared": "ascii", "used": "utf8"}


# --- national language shifts --------------------------------------------


def language_mo(elements: bytes, body: bytes, **fields) -> MOPdu:
    return make_mo(bytes([len(elements)]) + elements + body, esm_class=0x40, **fields)


def test_single_shift_selects_the_national_single_shift_table():
    data = data_of(language_mo(b"\x24\x01\x01", b"\x1b\x47\x1b\x53"))

    assert data["text"] == "ĞŞ"
    assert data["language"] == {"locking": None, "single": "turkish"}


def test_locking_shift_selects_the_national_locking_shift_table():
    data = data_of(language_mo(b"\x25\x01\x01", b"\x0b\x1c"))

    assert data["text"] == "ĞŞ"
    assert data["language"] == {"locking": "turkish", "single": None}


def test_both_shifts_of_one_language():
    data = data_of(language_mo(b"\x24\x01\x01\x25\x01\x01", b"\x07\x1b\x49"))

    assert data["text"] == "ıİ"
    assert data["language"] == {"locking": "turkish", "single": "turkish"}


def test_language_shift_applies_across_concatenated_segments():
    def part(seqnum: int, body: bytes) -> MOPdu:
        return language_mo(
            b"\x00\x03\x09\x02" + bytes([seqnum]) + b"\x24\x01\x01", body
        )

    records = [record_of(part(2, b"\x47")), record_of(part(1, b"a\x1b"))]

    data = event_of(records)[1]["data"]

    assert data["text"] == "aĞ"
    assert "udh" not in data


def test_unknown_language_uses_the_default_table_and_says_so():
    data = data_of(language_mo(b"\x24\x01\x63", b"\x1b\x65"))

    assert data["text"] == "€"
    assert data["language"] == {
        "locking": None,
        "single": None,
        "unknown": {"single": 0x63},
    }


def test_language_element_of_the_wrong_length_is_another_element():
    data = data_of(language_mo(b"\x24\x02\x01\x01", b"\x1b\x47"))

    assert data["text"] == "G"
    assert "language" not in data
    assert data["udh"] == [{"iei": 0x24, "data": "0101"}]


def test_message_without_language_shift_has_no_language_key():
    assert "language" not in data_of(make_mo(b"x"))


def test_language_shift_leaves_ucs2_text_alone():
    data = data_of(
        language_mo(b"\x24\x01\x01", "G€".encode("utf-16-be"), data_coding=8)
    )

    assert data["text"] == "G€"
    assert data["language"] == {"locking": None, "single": "turkish"}


# --- packed GSM 7-bit ----------------------------------------------------


def packed(text: str, fill_bits: int = 0) -> bytes:
    return gsm7.pack(gsm7.encode(text), fill_bits=fill_bits)


def packed_segment(reference: int, total: int, seqnum: int, text: str) -> MOPdu:
    # A six-octet UDH is 48 bits: one fill bit reaches the septet boundary.
    return make_mo(udh8(reference, total, seqnum) + packed(text, 1), esm_class=0x40)


def test_packed_gsm7_is_unpacked_before_decoding():
    data = data_of(make_mo(packed("hellohello")), gsm7_packed=True)

    assert data["text"] == "hellohello"
    assert "decode_error" not in data


def test_packed_gsm7_reads_the_extension_table():
    data = data_of(make_mo(packed("[5€]")), gsm7_packed=True)

    assert data["text"] == "[5€]"


def test_packed_gsm7_padding_in_the_last_octet_is_dropped():
    # Seven septets leave seven spare bits, as if an eighth '@' were there.
    data = data_of(make_mo(packed("1234567")), gsm7_packed=True)

    assert data["text"] == "1234567"


def test_packed_segments_are_unpacked_after_their_udh_and_joined():
    records = [
        record_of(packed_segment(5, 2, 2, "second")),
        record_of(packed_segment(5, 2, 1, "first, ")),
    ]

    data = event_of(records, gsm7_packed=True)[1]["data"]

    assert data["text"] == "first, second"


def test_packed_segments_after_a_16_bit_udh_have_no_fill_bits():
    header = b"\x06\x08\x04\x01\x02\x02"
    records = [
        record_of(make_mo(header + b"\x01" + packed("one "), esm_class=0x40)),
        record_of(make_mo(header + b"\x02" + packed("two"), esm_class=0x40)),
    ]

    data = event_of(records, gsm7_packed=True)[1]["data"]

    assert data["text"] == "one two"


def test_packed_segment_before_the_last_keeps_a_final_at_sign():
    # One fill bit and nine septets fill eight octets exactly: in a segment
    # before the last, a final '@' there is text, not padding.
    records = [
        record_of(packed_segment(5, 2, 1, "abcdefgh@")),
        record_of(packed_segment(5, 2, 2, "ij")),
    ]

    data = event_of(records, gsm7_packed=True)[1]["data"]

    assert data["text"] == "abcdefgh@ij"


def test_packed_last_segment_drops_a_final_at_sign_as_padding():
    records = [
        record_of(packed_segment(5, 2, 1, "ij")),
        record_of(packed_segment(5, 2, 2, "abcdefgh@")),
    ]

    data = event_of(records, gsm7_packed=True)[1]["data"]

    assert data["text"] == "ijabcdefgh"


def test_packed_escape_split_across_segments_is_joined():
    septets_one = gsm7.encode("abcde") + b"\x1b"
    records = [
        record_of(
            make_mo(udh8(8, 2, 1) + gsm7.pack(septets_one, fill_bits=1), esm_class=0x40)
        ),
        record_of(
            make_mo(udh8(8, 2, 2) + gsm7.pack(b"\x65", fill_bits=1), esm_class=0x40)
        ),
    ]

    data = event_of(records, gsm7_packed=True)[1]["data"]

    assert data["text"] == "abcde€"


def test_packed_setting_leaves_ucs2_text_alone():
    data = data_of(
        make_mo("Ωmega".encode("utf-16-be"), data_coding=8), gsm7_packed=True
    )

    assert data["text"] == "Ωmega"


def test_packed_setting_applies_to_gsm_coding_groups():
    data = data_of(make_mo(packed("flash"), data_coding=0xF0), gsm7_packed=True)

    assert data["text"] == "flash"


# --- message_payload, concatenation that cannot be used, references -------


def test_segments_with_udh_inside_message_payload_join():
    def part(seqnum: int, body: bytes) -> MOPdu:
        return make_mo(b"", esm_class=0x40, tlvs=((0x0424, udh8(9, 2, seqnum) + body),))

    records = [record_of(part(2, b"world")), record_of(part(1, b"hello "))]

    data = event_of(records)[1]["data"]

    assert data["text"] == "hello world"
    assert data["parts"]["method"] == "udh8"
    assert data["smpp"]["tlvs"] == {}


def test_udh_inside_message_payload_overrunning_it_is_refused():
    mo = make_mo(b"", esm_class=0x40, tlvs=((0x0424, b"\x09\x00\x03\x01"),))

    with pytest.raises(decode.DecodeError) as raised:
        decode.inspect(mo)

    assert raised.value.status == status_code("ESME_RINVMSGLEN")


def test_concatenation_element_of_the_wrong_length_gives_a_plain_message():
    mo = make_mo(b"\x06\x00\x04\x2a\x02\x01\x00text", esm_class=0x40)

    data = data_of(mo)

    assert data["parts"]["method"] is None
    assert data["udh"] == [{"iei": 0x00, "data": "2a020100"}]
    assert data["text"] == "text"


def test_16_bit_concatenation_element_of_the_wrong_length_gives_a_plain_message():
    mo = make_mo(b"\x04\x08\x02\x2a\x02text", esm_class=0x40)

    assert decode.inspect(mo).concat is None


def test_8_and_16_bit_references_of_one_sender_have_different_keys():
    eight = segment(7, 2, 1, b"a")
    sixteen = make_mo(b"\x06\x08\x04\x00\x07\x02\x01b", esm_class=0x40)

    key8 = decode.reassembly_key("acme", eight, decode.inspect(eight).concat)
    key16 = decode.reassembly_key("acme", sixteen, decode.inspect(sixteen).concat)

    assert decode.inspect(eight).concat.reference == 7
    assert decode.inspect(sixteen).concat.reference == 7
    assert key8 != key16


def test_16_bit_and_sar_references_of_one_sender_have_different_keys():
    sixteen = make_mo(b"\x06\x08\x04\x01\x2c\x02\x01b", esm_class=0x40)
    sar = make_mo(
        b"c", tlvs=((0x020C, b"\x01\x2c"), (0x020E, b"\x02"), (0x020F, b"\x01"))
    )

    assert decode.reassembly_key(
        "acme", sixteen, decode.inspect(sixteen).concat
    ) != decode.reassembly_key("acme", sar, decode.inspect(sar).concat)


def test_sar_with_a_one_octet_reference_joins():
    mo = make_mo(b"x", tlvs=((0x020C, b"\x2c"), (0x020E, b"\x02"), (0x020F, b"\x01")))

    assert decode.inspect(mo).concat == decode.Concat(0x2C, 2, 1, "sar")


def test_sar_with_a_three_octet_count_is_a_plain_message():
    mo = make_mo(
        b"x", tlvs=((0x020C, b"\x00\x01"), (0x020E, b"\x00\x00\x02"), (0x020F, b"\x01"))
    )

    assert decode.inspect(mo).concat is None
    assert data_of(mo)["smpp"]["tlvs"]["sar_total_segments"] == "000002"


# --- robustness ----------------------------------------------------------


def test_its_session_info_of_five_octets_leaves_the_session_id_unknown():
    mo = make_mo(b"1", tlvs=((0x0501, b"\x01"), (0x1383, b"\x01\x02\x03\x04\x05")))

    assert data_of(mo)["session"] == {
        "id": None,
        "op": "pssr_indication",
        "sequence": None,
        "end": None,
    }


def test_ussd_operation_outside_smpp_has_no_name():
    mo = make_mo(b"1", tlvs=((0x0501, b"\x63"), (0x1383, b"\x01\x02")))

    assert data_of(mo)["session"]["op"] is None


def test_ussd_operation_of_endless_digits_has_no_name():
    mo = make_mo(b"1", tlvs=((0x0501, b"9" * 5000),))

    assert data_of(mo)["session"]["op"] is None


def test_data_coding_0xff_with_junk_is_binary():
    data = data_of(make_mo(b"\xff\x00\x80junk", data_coding=0xFF))

    assert data["binary"] == b64(b"\xff\x00\x80junk")
    assert data["encoding"] == "binary"


def test_port_tlvs_of_the_wrong_length_give_no_ports():
    mo = make_mo(b"x", tlvs=((0x020A, b"\x00\x00\x23\xf0"), (0x020B, b"\x0b\x84")))

    assert "ports" not in data_of(mo)


def test_receipt_of_random_octets_is_a_receipt_event():
    mo = make_mo(bytes(range(256)), esm_class=0x04, tlvs=((0x0427, b"\xff" * 9),))

    event_type, envelope = event_of([record_of(mo)])

    assert event_type == "receipt.received"
    assert envelope["data"]["receipt"]["message_state"]["name"] is None


def test_empty_message_is_an_event_with_empty_text():
    data = data_of(make_mo(b""))

    assert data["text"] == ""


def test_records_that_segment_record_did_not_write_are_refused():
    record = record_of(make_mo(b"x"))
    record["user_data"] = "not base64!"

    with pytest.raises(decode.DecodeError) as raised:
        event_of([record])

    assert raised.value.status == status_code("ESME_RSYSERR")
    assert "user_data" in raised.value.reason


def test_no_records_is_refused():
    with pytest.raises(decode.DecodeError):
        event_of([])


def test_record_without_a_field_is_refused():
    record = record_of(make_mo(b"x"))
    del record["esm_class"]

    with pytest.raises(decode.DecodeError) as raised:
        event_of([record])

    assert "'esm_class'" in raised.value.reason


def random_mo(rng: random.Random) -> MOPdu:
    def octets(limit: int) -> bytes:
        return rng.randbytes(rng.choice([0, 1, 2, 3, rng.randrange(limit + 1)]))

    tags = [0x001E, 0x020A, 0x020B, 0x020C, 0x020E, 0x020F, 0x0423, 0x0424]
    tags += [0x0427, 0x0501, 0x1383, 0x0204, 0x001D, 0x1401, rng.randrange(0x10000)]
    return make_mo(
        octets(300),
        data_coding=rng.randrange(256),
        esm_class=rng.choice([0x00, 0x04, 0x40, 0x44, 0x24, rng.randrange(256)]),
        tlvs=tuple((rng.choice(tags), octets(40)) for _ in range(rng.randrange(6))),
    )


def test_random_pdus_give_an_event_or_a_decode_error():
    rng = random.Random(2604)
    events = 0
    for _ in range(3000):
        mo = random_mo(rng)
        options = decode.DecodeOptions(
            alphabet=rng.choice(["gsm7", "latin1", "ascii", "utf8"]),
            gsm7_packed=rng.random() < 0.5,
            fallback=rng.random() < 0.8,
        )
        try:
            inspected = decode.inspect(mo)
        except decode.DecodeError:
            continue
        record = record_of(mo)
        assert record["concat"] == (
            inspected.concat.to_json() if inspected.concat else None
        )
        _, envelope = decode.build_event(
            [json.loads(json.dumps(record))],
            event_id="msg_01TEST",
            options=options,
            complete=True,
            completed_at=COMPLETED_AT,
        )
        json.dumps(envelope, ensure_ascii=False).encode()
        events += 1

    assert events > 1000


def test_iso_time_is_right_across_seconds_and_for_any_order_of_calls():
    times = [1764787770.999, 1764787771.0004, 1764787770.5, 0.0, 1764787771.9996]

    assert [decode.iso_time(t) for t in times] == [
        "2025-12-03T18:49:30.999Z",
        "2025-12-03T18:49:31.000Z",
        "2025-12-03T18:49:30.500Z",
        "1970-01-01T00:00:00.000Z",
        "2025-12-03T18:49:32.000Z",
    ]
