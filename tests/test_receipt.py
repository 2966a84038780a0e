"""Delivery receipt text and TLVs, read tolerantly."""

from p2a_connector import receipt

STANDARD = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2412031749 "
    "done date:2412031750 stat:DELIVRD err:000 text:Hello"
)


def test_standard_layout_gives_every_field():
    assert receipt.parse_text(STANDARD) == {
        "id": "0123456789",
        "sub": "001",
        "dlvrd": "001",
        "submit_date": "2412031749",
        "done_date": "2412031750",
        "stat": "DELIVRD",
        "err": "000",
        "text": "Hello",
    }


def test_keys_in_any_order_and_any_case():
    fields = receipt.parse_text("STAT:UNDELIV Err:012 ID:abc Done Date:2412031750")

    assert fields == {
        "stat": "UNDELIV",
        "err": "012",
        "id": "abc",
        "done_date": "2412031750",
    }


def test_underscored_date_keys_are_the_same_keys():
    fields = receipt.parse_text("id:1 submit_date:2412031749 done_date:2412031750")

    assert fields["submit_date"] == "2412031749"
    assert fields["done_date"] == "2412031750"


def test_gsm_underscore_between_date_words_is_accepted():
    fields = receipt.parse_text("id:1 submit\x11date:2412031749")

    assert fields["submit_date"] == "2412031749"


def test_missing_keys_are_absent():
    fields = receipt.parse_text("id:77 stat:EXPIRED")

    assert fields == {"id": "77", "stat": "EXPIRED"}


def test_text_runs_to_the_end_with_its_spaces_and_colons():
    fields = receipt.parse_text("id:1 stat:DELIVRD text:see you at 10:30 ok")

    assert fields["text"] == "see you at 10:30 ok"


def test_repeated_key_keeps_its_first_value():
    assert receipt.parse_text("id:1 id:2")["id"] == "1"


def test_text_without_pairs_gives_nothing():
    assert receipt.parse_text("your message was delivered") == {}


def test_date_without_seconds_becomes_iso():
    assert receipt.parse_date("2412031749") == "2024-12-03T17:49:00"


def test_date_with_seconds_becomes_iso():
    assert receipt.parse_date("241203174905") == "2024-12-03T17:49:05"


def test_date_with_four_digit_year_becomes_iso():
    assert receipt.parse_date("20241203174905") == "2024-12-03T17:49:05"


def test_date_that_is_not_a_date_is_kept_as_written():
    assert receipt.parse_date("2413991749") == "2413991749"
    assert receipt.parse_date("yesterday") == "yesterday"


def test_message_state_has_its_smpp_name():
    assert receipt.message_state(b"\x02") == {"code": 2, "name": "DELIVERED"}
    assert receipt.message_state(b"\x08") == {"code": 8, "name": "REJECTED"}


def test_message_state_outside_smpp_has_no_name():
    assert receipt.message_state(b"\x63") == {"code": 99, "name": None}


def test_network_error_code_is_type_and_code():
    assert receipt.network_error(b"\x03\x00\x0b") == {"type": 3, "code": 11}


def test_network_error_code_of_the_wrong_length_is_not_read():
    assert receipt.network_error(b"\x03\x0b") is None


def test_describe_reads_the_standard_text():
    described = receipt.describe(STANDARD)

    assert described == {
        "message_id": "0123456789",
        "stat": "DELIVRD",
        "err": "000",
        "sub": "001",
        "dlvrd": "001",
        "submit_date": "2024-12-03T17:49:00",
        "done_date": "2024-12-03T17:50:00",
        "text": "Hello",
        "message_state": None,
        "network_error_code": None,
        "extra": {},
    }


def test_describe_keeps_hexadecimal_ids_as_written():
    assert receipt.describe("id:7A3F00C1 stat:DELIVRD")["message_id"] == "7A3F00C1"


def test_describe_keeps_keys_outside_the_layout_under_extra():
    described = receipt.describe("id:1 stat:DELIVRD mccmnc:23415 price:0.02 text:x")

    assert described["extra"] == {"mccmnc": "23415", "price": "0.02"}


def test_receipted_message_id_tlv_takes_precedence_over_the_text_id():
    described = receipt.describe(STANDARD, receipted_message_id=b"9f2c1a\x00")

    assert described["message_id"] == "9f2c1a"


def test_tlv_only_receipt():
    described = receipt.describe(
        "",
        receipted_message_id=b"abc123\x00",
        message_state_tlv=b"\x05",
        network_error_code=b"\x01\x00\x22",
    )

    assert described["message_id"] == "abc123"
    assert described["message_state"] == {"code": 5, "name": "UNDELIVERABLE"}
    assert described["network_error_code"] == {"type": 1, "code": 0x22}
    assert described["stat"] is None


def test_text_of_control_characters_and_stray_colons_is_read_as_far_as_it_goes():
    fields = receipt.parse_text("\x00\x1b :: id:\x00 stat: text:\udcff")

    assert fields == {"id": "\x00", "stat": "", "text": "\udcff"}


def test_describe_never_fails_on_any_latin1_text():
    described = receipt.describe(bytes(range(256)).decode("latin-1") * 4)

    assert set(described) >= {"message_id", "stat", "extra"}


def test_date_of_other_unicode_digits_is_kept_or_read_but_never_fails():
    assert receipt.parse_date("²" * 10) == "²" * 10


def test_message_state_of_several_octets_is_read_as_one_number():
    assert receipt.message_state(b"\x00\x00\x00\x02") == {
        "code": 2,
        "name": "DELIVERED",
    }


def test_empty_message_state_is_not_read():
    assert receipt.message_state(b"") is None


def test_receipted_message_id_that_is_not_text_is_kept_as_latin1():
    described = receipt.describe("", receipted_message_id=b"\xff\xfe1\x00")

    assert described["message_id"] == "ÿþ1"
