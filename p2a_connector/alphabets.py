"""
Which text encoding a data_coding value names, and decoding that never fails.

SMPP 3.4 (5.2.19) defines data_coding 0x00-0x0F; above that, SMSCs pass the
GSM coding groups of 3GPP TS 23.038 through unchanged.  0 is the operator's
default alphabet.  `DecodeOptions` says how one bind's SMSC really writes
text: which alphabet 0 means, values it uses for something else, packed
GSM 7-bit, and whether a text that does not read under its declared coding
is read under another.

The fallback heuristic: only a declared reading that needed a replacement
character is doubted (GSM-declared octets above 0x7F, UCS2 of odd length or
with a lone surrogate, invalid UTF-8, ASCII above 0x7F, a byte a multibyte
codec cannot read).  A reading that succeeds is never second-guessed, so a
text in its declared coding always comes out as it went in.  A doubted text
is read, in this order, as UTF-8 (only when valid with a multi-octet
character), UCS2 (only when UCS2-shaped, see `_ucs2_shaped`), Latin-1, GSM
7-bit (only when no octet is above 0x7F and it is not UCS2-shaped), then
UCS2 of any shape; the first reading without a replacement, a control
character other than tab, line feed, carriage return and form feed, a
surrogate, a private-use or an unassigned code point is used.  When none
is, the declared reading stands, with its replacements.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

import attrs

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
    "utf8": "utf-8",
    "ucs2": "utf-16-be",
    "shift_jis": "shift_jis",
    "iso8859_5": "iso8859_5",
    "iso8859_8": "iso8859_8",
    "iso2022_jp": "iso2022_jp",
    "shift_jisx0213": "shift_jisx0213",
    "euc_kr": "euc_kr",
}

# What data_coding 0 may mean for an operator.
ALPHABETS = ("gsm7", "latin1", "ascii", "utf8")
# Every name an encoding can have, in events and in data_coding overrides.
ENCODINGS = ("gsm7", "binary", *PYTHON_CODECS)

# The readings tried, in order, for a text its declared coding does not
# read; "ucs2" comes twice, first only for UCS2-shaped octets.
_CANDIDATES = ("utf8", "ucs2-shaped", "latin1", "gsm7", "ucs2")
_ALLOWED_CONTROLS = frozenset("\t\n\r\f")
_IMPLAUSIBLE = frozenset({"Cs", "Co", "Cn"})


def _overrides(value: object) -> tuple[tuple[int, str], ...]:
    """data_coding overrides from pairs or a mapping, keys as int or text."""
    pairs = value.items() if isinstance(value, Mapping) else value
    if not isinstance(pairs, Iterable):
        raise TypeError(f"data_coding overrides must be pairs, not {value!r}")
    converted = {}
    for key, name in pairs:
        if isinstance(key, str):
            try:
                key = int(key, 0)
            except ValueError:
                raise ValueError(
                    f"data_coding override key {key!r} is not a number; "
                    'write the data_coding value, such as "0" or "0x08"'
                ) from None
        converted[key] = name
    return tuple(sorted(converted.items()))


def _check_overrides(instance, attribute, value) -> None:
    for data_coding, name in value:
        if not isinstance(data_coding, int) or not 0 <= data_coding <= 0xFF:
            raise ValueError(
                f"data_coding override {data_coding!r} is not a data_coding "
                "value; use 0 to 255"
            )
        if name not in ENCODINGS:
            raise ValueError(
                f"data_coding override {data_coding} = {name!r} names no "
                f"encoding; use one of {', '.join(ENCODINGS)}"
            )


def _check_alphabet(instance, attribute, value) -> None:
    if value not in ALPHABETS:
        raise ValueError(
            f"alphabet {value!r} is not one data_coding 0 can mean; "
            f"use one of {', '.join(ALPHABETS)}"
        )


@attrs.frozen
class DecodeOptions:
    """
    How one bind's SMSC writes text.

    :ivar alphabet: what data_coding 0 means: gsm7, latin1, ascii or utf8.
    :ivar gsm7_packed: GSM 7-bit text comes packed, eight septets in seven
        octets, rather than one septet per octet as SMPP says.
    :ivar coding_overrides: (data_coding, encoding) pairs that replace what
        SMPP and 23.038 say a value means, for SMSCs that send Latin-1 or
        UTF-8 under 0, or GSM under 1.  A mapping is accepted too.
    :ivar fallback: a text that does not read under its declared coding is
        read under the most plausible other one (see the module docstring).
    """

    alphabet: str = attrs.field(default="gsm7", validator=_check_alphabet)
    gsm7_packed: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )
    coding_overrides: tuple[tuple[int, str], ...] = attrs.field(
        default=(), converter=_overrides, validator=_check_overrides
    )
    fallback: bool = attrs.field(
        default=True, validator=attrs.validators.instance_of(bool)
    )

    def encoding(self, data_coding: int) -> str:
        """The encoding of a data_coding value on this bind."""
        for value, name in self.coding_overrides:
            if value == data_coding:
                return name
        return encoding_for(data_coding, self.alphabet)


@attrs.frozen
class Text:
    """A decoded text and how it was read."""

    text: str
    declared: str
    encoding: str
    replaced: bool

    @property
    def fell_back(self) -> bool:
        return self.encoding != self.declared


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


def decode_text(
    data: bytes, encoding: str, *, locking: int = 0, single: int = 0
) -> tuple[str, bool]:
    """
    Decode text without ever failing.

    ``locking`` and ``single`` are the GSM national language tables; other
    encodings ignore them.

    :returns: the text, and whether anything had to be replaced by U+FFFD.
    """
    if encoding == "gsm7":
        return gsm7.decode(data, locking=locking, single=single)
    codec = PYTHON_CODECS[encoding]
    try:
        return data.decode(codec), False
    except UnicodeDecodeError:
        return data.decode(codec, "replace"), True


def read_text(
    runs: list[bytes],
    declared: str,
    *,
    fallback: bool = True,
    locking: int = 0,
    single: int = 0,
) -> Text:
    """
    Decode the runs of a message's user data, each on its own, and join them.

    Runs are the stretches of consecutive segments; decoding each on its
    own keeps half a character before a gap from joining what follows.
    With ``fallback``, a doubtful declared reading is replaced by the first
    plausible candidate, as the module docstring describes.
    """
    tables = {"locking": locking, "single": single}
    text, replaced = _decode_runs(runs, declared, tables)
    # Limitation: text that reads cleanly under the wrong coding is taken
    # as it reads: UCS2 Cyrillic or Arabic labelled 0 has no octet above
    # 0x7F and comes out as GSM 7-bit nonsense, and UTF-8 read as Latin-1
    # comes out as mojibake.  Doubting clean readings would misread some
    # genuine texts instead; a bind's data_coding overrides are the remedy.
    data = b"".join(runs)
    if not fallback or not replaced:
        return Text(text, declared, declared, replaced)

    for candidate in _CANDIDATES:
        encoding = candidate.removesuffix("-shaped")
        if encoding == declared or not _worth_trying(candidate, data):
            continue
        other, other_replaced = _decode_runs(runs, encoding, tables)
        if not other_replaced and _plausible(other):
            return Text(other, declared, encoding, False)
    return Text(text, declared, declared, replaced)


def _decode_runs(runs: list[bytes], encoding: str, tables: dict) -> tuple[str, bool]:
    pieces = [decode_text(run, encoding, **tables) for run in runs]
    return "".join(text for text, _ in pieces), any(flag for _, flag in pieces)


def _worth_trying(candidate: str, data: bytes) -> bool:
    if candidate == "utf8":
        return _multibyte_utf8(data)
    if candidate == "ucs2-shaped":
        return len(data) % 2 == 0 and _ucs2_shaped(data)
    if candidate == "gsm7":
        return max(data, default=0) < 0x80 and not _ucs2_shaped(data)
    if candidate == "ucs2":
        return len(data) % 2 == 0
    return True


def _ucs2_shaped(data: bytes) -> bool:
    """
    Octets laid out as UCS2 of an alphabetic script rather than as text.

    The octets at even offsets are all 0x00-0x20 and most are below 0x20:
    the high octets of Latin (0x00), Greek, Cyrillic, Hebrew, Arabic, Indic
    or Thai text, among which space (U+20xx punctuation) is allowed.  As
    GSM or Latin-1 text that would be a control character or a rare letter
    in every other place.  0x1B is left out: as GSM it is the escape before
    "€", "[" and the like, which can well fill every other place, while as
    a UCS2 high octet it is Balinese.
    """
    if len(data) < 3:
        return False
    highs = data[0::2]
    if any(high > 0x20 or high == gsm7.ESCAPE for high in highs):
        return False
    return sum(high < 0x20 for high in highs) * 2 > len(highs)


def _multibyte_utf8(data: bytes) -> bool:
    if max(data, default=0) < 0x80:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _clean(text: str) -> bool:
    """No replacement and no control character but tab, newlines, form feed."""
    for char in text:
        if char == gsm7.REPLACEMENT:
            return False
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            return False
    return True


def _plausible(text: str) -> bool:
    """Clean, and every code point assigned, public and not a surrogate."""
    if not _clean(text):
        return False
    return all(unicodedata.category(char) not in _IMPLAUSIBLE for char in text)
