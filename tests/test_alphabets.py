"""data_coding to encoding, the decode options of a bind, and the fallback."""

import pytest

from p2a_connector import alphabets
from p2a_connector.alphabets import DecodeOptions, read_text

# --- DecodeOptions -------------------------------------------------------


def test_default_options_follow_smpp():
    options = DecodeOptions()

    assert options.alphabet == "gsm7"
    assert options.gsm7_packed is False
    assert options.coding_overrides == ()
    assert options.fallback is True


@pytest.mark.parametrize("alphabet", ["gsm7", "latin1", "ascii", "utf8"])
def test_each_alphabet_is_what_data_coding_0_means(alphabet):
    assert DecodeOptions(alphabet=alphabet).encoding(0) == alphabet


def test_an_alphabet_data_coding_0_cannot_mean_is_refused():
    with pytest.raises(ValueError, match="'ucs2' is not one data_coding 0 can mean"):
        DecodeOptions(alphabet="ucs2")


def test_overrides_from_a_mapping_with_text_keys_become_sorted_pairs():
    options = DecodeOptions(coding_overrides={"8": "latin1", "0x00": "utf8"})

    assert options.coding_overrides == ((0, "utf8"), (8, "latin1"))


def test_override_replaces_what_smpp_says_a_value_means():
    options = DecodeOptions(coding_overrides=((1, "gsm7"), (0, "latin1")))

    assert options.encoding(0) == "latin1"
    assert options.encoding(1) == "gsm7"
    assert options.encoding(8) == "ucs2"


def test_override_to_an_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="'latin2' names no encoding"):
        DecodeOptions(coding_overrides={0: "latin2"})


def test_override_of_a_value_past_255_is_refused():
    with pytest.raises(ValueError, match="use 0 to 255"):
        DecodeOptions(coding_overrides={256: "latin1"})


def test_override_key_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError, match="'zero' is not a number"):
        DecodeOptions(coding_overrides={"zero": "latin1"})


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        DecodeOptions().fallback = False  # type: ignore[misc]


@pytest.mark.parametrize("name", alphabets.ENCODINGS)
def test_every_encoding_name_can_be_an_override(name):
    assert DecodeOptions(coding_overrides={3: name}).encoding(3) == name


# --- decode_text ---------------------------------------------------------


def test_decode_text_passes_the_national_tables_to_gsm7():
    assert alphabets.decode_text(b"\x1b\x47", "gsm7", single=1) == ("Ğ", False)


def test_decode_text_replaces_what_does_not_decode():
    assert alphabets.decode_text(b"\xff", "utf8") == ("\ufffd", True)


# --- read_text: the fallback ---------------------------------------------


def test_clean_declared_reading_is_kept():
    read = read_text([b"\x00abc"], "gsm7")

    assert read == alphabets.Text("@abc", "gsm7", "gsm7", False)
    assert read.fell_back is False


def test_clean_latin1_that_is_also_utf8_stays_latin1():
    read = read_text(["é".encode()], "latin1")

    assert (read.text, read.encoding) == ("Ã©", "latin1")


def test_valid_utf8_comes_before_latin1():
    read = read_text(["café".encode()], "ascii")

    assert (read.text, read.encoding) == ("café", "utf8")
    assert read.fell_back is True


def test_ucs2_shaped_octets_come_before_latin1():
    read = read_text(["αβγ".encode("utf-16-be")], "ascii")

    assert (read.text, read.encoding) == ("αβγ", "ucs2")


def test_latin1_is_used_when_it_has_no_control_characters():
    read = read_text([b"na\xefve"], "gsm7")

    assert (read.text, read.encoding) == ("naïve", "latin1")


def test_latin1_with_c1_controls_is_not_used():
    read = read_text([b"ab\x85"], "gsm7")

    assert read.encoding == "gsm7"
    assert read.replaced is True


def test_gsm7_is_tried_for_ucs2_of_odd_length_without_high_octets():
    read = read_text([b"\x01\x1b\x65 5"], "ucs2")

    assert (read.text, read.encoding) == ("£€ 5", "gsm7")


def test_ucs2_of_any_shape_comes_last():
    read = read_text(["中文".encode("utf-16-be")], "gsm7")

    assert (read.text, read.encoding) == ("中文", "ucs2")


def test_unassigned_and_private_use_readings_are_not_used():
    read = read_text([b"\xe0\x00\xe0\x01"], "gsm7")

    assert read.encoding == "gsm7"
    assert read.replaced is True


def test_fallback_off_returns_the_declared_reading():
    read = read_text(["café".encode()], "ascii", fallback=False)

    assert (read.encoding, read.replaced) == ("ascii", True)


def test_each_run_is_decoded_on_its_own():
    emoji = "😀".encode("utf-16-be")

    read = read_text([emoji[:3], emoji[3:]], "ucs2", fallback=False)

    assert read.text.count("\ufffd") == 2


def test_gsm7_runs_keep_their_national_tables_in_the_fallback():
    read = read_text([b"\x01\x1b\x47"], "ucs2", single=1)

    assert (read.text, read.encoding) == ("£Ğ", "gsm7")


# --- encoding_for --------------------------------------------------------


@pytest.mark.parametrize(
    ("data_coding", "encoding"),
    [(0x00, "latin1"), (0x01, "ascii"), (0x03, "latin1"), (0x08, "ucs2")]
    + [(0x0B, "binary"), (0x15, "binary"), (0x4C, "binary"), (0xBF, "binary")],
)
def test_encoding_for(data_coding, encoding):
    assert alphabets.encoding_for(data_coding, "latin1") == encoding
