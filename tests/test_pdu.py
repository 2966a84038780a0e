"""PDU framing, the tolerant deliver_sm/data_sm parser and the encoders."""

import struct

import pytest

from p2a_connector import pdu
from p2a_connector.models import TLV, Address
from p2a_connector.pdu import PDUError
from p2a_connector.smpp_status import status_code


def body_of(encoded: bytes) -> bytes:
    return encoded[pdu.HEADER_SIZE :]


def parse(encoded: bytes):
    command_id, _, sequence_number = struct.unpack_from(">III", encoded, 4)
    return pdu.parse_mo(command_id, sequence_number, body_of(encoded))


def test_deliver_sm_fields_are_parsed_as_sent():
    encoded = pdu.encode_deliver_sm(
        7,
        service_type="WAP",
        source=Address("447700900123", 1, 1),
        destination=Address("12345", 3, 9),
        esm_class=0x40,
        protocol_id=0x7F,
        priority_flag=2,
        registered_delivery=1,
        data_coding=8,
        short_message=b"\x05\x00\x03\x2a\x02\x01hello",
    )

    mo = parse(encoded)

    assert mo.command == "deliver_sm"
    assert mo.sequence_number == 7
    assert mo.service_type == "WAP"
    assert mo.source == Address("447700900123", 1, 1)
    assert mo.destination == Address("12345", 3, 9)
    assert (mo.esm_class, mo.protocol_id, mo.priority_flag) == (0x40, 0x7F, 2)
    assert (mo.registered_delivery, mo.data_coding) == (1, 8)
    assert mo.short_message == b"\x05\x00\x03\x2a\x02\x01hello"
    assert mo.tlvs == ()


def test_ussd_and_vendor_tlvs_and_unknown_data_coding_are_all_kept_in_order():
    tlvs = [
        TLV(0x0501, b"\x01"),
        TLV(0x1383, b"\x00\x2a\x01"),
        TLV(0x1401, b"vendor-value"),
        TLV(0x0501, b"\x12"),
    ]
    encoded = pdu.encode_deliver_sm(
        1, data_coding=0x99, esm_class=0xFF, short_message=b"*123#", tlvs=tlvs
    )

    mo = parse(encoded)

    assert mo.data_coding == 0x99
    assert mo.esm_class == 0xFF
    assert mo.tlvs == tuple(tlvs)
    assert mo.tlv(0x0501) == b"\x01"


def test_unknown_ton_and_npi_are_kept():
    encoded = pdu.encode_deliver_sm(
        1, source=Address("x", 7, 0x0F), destination=Address("y", 0xFF, 0xFF)
    )

    mo = parse(encoded)

    assert mo.source == Address("x", 7, 0x0F)
    assert mo.destination == Address("y", 0xFF, 0xFF)


def test_data_sm_is_parsed_with_its_message_payload():
    encoded = pdu.encode_data_sm(
        9,
        source=Address("447700900123", 1, 1),
        destination=Address("4477009001234567890123456789", 1, 1),
        data_coding=0,
        tlvs=[(0x0424, b"a long text")],
    )

    mo = parse(encoded)

    assert mo.command == "data_sm"
    assert mo.destination.address == "4477009001234567890123456789"
    assert mo.short_message == b""
    assert mo.tlv(0x0424) == b"a long text"


def test_body_ending_inside_the_mandatory_fields_is_an_invalid_command_length():
    body = body_of(pdu.encode_deliver_sm(1, source=Address("447700900123")))

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body[:10])

    assert raised.value.status == status_code("ESME_RINVCMDLEN")


@pytest.mark.parametrize(
    ("kept", "missing"),
    [
        (1, "source_ton"),
        (2, "source_npi"),
        (5, "dest_npi"),
        (7, "esm_class"),
        (9, "priority_flag"),
        (12, "registered_delivery"),
        (14, "data_coding"),
        (16, "sm_length"),
    ],
)
def test_a_body_cut_short_names_the_octet_field_it_lacks(kept, missing):
    # No addresses and no times: service_type "" is octet 0, source_ton 1,
    # source_npi 2, source_addr 3 ... sm_length 16.
    body = body_of(
        pdu.encode_deliver_sm(1, source=Address(""), destination=Address(""))
    )

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body[:kept])

    assert raised.value.status == status_code("ESME_RINVCMDLEN")
    assert raised.value.reason == f"the body ends before {missing} is complete"


def test_sm_length_beyond_the_body_is_an_invalid_message_length():
    body = body_of(pdu.encode_deliver_sm(1, short_message=b"hello"))

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body[:-2])

    assert raised.value.status == status_code("ESME_RINVMSGLEN")


def test_tlv_value_beyond_the_body_is_an_invalid_parameter_length():
    body = body_of(pdu.encode_deliver_sm(1, tlvs=[(0x1401, b"abcdef")]))

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body[:-1])

    assert raised.value.status == status_code("ESME_RINVPARLEN")


def test_stray_octets_after_the_last_tlv_are_an_invalid_tlv_stream():
    body = body_of(pdu.encode_deliver_sm(1)) + b"\x14\x01\x00"

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body)

    assert raised.value.status == status_code("ESME_RINVOPTPARSTREAM")


def test_source_addr_longer_than_smpp_allows_is_an_invalid_source_address():
    body = body_of(pdu.encode_deliver_sm(1, source=Address("1" * 21)))

    with pytest.raises(PDUError) as raised:
        pdu.parse_mo(pdu.DELIVER_SM, 1, body)

    assert raised.value.status == status_code("ESME_RINVSRCADR")


def test_framer_reassembles_pdus_fed_one_octet_at_a_time():
    stream = pdu.encode_enquire_link(1) + pdu.encode_deliver_sm(2, short_message=b"x")
    framer = pdu.Framer(65536)
    frames = []

    for octet in stream:
        framer.feed(bytes([octet]))
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)

    assert [(h.command, h.sequence_number) for h, _ in frames] == [
        ("enquire_link", 1),
        ("deliver_sm", 2),
    ]


@pytest.mark.parametrize("length", [0, 15, 65537])
def test_framer_refuses_a_command_length_outside_the_limits(length):
    framer = pdu.Framer(65536)
    framer.feed(struct.pack(">IIII", length, pdu.DELIVER_SM, 0, 1))

    with pytest.raises(PDUError) as raised:
        framer.next_frame()

    assert raised.value.status == status_code("ESME_RINVCMDLEN")


def test_deliver_sm_resp_has_an_empty_message_id_and_any_status():
    encoded = pdu.encode_deliver_sm_resp(42, 0x0400)

    assert struct.unpack(">IIII", encoded[:16]) == (17, 0x80000005, 0x0400, 42)
    assert encoded[16:] == b"\0"


def framed(data: bytes) -> tuple[pdu.Header, bytes]:
    framer = pdu.Framer(65536)
    framer.feed(data)
    return framer.next_frame()


def test_the_codec_reads_our_responses_to_deliver_sm_and_data_sm():
    for command, encode in (
        ("deliver_sm_resp", pdu.encode_deliver_sm_resp),
        ("data_sm_resp", pdu.encode_data_sm_resp),
    ):
        header, body = framed(encode(7, 0))

        decoded = pdu.decode(header, body)

        assert decoded.id.name == command
        assert decoded.seqNum == 7
        assert decoded.params["message_id"] in (None, b"")


def test_bind_carries_credentials_and_interface_version_34():
    encoded = pdu.encode_bind(
        pdu.BIND_RECEIVER,
        3,
        system_id="p2a",
        password="secret",
        system_type="VMA",
        addr_ton=1,
        addr_npi=1,
        address_range="^4477",
    )
    framer = pdu.Framer(65536)
    framer.feed(encoded)
    header, body = framer.next_frame()

    params = pdu.decode(header, body).params

    assert header.command == "bind_receiver"
    assert params["system_id"] == b"p2a"
    assert params["password"] == b"secret"
    assert params["system_type"] == b"VMA"
    assert params["interface_version"] == 0x34
    assert params["address_range"] == b"^4477"
    assert body[-8:-6] == b"\x01\x01"  # addr_ton, addr_npi on the wire


def test_bind_with_a_ton_smpp_does_not_define_is_refused_before_sending():
    with pytest.raises(ValueError, match="addr_ton 9"):
        pdu.encode_bind(pdu.BIND_RECEIVER, 1, system_id="p2a", password="x", addr_ton=9)


def test_error_bind_resp_with_an_unknown_status_decodes():
    encoded = pdu.encode_bind_resp(pdu.BIND_TRANSCEIVER, 5, 0x0455, "smsc")
    framer = pdu.Framer(65536)
    framer.feed(encoded)
    header, body = framer.next_frame()

    pdu.decode(header, body)

    assert (header.command, header.command_status, body) == (
        "bind_transceiver_resp",
        0x0455,
        b"",
    )
