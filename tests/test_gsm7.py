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
