"""
Which text encoding a data_coding value names, and decoding that never fails.

SMPP 3.4 (5.2.19) defines data_coding 0x00-0x0F; above that, SMSCs pass the
GSM coding groups of 3GPP TS 23.038 through unchanged.  0 is the operator's
default alphabet, which the caller resolves from its configuration.
"""

from __future__ import annotations

from p2a_connector import gsm7

SMPP_CODINGS = {
    1: "ascii",
    2: "binary",
    3: "latin1",
    4: "binary",
    5: "shift_jis",
    6: "iso8859_5",
    7: "iso8859_8",
    8: "ucs2",
    9: "binary",  # pictogram encoding: no defined character set to map to
    10: "iso2022_jp",
    # Python has no codec for JIS X 0212 alone.  The Shift form of JIS X 0213
    # extends the Shift_JIS used for 5, so shift-encoded extended kanji read;
    # EUC-encoded text does not, and arrives replaced, with its raw bytes.
    13: "shift_jisx0213",
    14: "euc_kr",
}

PYTHON_CODECS = {
    "ascii": "ascii",
    "latin1": "latin-1",
    "ucs2": "utf-16-be",
    "shift_jis": "shift_jis",
    "iso8859_5": "iso8859_5",
    "iso8859_8": "iso8859_8",
    "iso2022_jp": "iso2022_jp",
    "shift_jisx0213": "shift_jisx0213",
    "euc_kr": "euc_kr",
}


def encoding_for(data_coding: int, alphabet: str) -> str:
    """
    The encoding name for a data_coding value.

    ``alphabet`` is the operator's default, used for data_coding 0.  Values
    SMPP reserves are read by the GSM coding groups of 3GPP TS 23.038, which
    SMSCs often pass through; what neither defines is treated as binary.
    """
    if data_coding == 0:
        return alphabet
    if data_coding <= 0x0F:
        return SMPP_CODINGS.get(data_coding, "binary")

    if data_coding <= 0x7F:
        # General data coding and automatic deletion groups.  Compressed
        # text (bit 5) is passed on as binary: 23.042 compression is not
        # implemented here.
        if data_coding & 0x20:
            return "binary"
        return {0: "gsm7", 2: "ucs2"}.get((data_coding >> 2) & 0x03, "binary")
    if 0xC0 <= data_coding <= 0xDF:
        return "gsm7"
    if 0xE0 <= data_coding <= 0xEF:
        return "ucs2"
    if data_coding >= 0xF0:
        return "binary" if data_coding & 0x04 else "gsm7"
    return "binary"


def decode_text(data: bytes, encoding: str) -> tuple[str, bool]:
    """
    Decode text without ever failing.

    :returns: the text, and whether anything had to be replaced by U+FFFD.
    """
    if encoding == "gsm7":
        return gsm7.decode(data)
    codec = PYTHON_CODECS[encoding]
    try:
        return data.decode(codec), False
    except UnicodeDecodeError:
        return data.decode(codec, "replace"), True
