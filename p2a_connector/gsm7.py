"""
GSM 7-bit text: the default alphabet and its extension table (3GPP TS
23.038, 6.2.1 and 6.2.1.1), the national language locking and single shift
tables (Annex A.3 and A.2), and septet packing (6.1.2.1.1).

SMPP carries GSM 7-bit text unpacked: one septet in each octet, so decoding
is a table lookup per octet, with 0x1B escaping into a single shift table.
A UDH may name a national locking shift table (IEI 0x25), which replaces the
default alphabet, and a national single shift table (IEI 0x24), which
replaces the extension table; the tables live in
:mod:`p2a_connector.gsm7_national`.  The decoder never raises: an octet
outside the 7-bit range, or a position a table leaves undefined, becomes
U+FFFD and the caller is told that a replacement happened.

Some SMSCs send the septets packed, eight in seven octets as on the air
interface; :func:`unpack` turns those into one septet per octet first.
Nothing here guesses whether a text is packed: the caller has to know.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable

from p2a_connector.gsm7_national import LOCKING, SINGLE

ESCAPE = 0x1B
CARRIAGE_RETURN = 0x0D
REPLACEMENT = "\ufffd"

# Index = septet value.  0x1B is the escape; it is never looked up here.
DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

# National language identifiers, 23.038 6.2.1.2.4.  0 is the default alphabet.
LANGUAGES: dict[int, str] = {
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

# 0x1B 0x1B is reserved for a further extension table; until one is defined
# the specification asks for a space.
_RESERVED_ESCAPE = " "


def _tables(locking: int, single: int) -> tuple[str, dict[int, str]]:
    # A language without a table of that kind (Spanish has no locking shift
    # table) or an identifier 23.038 does not define uses the default one.
    return LOCKING.get(locking, DEFAULT), SINGLE.get(single, EXTENSION)


@functools.cache
def _charmap(table: str) -> str:
    """The decoding table of charmap_decode: the 128 codes, then U+FFFD."""
    return table + REPLACEMENT * 128


def decode(data: bytes, *, locking: int = 0, single: int = 0) -> tuple[str, bool]:
    """
    Decode unpacked GSM 7-bit octets.

    :param locking: the national language of the locking shift table
        (UDH IEI 0x25); 0 is the default alphabet.
    :param single: the national language of the single shift table
        (UDH IEI 0x24); 0 is the default extension table.
    :returns: the text, and whether any octet had to be replaced by U+FFFD.
        An unknown language identifier falls back to the default table and
        is not itself a replacement; the caller reports it.
    """
    table, shift = _tables(locking, single)
    if ESCAPE not in data:
        # No shift to follow: one character per octet, looked up in C.
        text = codecs.charmap_decode(data, "strict", _charmap(table))[0]
        return text, REPLACEMENT in text

    chars: list[str] = []
    index = 0
    while index < len(data):
        octet = data[index]
        index += 1

        if octet >= 0x80:
            chars.append(REPLACEMENT)
            continue

        if octet != ESCAPE:
            chars.append(table[octet])
            continue

        if index == len(data):
            # An escape with nothing after it: shown as a space, as a
            # receiver that does not understand the escape would.
            chars.append(" ")
            break

        following = data[index]
        index += 1
        if following >= 0x80:
            chars.append(REPLACEMENT)
        elif following == ESCAPE:
            chars.append(_RESERVED_ESCAPE)
        else:
            # A code the single shift table does not define is shown as the
            # character of the active locking shift table, as 23.038 asks.
            chars.append(shift.get(following, table[following]))

    text = "".join(chars)
    return text, REPLACEMENT in text


def encode(text: str, *, locking: int = 0, single: int = 0) -> bytes:
    """
    Encode text as unpacked GSM 7-bit octets with the given shift tables.

    A character in the locking shift table takes one octet; one only in the
    single shift table takes the escape and its code.

    :raises ValueError: naming the first character that is in neither table.
    """
    direct, escaped = _codes(locking, single)

    out = bytearray()
    for position, char in enumerate(text):
        if char in direct:
            out.append(direct[char])
        elif char in escaped:
            out += bytes((ESCAPE, escaped[char]))
        else:
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} "
                f"is in neither the locking shift table ({_name(locking)}) nor "
                f"the single shift table ({_name(single)}) of GSM 7-bit; "
                "choose other tables or send the text as UCS2"
            )
    return bytes(out)


@functools.cache
def _codes(locking: int, single: int) -> tuple[dict[str, int], dict[str, int]]:
    table, shift = _tables(locking, single)
    return _reverse(enumerate(table)), _reverse(shift.items())


def _reverse(pairs: Iterable[tuple[int, str]]) -> dict[str, int]:
    # The first code of a character wins; 0x1B and undefined positions are
    # never produced.
    codes: dict[str, int] = {}
    for code, char in pairs:
        if code != ESCAPE and char != REPLACEMENT:
            codes.setdefault(char, code)
    return codes


def _name(language: int) -> str:
    return LANGUAGES.get(language, "default")


def unpack(data: bytes, *, fill_bits: int = 0, septets: int | None = None) -> bytes:
    """
    Unpack packed GSM 7-bit (23.038 6.1.2.1.1) into one septet per octet.

    Septets are packed least significant bit first, eight in seven octets.

    :param fill_bits: bits to skip at the start, 0 to 6; after a UDH of
        ``n`` octets the text starts at the next septet boundary, so
        ``fill_bits = (7 - n * 8 % 7) % 7`` with ``data`` the octets after
        the UDH.
    :param septets: how many septets to take.  Without it, every whole
        septet that fits is taken, except one: when the bits end exactly on
        a septet boundary, the last septet lies wholly in the spare bits of
        the final octet, and a sender of one septet fewer leaves it zero (an
        '@' nobody wrote) or a CR, as 23.038 asks of cell broadcast and USSD
        senders (6.1.2.2.1, 6.1.2.3.1).  Such a final 0x00 or 0x0D is taken
        as padding and dropped; a text that really ends in '@' or CR there
        needs ``septets``.
    :raises ValueError: for fill bits outside 0..6 or more septets than
        ``data`` holds.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0 to 6, not {fill_bits}")
    bits = len(data) * 8 - fill_bits
    available = max(bits, 0) // 7
    if septets is None:
        count = available
    elif 0 <= septets <= available:
        count = septets
    else:
        raise ValueError(
            f"{septets} septets asked for, but {len(data)} octets with "
            f"{fill_bits} fill bits hold only {available}"
        )

    value = int.from_bytes(data, "little") >> fill_bits
    out = bytes((value >> (7 * index)) & 0x7F for index in range(count))

    padded = septets is None and count > 0 and bits % 7 == 0
    if padded and out[-1] in (0x00, CARRIAGE_RETURN):
        out = out[:-1]
    return out


def pack(septets: bytes, *, fill_bits: int = 0) -> bytes:
    """
    Pack septets (one per octet) as GSM 7-bit, the inverse of :func:`unpack`.

    Spare bits, the ``fill_bits`` at the start and any at the end, are zero.

    :raises ValueError: for fill bits outside 0..6 or an octet above 0x7F.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0 to 6, not {fill_bits}")
    value = 0
    for index, septet in enumerate(septets):
        if septet > 0x7F:
            raise ValueError(f"octet 0x{septet:02X} at {index} is not a septet")
        value |= septet << (fill_bits + 7 * index)
    length = (fill_bits + 7 * len(septets) + 7) // 8
    return value.to_bytes(length, "little")
