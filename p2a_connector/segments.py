"""
The spooled records of a message's segments, read back for decoding.

`decode.segment_record` writes one JSON-able record per PDU; the spool
keeps it across restarts and hands the records of one message back, in any
order and possibly repeated.  `read` checks that each is a record of that
shape and decodes its hex and base64 fields once; `distinct` orders the
segments and drops repeats; `runs` joins the user data of consecutive
segments, unpacking packed GSM 7-bit segment by segment.
"""

from __future__ import annotations

import base64
import binascii
import math

import attrs

from p2a_connector import gsm7, udh

# Unix times a record may carry: from 1970 to the end of year 9999.
_LATEST_TIME = 253402300799.0

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "command": str,
    "service_type": str,
    "source": dict,
    "destination": dict,
    "esm_class": int,
    "protocol_id": int,
    "priority_flag": int,
    "registered_delivery": int,
    "data_coding": int,
    "udh": str,
    "user_data": str,
    "tlvs": list,
    "concat": (dict, type(None)),
    "operator": str,
    "bind": str,
    "received_at": (int, float),
}


class MalformedRecord(ValueError):
    """A record that `decode.segment_record` cannot have written."""


@attrs.frozen
class Part:
    """One segment record, checked, with its bytes decoded from JSON."""

    record: dict
    udh: bytes
    header: udh.Header | None
    user_data: bytes
    tlvs: list[tuple[int, bytes]]
    seqnum: int

    @property
    def final(self) -> bool:
        """The last segment of its message, or a message on its own."""
        concat = self.record["concat"]
        return concat is None or self.seqnum == concat["total"]


def read(records: list[dict | Part]) -> list[Part]:
    """
    The records of one message as parts; a Part given is taken as it is.

    :raises MalformedRecord: naming the first field that is not as written.
    """
    if not isinstance(records, list) or not records:
        raise MalformedRecord("a message needs at least one segment record")
    return [record if isinstance(record, Part) else _part(record) for record in records]


def record_of(given: dict | Part) -> dict:
    """The record itself, of a record or of a Part read from one."""
    return given.record if isinstance(given, Part) else given


def distinct(parts: list[Part]) -> list[Part]:
    """One part per segment number, in order; the earliest of duplicates."""
    ordered = sorted(parts, key=lambda p: (p.seqnum, p.record["received_at"]))
    segments: list[Part] = []
    for part in ordered:
        if not segments or segments[-1].seqnum != part.seqnum:
            segments.append(part)
    return segments


def runs(parts: list[Part], *, packed: bool = False) -> list[bytes]:
    """
    The joined user data of each run of consecutive segments.

    A missing segment ends a run, so that an escape or half a UCS2 character
    before a gap is not joined to whatever follows the gap.  With
    ``packed``, each segment's GSM 7-bit septets are unpacked first, one
    septet per octet.
    """
    joined: list[bytes] = []
    previous = None
    for part in parts:
        data = _unpacked(part) if packed else part.user_data
        if previous is not None and part.seqnum == previous + 1:
            joined[-1] += data
        else:
            joined.append(data)
        previous = part.seqnum
    return joined


def _unpacked(part: Part) -> bytes:
    # Each segment is packed on its own, from just after its own UDH.  Only
    # the last one can end in padding; every septet of the others is text,
    # even a final '@' or CR that would look like padding.
    fill = udh.fill_bits(part.udh) if part.udh else 0
    septets = None if part.final else max(len(part.user_data) * 8 - fill, 0) // 7
    return gsm7.unpack(part.user_data, fill_bits=fill, septets=septets)


def _part(record: dict) -> Part:
    if not isinstance(record, dict):
        raise MalformedRecord(f"a segment record is a {type(record).__name__}")
    for field, kind in _FIELDS.items():
        if not isinstance(record.get(field), kind):
            raise MalformedRecord(f"field {field!r} is missing or of the wrong type")
    received_at = record["received_at"]
    if not (math.isfinite(received_at) and 0 <= received_at <= _LATEST_TIME):
        raise MalformedRecord(f"received_at {received_at!r} is not a time")

    try:
        udh_bytes = bytes.fromhex(record["udh"])
        header = udh.parse(udh_bytes) if udh_bytes else None
        user_data = base64.b64decode(record["user_data"], validate=True)
        tlvs = [(int(tag), bytes.fromhex(value)) for tag, value in record["tlvs"]]
    except (ValueError, TypeError, binascii.Error) as e:
        raise MalformedRecord(f"its udh, user_data or tlvs do not read: {e}") from None

    concat = record["concat"]
    seqnum = 0
    if concat is not None:
        numbers = [concat.get(key) for key in ("reference", "total", "seqnum")]
        if not all(isinstance(n, int) for n in numbers) or not isinstance(
            concat.get("method"), str
        ):
            raise MalformedRecord(f"its concat {concat!r} is not a segment's")
        seqnum = concat["seqnum"]
    return Part(record, udh_bytes, header, user_data, tlvs, seqnum)
