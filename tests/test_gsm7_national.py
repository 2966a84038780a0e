"""The national language shift tables of 3GPP TS 23.038 Annex A."""

import pytest

from p2a_connector import gsm7
from p2a_connector.gsm7_national import LOCKING, SINGLE

TURKISH, SPANISH, PORTUGUESE, BENGALI, GUJARATI, HINDI, KANNADA = range(1, 8)
MALAYALAM, ORIYA, PUNJABI, TAMIL, TELUGU, URDU = range(8, 14)


def _defined(table):
    return [
        (code, char)
        for code, char in enumerate(table)
        if code != gsm7.ESCAPE and char != gsm7.REPLACEMENT
    ]


def test_every_language_but_spanish_has_a_locking_shift_table():
    assert sorted(LOCKING) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_every_language_has_a_single_shift_table():
    assert sorted(SINGLE) == sorted(gsm7.LANGUAGES)


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_locking_table_has_one_position_per_septet(language):
    assert len(LOCKING[language]) == 128


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_locking_table_keeps_the_control_positions(language):
    table = LOCKING[language]

    assert (table[0x0A], table[0x0D], table[0x1B], table[0x20]) == (
        "\n",
        "\r",
        "\x1b",
        " ",
    )


def test_spanish_locking_shift_decodes_with_the_default_alphabet():
    assert gsm7.decode(b"\x07\x7d", locking=SPANISH) == ("ìñ", False)


@pytest.mark.parametrize(
    ("language", "code", "char"),
    [
        (TURKISH, 0x04, "€"),
        (TURKISH, 0x07, "ı"),
        (TURKISH, 0x0B, "Ğ"),
        (TURKISH, 0x0C, "ğ"),
        (TURKISH, 0x1C, "Ş"),
        (TURKISH, 0x1D, "ş"),
        (TURKISH, 0x40, "İ"),
        (TURKISH, 0x60, "ç"),
        (PORTUGUESE, 0x04, "ê"),
        (PORTUGUESE, 0x12, "ª"),
        (PORTUGUESE, 0x15, "∞"),
        (PORTUGUESE, 0x17, "\\"),
        (PORTUGUESE, 0x24, "º"),
        (PORTUGUESE, 0x60, "~"),
        (PORTUGUESE, 0x7D, "`"),
        (BENGALI, 0x00, "\u0981"),
        (BENGALI, 0x7F, "\u09f1"),
        (GUJARATI, 0x01, "\u0a82"),
        (HINDI, 0x00, "\u0901"),
        (HINDI, 0x2F, "\u0928"),
        (HINDI, 0x3C, "\u0929"),
        (HINDI, 0x5F, "\u094d"),
        (HINDI, 0x60, "\u0950"),
        (HINDI, 0x7F, "\u097f"),
        (KANNADA, 0x24, "\u0ca1"),
        (KANNADA, 0x3D, "\u0caa"),
        (MALAYALAM, 0x7F, "\u0d79"),
        (ORIYA, 0x60, "\u0b56"),
        (PUNJABI, 0x7F, "\u0a74"),
        (TAMIL, 0x60, "\u0bd0"),
        (TAMIL, 0x7F, "\u0bf9"),
        (TELUGU, 0x00, "\u0c01"),
        (URDU, 0x00, "\u0627"),
        (URDU, 0x01, "\u0622"),
        (URDU, 0x7F, "\u0670"),
        (HINDI, 0x2C, ","),
        (HINDI, 0x61, "a"),
        (URDU, 0x7A, "z"),
    ],
)
def test_locking_table_code_points_from_the_specification(language, code, char):
    assert gsm7.decode(bytes([code]), locking=language) == (char, False)


@pytest.mark.parametrize(
    ("language", "code", "char"),
    [
        (TURKISH, 0x47, "Ğ"),
        (TURKISH, 0x49, "İ"),
        (TURKISH, 0x53, "Ş"),
        (TURKISH, 0x63, "ç"),
        (TURKISH, 0x65, "€"),
        (TURKISH, 0x67, "ğ"),
        (TURKISH, 0x69, "ı"),
        (TURKISH, 0x73, "ş"),
        (SPANISH, 0x09, "ç"),
        (SPANISH, 0x41, "Á"),
        (SPANISH, 0x55, "Ú"),
        (SPANISH, 0x75, "ú"),
        (PORTUGUESE, 0x05, "ê"),
        (PORTUGUESE, 0x12, "Φ"),
        (PORTUGUESE, 0x7F, "â"),
        (BENGALI, 0x19, "\u09e6"),
        (HINDI, 0x00, "@"),
        (HINDI, 0x19, "\u0964"),
        (HINDI, 0x1C, "\u0966"),
        (HINDI, 0x40, "|"),
        (HINDI, 0x41, "A"),
        (HINDI, 0x65, "€"),
        (ORIYA, 0x20, "\u0b6a"),
        (TAMIL, 0x24, "\u0bee"),
        (TELUGU, 0x1C, "\u0c66"),
        (URDU, 0x19, "\u0600"),
        (URDU, 0x3F, "\u06d4"),
    ],
)
def test_single_shift_code_points_from_the_specification(language, code, char):
    assert gsm7.decode(bytes([0x1B, code]), single=language) == (char, False)


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_every_locking_table_code_decodes_to_its_character(language):
    for code, char in _defined(LOCKING[language]):
        assert gsm7.decode(bytes([code]), locking=language) == (char, False)


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_every_locking_table_character_round_trips(language):
    text = "".join(char for _, char in _defined(LOCKING[language]))

    encoded = gsm7.encode(text, locking=language)

    assert gsm7.ESCAPE not in encoded
    assert gsm7.decode(encoded, locking=language) == (text, False)


@pytest.mark.parametrize("language", sorted(SINGLE))
def test_every_single_shift_code_decodes_to_its_character(language):
    for code, char in SINGLE[language].items():
        assert gsm7.decode(bytes([0x1B, code]), single=language) == (char, False)


@pytest.mark.parametrize("language", sorted(SINGLE))
def test_every_single_shift_character_round_trips(language):
    text = "".join(SINGLE[language].values())

    encoded = gsm7.encode(text, single=language)

    assert gsm7.decode(encoded, single=language) == (text, False)


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_every_character_of_a_language_pair_round_trips(language):
    text = "".join(char for _, char in _defined(LOCKING[language]))
    text += "".join(SINGLE[language].values())

    encoded = gsm7.encode(text, locking=language, single=language)

    assert gsm7.decode(encoded, locking=language, single=language) == (text, False)


@pytest.mark.parametrize("language", sorted(LOCKING))
def test_undefined_locking_positions_decode_as_replacement(language):
    table = LOCKING[language]
    for code in (code for code, char in enumerate(table) if char == "\ufffd"):
        assert gsm7.decode(bytes([code]), locking=language) == ("\ufffd", True)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        (BENGALI, 0x0C),
        (BENGALI, 0x11),
        (BENGALI, 0x5C),
        (KANNADA, 0x00),
        (PUNJABI, 0x09),
        (TAMIL, 0x00),
        (TAMIL, 0x11),
        (TELUGU, 0x11),
    ],
)
def test_specification_leaves_these_locking_positions_empty(language, code):
    assert gsm7.decode(b"a" + bytes([code]), locking=language) == ("a\ufffd", True)


def test_turkish_locking_with_turkish_single_shift():
    text = "Şişli'de €5 {ok}"
    septets = bytes.fromhex("1c691d6c6927646520043520 1b286f6b1b29")

    assert gsm7.encode(text, locking=TURKISH, single=TURKISH) == septets
    assert gsm7.decode(septets, locking=TURKISH, single=TURKISH) == (text, False)


def test_hindi_locking_with_hindi_single_shift():
    text = "नमस्ते। 2024"
    septets = bytes.fromhex("2f424c5f2759 1b19 2032303234")

    assert gsm7.encode(text, locking=HINDI, single=HINDI) == septets
    assert gsm7.decode(septets, locking=HINDI, single=HINDI) == (text, False)


def test_portuguese_locking_writes_cedilla_and_tilde_in_one_septet_each():
    assert gsm7.encode("Ação", locking=PORTUGUESE, single=PORTUGUESE) == b"A\x09\x7bo"


def test_spanish_single_shift_with_the_default_alphabet():
    assert gsm7.encode("Año más", single=SPANISH) == b"A\x7do m\x1bas"


def test_encode_prefers_the_locking_table_over_an_escape():
    assert gsm7.encode("€", locking=TURKISH, single=TURKISH) == b"\x04"


def test_escape_outside_turkish_single_shows_the_turkish_locking_character():
    assert gsm7.decode(b"\x1b\x07", locking=TURKISH, single=TURKISH) == ("ı", False)


def test_escape_outside_hindi_single_shows_the_hindi_locking_character():
    assert gsm7.decode(b"\x1b\x60", locking=HINDI, single=HINDI) == ("\u0950", False)


def test_escape_to_a_code_absent_from_both_tables_is_replaced_and_reported():
    assert gsm7.decode(b"\x1b\x5b", locking=BENGALI, single=BENGALI) == (
        "\ufffd",
        True,
    )


def test_portuguese_locking_has_no_greek_capital_phi():
    with pytest.raises(ValueError, match="'Φ'"):
        gsm7.encode("Φ", locking=PORTUGUESE)


def test_portuguese_single_shift_reaches_greek_capital_phi():
    assert gsm7.encode("Φ", locking=PORTUGUESE, single=PORTUGUESE) == b"\x1b\x12"


def test_encode_names_a_character_outside_the_language_pair():
    with pytest.raises(ValueError, match="'ж'.*turkish"):
        gsm7.encode("ж", locking=TURKISH, single=TURKISH)
