"""
Mobile-originated traffic as phones and SMSCs shape it, for the simulator.

A text is encoded the way a handset would (GSM 7-bit unpacked, one septet per
octet as SMPP carries it, or UCS2) and split into the deliver_sm segments an
SMSC would send: concatenation UDH with an 8-bit or 16-bit reference, SAR
TLVs, or the whole text in message_payload.  The demo and the tests use it to
produce traffic; the connector itself never does.
"""

from __future__ import annotations

import struct

import attrs

from p2a_connector import gsm7
from p2a_connector.models import TLV, Address, MOPdu

UDHI = 0x40
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_MESSAGE_PAYLOAD = 0x0424

DATA_CODING = {"gsm7": 0x00, "ascii": 0x01, "latin1": 0x03, "ucs2": 0x08}
# Octets of user data in one segment without and with a UDH of each size.
# GSM 7-bit unpacked: 160 septets, less the UDH rounded up to septets.
_SINGLE = {"gsm7": 160, "ascii": 160, "latin1": 140, "ucs2": 140}
_UDH_OCTETS = {"udh8": 6, "udh16": 7}

_GSM_DEFAULT = {char: index for index, char in enumerate(gsm7.DEFAULT) if index != 0x1B}
_GSM_EXTENSION = {char: code for code, char in gsm7.EXTENSION.items()}


@attrs.frozen
class Part:
    """The text-bearing fields of one deliver_sm."""

    short_message: bytes
    data_coding: int
    esm_class: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def deliver_sm(
        self, source: Address, destination: Address, sequence_number: int = 1
    ) -> MOPdu:
        """This part as the connector's session layer would hand it on."""
        return MOPdu(
            command="deliver_sm",
            sequence_number=sequence_number,
            service_type="",
            source=source,
            destination=destination,
            esm_class=self.esm_class,
            protocol_id=0,
            priority_flag=0,
            registered_delivery=0,
            data_coding=self.data_coding,
            short_message=self.short_message,
            tlvs=tuple(TLV(tag, value) for tag, value in self.tlvs),
        )


def gsm7_encode(text: str) -> bytes:
    """Unpacked GSM 7-bit octets; ValueError for a character it lacks."""
    out = bytearray()
    for char in text:
        if char in _GSM_DEFAULT:
            out.append(_GSM_DEFAULT[char])
        elif char in _GSM_EXTENSION:
            out += bytes((gsm7.ESCAPE, _GSM_EXTENSION[char]))
        else:
            raise ValueError(f"{char!r} is not in the GSM 7-bit alphabet")
    return bytes(out)


def encode(text: str, coding: str) -> bytes:
    if coding == "gsm7":
        return gsm7_encode(text)
    if coding == "ucs2":
        return text.encode("utf-16-be")
    return text.encode({"ascii": "ascii", "latin1": "latin-1"}[coding])


def chunks(data: bytes, coding: str, size: int, whole: bool = True) -> list[bytes]:
    """
    Cut encoded text into pieces of at most ``size`` octets.

    With ``whole`` (what handsets do), no GSM escape and no UTF-16 surrogate
    pair is cut in two; without it the cut falls anywhere, to test receivers
    that must join such halves.
    """
    if size < 1:
        raise ValueError(f"a segment must hold at least one octet, not {size}")
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        if whole and end < len(data):
            if coding == "gsm7" and data[end - 1] == gsm7.ESCAPE:
                if not _escaped(data, start, end - 1):
                    end -= 1
            elif coding == "ucs2":
                end -= (end - start) % 2
                if end - start >= 2 and 0xD8 <= data[end - 2] <= 0xDB:
                    end -= 2
        if end <= start:
            raise ValueError(
                f"{size} octets per segment cannot hold a whole {coding} character"
            )
        pieces.append(data[start:end])
        start = end
    return pieces


def _escaped(data: bytes, start: int, index: int) -> bool:
    """Whether data[index] is itself the second octet of an escape."""
    run = 0
    while index - 1 - run >= start and data[index - 1 - run] == gsm7.ESCAPE:
        run += 1
    return run % 2 == 1


def split(
    text: str,
    coding: str = "gsm7",
    method: str | None = "udh8",
    reference: int = 1,
    size: int | None = None,
    whole: bool = True,
) -> list[Part]:
    """
    The segments an SMSC would deliver for ``text``.

    ``method`` is ``udh8``, ``udh16``, ``sar``, ``payload`` (one deliver_sm
    with the whole text in message_payload) or None (one short_message,
    however long).  ``size`` overrides the octets of text per segment.
    """
    data = encode(text, coding)
    data_coding = DATA_CODING[coding]

    if method is None:
        return [Part(data, data_coding)]
    if method == "payload":
        return [Part(b"", data_coding, tlvs=((TAG_MESSAGE_PAYLOAD, data),))]

    if size is None:
        size = _SINGLE[coding] - _UDH_OCTETS.get(method, 0)
        if coding in ("gsm7", "ascii") and method in _UDH_OCTETS:
            size = 160 - (_UDH_OCTETS[method] * 8 + 6) // 7
    pieces = chunks(data, coding, size, whole) or [b""]
    total = len(pieces)
    if total > 255:
        raise ValueError(f"{total} segments: a concatenated message has at most 255")
    limit = 0xFF if method == "udh8" else 0xFFFF
    if not 0 <= reference <= limit:
        raise ValueError(f"a {method} reference is 0 to {limit}, not {reference}")

    parts = []
    for seqnum, piece in enumerate(pieces, start=1):
        if method == "udh8":
            udh = bytes((5, 0x00, 3, reference, total, seqnum))
            parts.append(Part(udh + piece, data_coding, esm_class=UDHI))
        elif method == "udh16":
            udh = bytes((6, 0x08, 4)) + struct.pack(">HBB", reference, total, seqnum)
            parts.append(Part(udh + piece, data_coding, esm_class=UDHI))
        elif method == "sar":
            tlvs = (
                (TAG_SAR_MSG_REF_NUM, struct.pack(">H", reference)),
                (TAG_SAR_TOTAL_SEGMENTS, bytes((total,))),
                (TAG_SAR_SEGMENT_SEQNUM, bytes((seqnum,))),
            )
            parts.append(Part(piece, data_coding, tlvs=tlvs))
        else:
            raise ValueError(f"unknown concatenation method {method!r}")
    return parts
