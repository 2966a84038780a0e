"""User Data Header parsing (3GPP TS 23.040, 9.2.3.24)."""

import pytest

from p2a_connector import udh


def test_split_separates_the_header_with_its_length_octet():
    header, rest = udh.split(b"\x05\x00\x03\x2a\x02\x01hello")

    assert header == b"\x05\x00\x03\x2a\x02\x01"
    assert rest == b"hello"


def test_split_rejects_a_length_that_runs_past_the_user_data():
    with pytest.raises(udh.MalformedUDH, match="runs past"):
        udh.split(b"\x09\x00\x03\x2a\x02\x01")


def test_split_rejects_empty_user_data():
    with pytest.raises(udh.MalformedUDH, match="empty"):
        udh.split(b"")


def test_concatenation_with_8_bit_reference():
    header = udh.parse(b"\x05\x00\x03\x2a\x03\x02")

    assert header.concat == udh.Concatenation(
        reference=0x2A, total=3, seqnum=2, method="udh8"
    )
    assert header.others == ()


def test_concatenation_with_16_bit_reference():
    header = udh.parse(b"\x06\x08\x04\x12\x34\x02\x01")

    assert header.concat == udh.Concatenation(
        reference=0x1234, total=2, seqnum=1, method="udh16"
    )


def test_application_ports_with_8_bit_addresses():
    header = udh.parse(b"\x04\x04\x02\xf5\x10")

    assert header.ports == udh.Ports(source=0x10, destination=0xF5)


def test_application_ports_with_16_bit_addresses():
    header = udh.parse(b"\x06\x05\x04\x0b\x84\x23\xf0")

    assert header.ports == udh.Ports(source=0x23F0, destination=0x0B84)


def test_unknown_element_is_kept_as_it_came():
    header = udh.parse(b"\x05\x0a\x03\x00\x05\x01")

    assert header.others == (udh.Element(0x0A, b"\x00\x05\x01"),)


def test_unknown_element_is_kept_beside_concatenation():
    header = udh.parse(b"\x08\x00\x03\x2a\x02\x01\x0a\x01\x01")

    assert header.concat is not None
    assert header.others == (udh.Element(0x0A, b"\x01"),)


def test_element_longer_than_the_header_is_rejected():
    with pytest.raises(
        udh.MalformedUDH, match="claims 5 octets where the UDH has 3 left"
    ):
        udh.parse(b"\x05\x00\x05\x2a\x02\x01")


def test_header_ending_inside_an_element_is_rejected():
    with pytest.raises(udh.MalformedUDH, match="ends inside"):
        udh.parse(b"\x06\x00\x03\x2a\x02\x01\x24")


@pytest.mark.parametrize(
    "numbers",
    [b"\x2a\x03\x00", b"\x2a\x03\x04", b"\x2a\x01\x01", b"\x2a\x00\x00"],
    ids=["part-0", "part-past-total", "one-part", "no-parts"],
)
def test_concatenation_a_receiver_must_ignore_is_not_used(numbers):
    header = udh.parse(b"\x05\x00\x03" + numbers)

    assert header.concat is None
    assert header.others == (udh.Element(0x00, numbers),)


def test_concatenation_element_of_the_wrong_length_is_not_used():
    header = udh.parse(b"\x04\x00\x02\x2a\x02")

    assert header.concat is None
    assert header.others == (udh.Element(0x00, b"\x2a\x02"),)


def test_repeated_concatenation_element_uses_the_last_occurrence():
    header = udh.parse(b"\x0a\x00\x03\x01\x02\x01\x00\x03\x07\x03\x02")

    assert header.concat == udh.Concatenation(7, 3, 2, "udh8")


def test_element_to_json_gives_identifier_and_hex_data():
    assert udh.Element(0x24, b"\xab\x01").to_json() == {"iei": 0x24, "data": "ab01"}


def test_single_shift_gives_its_language_identifier():
    header = udh.parse(b"\x03\x24\x01\x01")

    assert header.single_shift == 1
    assert header.locking_shift is None
    assert header.others == ()


def test_locking_shift_gives_its_language_identifier():
    header = udh.parse(b"\x03\x25\x01\x0d")

    assert header.locking_shift == 13
    assert header.single_shift is None


def test_unknown_language_identifier_is_given_as_sent():
    assert udh.parse(b"\x03\x24\x01\x63").single_shift == 0x63


def test_language_shift_of_the_wrong_length_is_kept_as_another_element():
    header = udh.parse(b"\x04\x25\x02\x01\x01")

    assert header.locking_shift is None
    assert header.others == (udh.Element(0x25, b"\x01\x01"),)


def test_header_without_elements_has_nothing():
    header = udh.parse(b"\x00")

    assert header == udh.Header(concat=None, ports=None, others=())


@pytest.mark.parametrize(
    ("header", "bits"),
    [
        (b"\x05\x00\x03\x2a\x02\x01", 1),
        (b"\x06\x08\x04\x12\x34\x02\x01", 0),
        (b"\x03\x24\x01\x01", 3),
        (b"\x00", 6),
    ],
    ids=["udh8", "udh16", "single-shift", "empty"],
)
def test_fill_bits_reach_the_next_septet_boundary(header, bits):
    assert udh.fill_bits(header) == bits
    assert (len(header) * 8 + bits) % 7 == 0
