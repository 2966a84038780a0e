"""The GSM 7-bit default alphabet and extension table, one octet per septet."""

import pytest

from p2a_connector import gsm7


def test_default_table_has_one_character_per_septet():
    assert len(gsm7.DEFAULT) == 128


def test_letters_digits_and_space_decode_as_in_ascii():
    assert gsm7.decode(b"Hello World 2024") == ("Hello World 2024", False)


@pytest.mark.parametrize(
    ("septet", "char"),
    [
        (0x00, "@"),
        (0x01, "£"),
        (0x02, "$"),
        (0x03, "¥"),
        (0x04, "è"),
        (0x05, "é"),
        (0x06, "ù"),
        (0x07, "ì"),
        (0x08, "ò"),
        (0x09, "Ç"),
        (0x0B, "Ø"),
        (0x0C, "ø"),
        (0x0E, "Å"),
        (0x0F, "å"),
        (0x10, "Δ"),
        (0x11, "_"),
        (0x12, "Φ"),
        (0x13, "Γ"),
        (0x14, "Λ"),
        (0x15, "Ω"),
        (0x16, "Π"),
        (0x17, "Ψ"),
        (0x18, "Σ"),
        (0x19, "Θ"),
        (0x1A, "Ξ"),
        (0x1C, "Æ"),
        (0x1D, "æ"),
        (0x1E, "ß"),
        (0x1F, "É"),
        (0x24, "¤"),
        (0x40, "¡"),
        (0x5B, "Ä"),
        (0x5C, "Ö"),
        (0x5D, "Ñ"),
        (0x5E, "Ü"),
        (0x5F, "§"),
        (0x60, "¿"),
        (0x7B, "ä"),
        (0x7C, "ö"),
        (0x7D, "ñ"),
        (0x7E, "ü"),
        (0x7F, "à"),
    ],
)
def test_default_table_characters_outside_ascii(septet, char):
    assert gsm7.decode(bytes([septet])) == (char, False)


def test_line_feed_and_carriage_return_are_control_characters():
    assert gsm7.decode(b"a\nb\rc") == ("a\nb\rc", False)


@pytest.mark.parametrize(
    ("code", "char"),
    [
        (0x65, "€"),
        (0x3C, "["),
        (0x3E, "]"),
        (0x28, "{"),
        (0x29, "}"),
        (0x3D, "~"),
        (0x14, "^"),
        (0x40, "|"),
        (0x2F, "\\"),
        (0x0A, "\f"),
    ],
)
def test_escape_reaches_the_extension_table(code, char):
    assert gsm7.decode(bytes([0x1B, code])) == (char, False)


def test_escape_sequences_in_running_text():
    assert gsm7.decode(b"5\x1b\x65 \x1b\x3cx\x1b\x3e") == ("5€ [x]", False)


def test_escape_to_an_undefined_code_shows_the_default_table_character():
    assert gsm7.decode(b"\x1bA") == ("A", False)


def test_double_escape_shows_a_space():
    assert gsm7.decode(b"a\x1b\x1bb") == ("a b", False)


def test_trailing_lone_escape_shows_a_space():
    assert gsm7.decode(b"ok\x1b") == ("ok ", False)


def test_octet_above_0x7f_is_replaced_and_reported():
    assert gsm7.decode(b"a\x80b") == ("a\ufffdb", True)


def test_escape_followed_by_an_octet_above_0x7f_is_replaced_and_reported():
    assert gsm7.decode(b"a\x1b\xffb") == ("a\ufffdb", True)


def test_languages_names_the_thirteen_national_language_identifiers():
    assert gsm7.LANGUAGES == {
        1: "turkish",
        2: "spanish",
        3: "portuguese",
        4: "bengali",
        5: "gujarati",
        6: "hindi",
        7: "kannada",
        8: "malayalam",
        9: "oriya",
        10: "punjabi",
        11: "tamil",
        12: "telugu",
        13: "urdu",
    }


def test_language_zero_decodes_with_the_default_tables():
    assert gsm7.decode(b"\x07\x1b\x65", locking=0, single=0) == ("ì€", False)


def test_unknown_locking_language_falls_back_to_the_default_alphabet():
    assert gsm7.decode(b"\x07", locking=99) == ("ì", False)


def test_unknown_single_shift_language_falls_back_to_the_extension_table():
    assert gsm7.decode(b"\x1b\x65\x1bG", single=99) == ("€G", False)


def test_every_default_alphabet_character_round_trips():
    text = "".join(char for code, char in enumerate(gsm7.DEFAULT) if code != 0x1B)

    assert gsm7.decode(gsm7.encode(text)) == (text, False)


def test_every_extension_character_round_trips():
    text = "".join(gsm7.EXTENSION.values())

    assert gsm7.decode(gsm7.encode(text)) == (text, False)


def test_encode_writes_one_octet_per_default_character():
    assert gsm7.encode("Hi @ £5") == b"Hi \x00 \x015"


def test_encode_escapes_an_extension_character():
    assert gsm7.encode("5€ [x]") == b"5\x1b\x65 \x1b\x3cx\x1b\x3e"


def test_encode_names_the_character_outside_both_tables():
    with pytest.raises(ValueError, match="'ж'.*position 2"):
        gsm7.encode("abж")


def test_pack_of_hello_is_the_well_known_vector():
    assert gsm7.pack(b"hello") == bytes.fromhex("E8329BFD06")


def test_pack_of_hellohello_fills_eight_septets_into_seven_octets():
    assert gsm7.pack(b"hellohello") == bytes.fromhex("E8329BFD4697D9EC37")


def test_unpack_of_hello_gives_one_septet_per_octet():
    assert gsm7.unpack(bytes.fromhex("E8329BFD06")) == b"hello"


def test_pack_with_a_fill_bit_shifts_the_septets_by_one_bit():
    assert gsm7.pack(b"hello", fill_bits=1) == bytes.fromhex("D06536FB0D")


def test_unpack_after_a_six_octet_udh_skips_one_fill_bit():
    fill_bits = (7 - (6 * 8) % 7) % 7

    assert fill_bits == 1
    assert gsm7.unpack(bytes.fromhex("D06536FB0D"), fill_bits=fill_bits) == b"hello"


@pytest.mark.parametrize("fill_bits", range(7))
@pytest.mark.parametrize("length", range(21))
def test_pack_then_unpack_with_the_septet_count_round_trips(length, fill_bits):
    septets = bytes((index * 37 + 11) % 128 for index in range(length))
    packed = gsm7.pack(septets, fill_bits=fill_bits)

    assert len(packed) == (fill_bits + 7 * length + 7) // 8
    assert gsm7.unpack(packed, fill_bits=fill_bits, septets=length) == septets


@pytest.mark.parametrize("fill_bits", range(7))
@pytest.mark.parametrize("length", range(21))
def test_unpack_without_a_count_finds_every_septet(length, fill_bits):
    septets = b"ABCDEFGHIJKLMNOPQRSTU"[:length]

    packed = gsm7.pack(septets, fill_bits=fill_bits)

    assert gsm7.unpack(packed, fill_bits=fill_bits) == septets


def test_seven_zero_bits_at_the_end_of_the_seventh_octet_are_not_an_at_sign():
    packed = gsm7.pack(b"ABCDEFG")

    assert len(packed) == 7
    assert gsm7.unpack(packed) == b"ABCDEFG"


def test_carriage_return_in_the_eighth_septet_is_taken_as_padding():
    assert gsm7.unpack(gsm7.pack(b"ABCDEFG\r")) == b"ABCDEFG"


def test_carriage_return_before_the_last_septet_is_kept():
    assert gsm7.unpack(gsm7.pack(b"ABCDE\rG")) == b"ABCDE\rG"


def test_a_real_at_sign_in_the_eighth_septet_needs_the_septet_count():
    packed = gsm7.pack(b"ABCDEFG\x00")

    assert gsm7.unpack(packed, septets=8) == b"ABCDEFG\x00"


def test_unpack_of_nothing_is_nothing():
    assert gsm7.unpack(b"") == b""


def test_unpack_refuses_more_septets_than_the_octets_hold():
    with pytest.raises(ValueError, match="5 septets asked for"):
        gsm7.unpack(b"\x41\x41\x41\x41", septets=5)


def test_unpack_refuses_seven_fill_bits():
    with pytest.raises(ValueError, match="fill_bits must be 0 to 6"):
        gsm7.unpack(b"\x41", fill_bits=7)


def test_pack_refuses_an_octet_above_0x7f():
    with pytest.raises(ValueError, match="0x80 at 1"):
        gsm7.pack(b"A\x80")
