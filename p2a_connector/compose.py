"""
Texts into submit_sm parts: the alphabet a reply goes out in, and how a
long one is split.

GSM 7-bit is used when every character is in the default alphabet or its
extension table, UCS2 otherwise.  A text too long for one message is split
into parts carrying a concatenation UDH (8-bit reference by default), SAR
TLVs, or goes whole in message_payload.  Parts are cut between characters,
counted in the units the handset counts (septets, or UTF-16 code units), so
no part ends in half a GSM escape sequence or half a surrogate pair.

``data_coding`` 0 means the SMSC's default alphabet, which is GSM 7-bit for
most and Latin-1 or ASCII for some (``operator.alphabet``).  For those, a
text that fits GSM 7-bit (which the SMSC converts it to) and their alphabet
goes as data_coding 0 in their alphabet; anything else goes as UCS2.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from p2a_connector import gsm7

UDHI = 0x40
DATA_CODING_UCS2 = 0x08
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_MESSAGE_PAYLOAD = 0x0424

METHODS = ("udh8", "udh16", "sar", "payload")
MAX_PARTS = 255

# Units (septets or UTF-16 code units) in one message, alone and as a part
# after an 8-bit or 16-bit concatenation UDH (6 or 7 octets, rounded up to
# whole septets for GSM).  SAR carries its numbering in TLVs, so its parts
# hold as much as a single message.
_CAPACITY = {
    "gsm7": {None: 160, "udh8": 153, "udh16": 152, "sar": 160},
    "ucs2": {None: 70, "udh8": 67, "udh16": 66, "sar": 70},
}
_SMSC_CODECS = {"gsm7": None, "latin1": "latin-1", "ascii": "ascii", "utf8": "ascii"}


class ComposeError(ValueError):
    """The text cannot be sent as asked (too many parts, a bad option)."""


@attrs.frozen
class Part:
    """The text-bearing fields of one submit_sm."""

    short_message: bytes
    data_coding: int
    esm_class: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()


@attrs.frozen
class Composed:
    """A text ready to send: the alphabet chosen and its parts in order."""

    encoding: str
    parts: tuple[Part, ...]


def encoding_for(text: str) -> str:
    """``gsm7`` when every character has a GSM 7-bit code, else ``ucs2``."""
    try:
        gsm7.encode(text)
    except ValueError:
        return "ucs2"
    return "gsm7"


def compose(
    text: str,
    *,
    reference: int,
    alphabet: str = "gsm7",
    method: str = "udh8",
    packed: bool = False,
    max_parts: int = MAX_PARTS,
) -> Composed:
    """
    The submit_sm parts for ``text``.

    :param reference: the concatenation reference shared by the parts; taken
        modulo 256 for ``udh8``, 65536 otherwise.
    :param alphabet: what the SMSC takes data_coding 0 to mean (see module).
    :param method: how a long text is carried: ``udh8``, ``udh16``, ``sar``
        or ``payload`` (one submit_sm, the whole text in message_payload).
    :param packed: GSM 7-bit goes packed, 8 septets in 7 octets, for SMSCs
        that want it so (``operator.bind.gsm7_packed``).
    :raises ComposeError: the text needs more than ``max_parts`` parts.
    """
    if method not in METHODS:
        raise ComposeError(
            f"method must be one of {', '.join(METHODS)}, not {method!r}"
        )
    if alphabet not in _SMSC_CODECS:
        raise ComposeError(f"unknown SMSC alphabet {alphabet!r}")

    encoding = _encoding(text, alphabet)
    data_coding = 0 if encoding == "gsm7" else DATA_CODING_UCS2
    encode = _encoder(encoding, alphabet, packed)

    if method == "payload":
        return Composed(
            encoding,
            (Part(b"", data_coding, tlvs=((TAG_MESSAGE_PAYLOAD, encode(text, b"")),)),),
        )

    unit = _septets if encoding == "gsm7" else _code_units
    capacity = _CAPACITY[encoding]
    packed_gsm = packed and encoding == "gsm7" and _SMSC_CODECS[alphabet] is None
    units = sum(map(unit, text))
    single_end = _packed_ends(0, capacity[None]) if packed_gsm else None
    if units <= capacity[None] and not (single_end and single_end(text, units, True)):
        return Composed(encoding, (Part(encode(text, b""), data_coding),))

    udh_octets = {"udh8": 6, "udh16": 7}.get(method, 0)
    bad_end = None
    if packed_gsm:
        bad_end = _packed_ends(_fill_bits(udh_octets), capacity[method])
    pieces = _cut(text, unit, capacity[method], bad_end)
    if len(pieces) > max_parts:
        raise ComposeError(
            f"the text needs {len(pieces)} parts of {capacity[method]} {encoding} "
            f"units; at most {max_parts} are allowed"
        )
    total = len(pieces)
    parts = []
    for seqnum, piece in enumerate(pieces, start=1):
        if method == "sar":
            tlvs = (
                (TAG_SAR_MSG_REF_NUM, struct.pack(">H", reference % 65536)),
                (TAG_SAR_TOTAL_SEGMENTS, bytes((total,))),
                (TAG_SAR_SEGMENT_SEQNUM, bytes((seqnum,))),
            )
            final = seqnum == total
            parts.append(Part(encode(piece, b"", final), data_coding, tlvs=tlvs))
            continue
        if method == "udh8":
            udh = bytes((5, 0x00, 3, reference % 256, total, seqnum))
        else:
            udh = bytes((6, 0x08, 4)) + struct.pack(
                ">HBB", reference % 65536, total, seqnum
            )
        final = seqnum == total
        parts.append(Part(udh + encode(piece, udh, final), data_coding, esm_class=UDHI))
    return Composed(encoding, tuple(parts))


def _encoding(text: str, alphabet: str) -> str:
    if encoding_for(text) == "ucs2":
        return "ucs2"
    codec = _SMSC_CODECS[alphabet]
    if codec is not None:
        try:
            text.encode(codec)
        except UnicodeEncodeError:
            return "ucs2"
    return "gsm7"


def _encoder(encoding: str, alphabet: str, packed: bool) -> Callable[..., bytes]:
    """How a piece of text becomes the octets after its UDH (given, and
    whether it is the last piece)."""
    if encoding == "ucs2":
        return lambda text, udh, final=True: text.encode("utf-16-be")
    codec = _SMSC_CODECS[alphabet]
    if codec is not None:
        return lambda text, udh, final=True: text.encode(codec)
    if packed:
        return _packed
    return lambda text, udh, final=True: gsm7.encode(text)


def _packed(text: str, udh: bytes, final: bool = True) -> bytes:
    """
    Packed GSM 7-bit after ``udh``, with a CR where a receiver could misread
    the end (23.038 6.1.2.3.1): seven spare bits at the end are a CR, not
    zeros that read as '@'; and a text whose last septet, a CR or '@', ends
    exactly on an octet boundary gets another CR, else it would look like
    padding and be dropped.  A CR more at the end shows as nothing.  Only the
    last part gets either: `_cut` ends no other with spare bits, and every
    septet of a part before the last is text.
    """
    septets = gsm7.encode(text)
    fill = _fill_bits(len(udh))
    bits = fill + 7 * len(septets)
    ambiguous = bits % 8 == 0 and septets[-1:] in (b"\r", b"\x00")
    if final and (bits % 8 == 1 or ambiguous):
        septets += b"\r"
    return gsm7.pack(septets, fill_bits=fill)


def _packed_ends(fill: int, size: int) -> Callable[[str, int, bool], bool]:
    """
    Where a packed part may not end, for `_cut`: a part before the last may
    not leave seven spare bits (its receiver, counting septets by octets,
    would read one more septet than was sent); the last may not be full and
    end in a CR or '@' on the octet boundary (it has no room for the CR that
    `_packed` would add, and without it the end looks like padding).
    """

    def bad(piece: str, used: int, final: bool) -> bool:
        bits = fill + 7 * used
        if not final:
            return bits % 8 == 1
        last = gsm7.encode(piece[-1:])[-1:]
        return used == size and bits % 8 == 0 and last in (b"\r", b"\x00")

    return bad


def _fill_bits(udh_octets: int) -> int:
    # Packed text starts on the septet boundary after the UDH (23.040 9.2.3.24).
    return (7 - udh_octets * 8 % 7) % 7


def _septets(char: str) -> int:
    return len(gsm7.encode(char))


def _code_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _cut(
    text: str,
    unit: Callable[[str], int],
    size: int,
    bad_end: Callable[[str, int, bool], bool] | None = None,
) -> list[str]:
    """
    Pieces of at most ``size`` units, cut only between characters.

    ``bad_end(piece, units, final)``: a piece may not end so; it ends a
    character earlier instead, that character starting the next piece.
    """

    def end_of(start: int, end: int, used: int, final: bool) -> int:
        while bad_end is not None and end - start > 1:
            if not bad_end(text[start:end], used, final):
                break
            end -= 1
            used -= unit(text[end])
            final = False
        return end

    pieces, start, used = [], 0, 0
    for index, char in enumerate(text):
        cost = unit(char)
        if used + cost > size:
            end = end_of(start, index, used, final=False)
            pieces.append(text[start:end])
            start, used = end, sum(map(unit, text[end:index]))
        used += cost
    end = end_of(start, len(text), used, final=True)
    pieces.append(text[start:end])
    if end < len(text):
        pieces += _cut(text[end:], unit, size, bad_end)
    return pieces
