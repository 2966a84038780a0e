"""
From a received deliver_sm or data_sm to the data of a webhook event.

Pure functions, no I/O.  `inspect` looks at one PDU as it arrives: is it a
message or a receipt, is it one segment of several, and which bytes are its
user data.  `segment_record` turns it into a JSON-able record the spool can
keep across restarts, and `build_event` turns the records of one message
(one, or all the segments that arrived) into the event envelope.  Text is
decoded only there, once, over the joined user data, because a UCS2
surrogate pair or a GSM escape may straddle two segments.

A text that cannot be decoded is never refused: it is delivered with what
decodes, U+FFFD where nothing does, and its raw bytes.  Whatever a PDU or a
record holds, these functions raise nothing but `DecodeError`.
"""

from __future__ import annotations

import base64
import time

import attrs
import orjson

from p2a_connector import gsm7, receipt, segments, tlv, udh
from p2a_connector.alphabets import DecodeOptions, Text, encoding_for, read_text
from p2a_connector.models import MOPdu
from p2a_connector.smpp_status import status_code
from p2a_connector.tlv import (
    SAR_TAGS,
    TAG_MESSAGE_PAYLOAD,
    TAG_MESSAGE_STATE,
    TAG_NETWORK_ERROR_CODE,
    TAG_RECEIPTED_MESSAGE_ID,
    first_values,
    session,
    tlvs_json,
)

__all__ = [
    "Concat",
    "DecodeError",
    "DecodeOptions",
    "Inspected",
    "build_event",
    "build_single_event",
    "encoding_for",
    "inspect",
    "is_receipt",
    "iso_time",
    "reassembly_key",
    "segment_record",
    "session",
    "tlvs_json",
]

UDHI = 0x40
MESSAGE_TYPE_MASK = 0x3C
SMSC_DELIVERY_RECEIPT = 0x04
INTERMEDIATE_NOTIFICATION = 0x24

# The user data's length contradicts its own header: RINVMSGLEN names that
# exactly, and as a permanent error it stops the SMSC retrying a PDU that
# can never be read.
MALFORMED_UDH_STATUS = status_code("ESME_RINVMSGLEN")
# A record that segment_record cannot have written is a fault on our side.
MALFORMED_RECORD_STATUS = status_code("ESME_RSYSERR")


class DecodeError(Exception):
    """A PDU that cannot be taken apart; `status` is the answer to send."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen
class Concat:
    """Which segment of which concatenated message a PDU carries."""

    reference: int
    total: int
    seqnum: int
    method: str

    def to_json(self) -> dict:
        # Written out: attrs.asdict took a tenth of building a segment record.
        return {
            "reference": self.reference,
            "total": self.total,
            "seqnum": self.seqnum,
            "method": self.method,
        }


@attrs.frozen
class Inspected:
    """What `inspect` learnt about one PDU before anything is stored."""

    kind: str
    concat: Concat | None
    udh: bytes
    user_data: bytes
    header: udh.Header | None = None


def inspect(mo: MOPdu) -> Inspected:
    """
    Classify one PDU and separate its UDH from its user data.

    :raises DecodeError: when the UDH contradicts the bytes that carry it.
    """
    content = _content(mo)

    header = None
    udh_bytes = b""
    user_data = content
    if mo.esm_class & UDHI:
        try:
            udh_bytes, user_data = udh.split(content)
            header = udh.parse(udh_bytes)
        except udh.MalformedUDH as e:
            raise DecodeError(
                MALFORMED_UDH_STATUS,
                f"{mo.command} from {mo.source.address} to "
                f"{mo.destination.address} has the UDH indicator set in "
                f"esm_class 0x{mo.esm_class:02x}, but {e}",
            ) from None

    tags = {item.tag for item in mo.tlvs}
    if is_receipt(mo.esm_class, tags):
        # A receipt reports on one message and is delivered on its own.
        return Inspected("receipt", None, udh_bytes, user_data, header)

    concat = None
    if header is not None and header.concat is not None:
        found = header.concat
        concat = Concat(found.reference, found.total, found.seqnum, found.method)
    if concat is None:
        sar = tlv.sar(first_values([(item.tag, item.value) for item in mo.tlvs]))
        if sar is not None:
            concat = Concat(*sar, "sar")
    return Inspected("message", concat, udh_bytes, user_data, header)


def is_receipt(esm_class: int, tags: set[int]) -> bool:
    """An SMSC delivery receipt or intermediate notification, by type or TLV."""
    message_type = esm_class & MESSAGE_TYPE_MASK
    return (
        message_type in (SMSC_DELIVERY_RECEIPT, INTERMEDIATE_NOTIFICATION)
        or TAG_RECEIPTED_MESSAGE_ID in tags
    )


def reassembly_key(operator: str, mo: MOPdu, concat: Concat) -> str:
    """
    The text that the segments of one concatenated message share.

    The method is part of it: an 8-bit and a 16-bit UDH reference, or a
    16-bit one and a SAR reference, from the same sender may be the same
    number and still belong to different messages.
    """
    parts = [
        operator,
        mo.source.address,
        mo.destination.address,
        concat.method,
        concat.reference,
        concat.total,
    ]
    # orjson makes the bytes json.dumps(parts, ensure_ascii=False,
    # separators=(",", ":")) makes, the key of earlier versions, in a
    # fraction of the time.
    return orjson.dumps(parts).decode()


def segment_record(
    mo: MOPdu,
    inspected: Inspected,
    *,
    operator: str,
    bind: str,
    received_at: float,
) -> dict:
    """Everything `build_event` needs about one PDU, as JSON-able values."""
    # When message_payload carried the user data, udh and user_data hold it;
    # keeping the TLV too would store the message twice.
    payload_used = not mo.short_message and mo.tlv(TAG_MESSAGE_PAYLOAD) is not None
    tlvs = [
        [item.tag, item.value.hex()]
        for item in mo.tlvs
        if not (payload_used and item.tag == TAG_MESSAGE_PAYLOAD)
    ]
    concat = inspected.concat
    return {
        "command": mo.command,
        "service_type": mo.service_type,
        "source": mo.source.to_json(),
        "destination": mo.destination.to_json(),
        "esm_class": mo.esm_class,
        "protocol_id": mo.protocol_id,
        "priority_flag": mo.priority_flag,
        "registered_delivery": mo.registered_delivery,
        "data_coding": mo.data_coding,
        "udh": inspected.udh.hex(),
        "user_data": _b64(inspected.user_data),
        "tlvs": tlvs,
        "concat": concat.to_json() if concat is not None else None,
        "operator": operator,
        "bind": bind,
        "sequence_number": mo.sequence_number,
        "received_at": received_at,
    }


def build_event(
    records: list[dict],
    *,
    event_id: str,
    options: DecodeOptions | None = None,
    complete: bool,
    completed_at: float,
) -> tuple[str, dict]:
    """
    The event for one message from the records of its segments.

    The records may come in any order, repeat a segment, or (when
    ``complete`` is false) lack some; any may come as its `part_of`.  The
    first segment present supplies the addresses and SMPP fields; the text
    joins every segment present.

    :param options: how the bind's SMSC writes text; the defaults when None.
    :returns: the event type and its envelope.
    :raises DecodeError: when a record is not one `segment_record` writes.
    """
    try:
        parts = segments.distinct(segments.read(records))
    except segments.MalformedRecord as e:
        raise DecodeError(
            MALFORMED_RECORD_STATUS,
            f"a spooled segment record cannot be read: {e}; the spool holds "
            "data that this version's segment_record did not write",
        ) from None
    return _event(parts, event_id, options, complete, completed_at)


def build_single_event(
    record: dict,
    inspected: Inspected,
    *,
    event_id: str,
    options: DecodeOptions | None = None,
    complete: bool,
    completed_at: float,
) -> tuple[str, dict]:
    """
    `build_event` for a PDU that is a message on its own, from the record
    `segment_record` just made of it and what `inspect` found, without
    reading the record's hex and base64 back.
    """
    return _event(
        [part_of(record, inspected)], event_id, options, complete, completed_at
    )


def part_of(record: dict, inspected: Inspected) -> segments.Part:
    """
    What `segments.read` makes of the record `segment_record` just made,
    from what `inspect` found: for `build_event`, which takes it in place
    of the record.
    """
    concat = inspected.concat
    return segments.Part(
        record,
        inspected.udh,
        inspected.header if inspected.udh else None,
        inspected.user_data,
        [(tag, bytes.fromhex(value)) for tag, value in record["tlvs"]],
        concat.seqnum if concat is not None else 0,
    )


def _event(
    parts: list[segments.Part],
    event_id: str,
    options: DecodeOptions | None,
    complete: bool,
    completed_at: float,
) -> tuple[str, dict]:
    if options is None:
        options = DecodeOptions()
    first = parts[0]
    received_at = iso_time(min(part.record["received_at"] for part in parts))

    if is_receipt(first.record["esm_class"], {tag for tag, _ in first.tlvs}):
        event_type = "receipt.received"
        data = _receipt_data(first, event_id, options)
        data["received_at"] = received_at
    else:
        event_type = "message.received"
        data = _message_data(parts, event_id, options, complete)
        data["received_at"] = received_at
        data["completed_at"] = iso_time(completed_at)
        # The spool puts the conversation here as it stores the event
        # (p2a_connector.conversation.PLACEHOLDER).
        data["conversation"] = None

    envelope = {"type": event_type, "timestamp": iso_time(completed_at), "data": data}
    return event_type, envelope


def iso_time(t: float) -> str:
    """A unix time as UTC ISO 8601 with milliseconds: 2026-12-03T17:49:30.123Z."""
    # This runs several times per message, nearly always within the second
    # of the call before: the seconds' text is kept, as one tuple, so the
    # spool thread and the reactor may share it.
    global _last_second
    millis = round(t * 1000)
    second = millis // 1000
    known, text = _last_second
    if second != known:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{millis % 1000:03d}Z"


_last_second: tuple[int, str] = (-1, "")


# --- text ---------------------------------------------------------------------


def _content(mo: MOPdu) -> bytes:
    """short_message, or message_payload when short_message is empty."""
    if mo.short_message:
        return mo.short_message
    payload = mo.tlv(TAG_MESSAGE_PAYLOAD)
    return payload if payload is not None else b""


def _read(
    parts: list[segments.Part], declared: str, options: DecodeOptions, tables: dict
) -> Text:
    """The text of the parts, unpacking packed GSM 7-bit segment by segment."""
    packed = declared == "gsm7" and options.gsm7_packed
    runs = segments.runs(parts, packed=packed)
    # Limitation: unpacked septets always read as GSM, so a packed bind's
    # mislabelled text is not recognised and no other reading is tried.
    fallback = options.fallback and not packed
    return read_text(runs, declared, fallback=fallback, **tables)


def _language(headers: list[udh.Header]) -> tuple[dict | None, dict]:
    """
    The national language shifts as the event shows them, and the tables.

    Limitation: the first segment that names a table decides it for the
    whole message; segments that name different ones are read as if they
    agreed.
    """
    single = next((h.single_shift for h in headers if h.single_shift is not None), None)
    locking = next(
        (h.locking_shift for h in headers if h.locking_shift is not None), None
    )
    if single is None and locking is None:
        return None, {}

    chosen = {"locking": locking, "single": single}
    shown: dict = {side: gsm7.LANGUAGES.get(n) for side, n in chosen.items()}
    unknown = {
        side: n
        for side, n in chosen.items()
        if n is not None and n not in gsm7.LANGUAGES
    }
    if unknown:
        shown["unknown"] = unknown
    tables = {side: n if n in gsm7.LANGUAGES else 0 for side, n in chosen.items()}
    return shown, tables


def _text_fields(data: dict, decoded: Text, raw: bytes) -> None:
    if decoded.fell_back:
        data["decode_fallback"] = {
            "declared": decoded.declared,
            "used": decoded.encoding,
        }
    if decoded.fell_back or decoded.replaced:
        data["raw"] = _b64(raw)
    if decoded.replaced:
        data["decode_error"] = True


# --- building the event data --------------------------------------------------


def _message_data(
    parts: list[segments.Part], event_id: str, options: DecodeOptions, complete: bool
) -> dict:
    first = parts[0]
    record = first.record
    concat = record["concat"]
    headers = [part.header for part in parts if part.header is not None]
    language, tables = _language(headers)
    raw = b"".join(part.user_data for part in parts)

    # Limitation: segments are decoded with the first segment's data_coding;
    # a message whose segments disagree on it is decoded as if they agreed.
    encoding = options.encoding(record["data_coding"])
    text = None
    binary = None
    decoded = None
    if encoding == "binary":
        binary = _b64(raw)
    else:
        decoded = _read(parts, encoding, options, tables)
        text, encoding = decoded.text, decoded.encoding

    # `parts` stands for the SAR TLVs; the first segment's own copies, with
    # its segment number, would mislead.
    sar = concat is not None and concat["method"] == "sar"
    shown = [(tag, value) for tag, value in first.tlvs if not (sar and tag in SAR_TAGS)]
    values = first_values(first.tlvs)
    data = {
        "id": event_id,
        "from": record["source"],
        "to": record["destination"],
        "text": text,
        "binary": binary,
        "encoding": encoding,
        "data_coding": record["data_coding"],
        "parts": {
            "total": concat["total"] if concat is not None else 1,
            "received": len(parts),
            "reference": concat["reference"] if concat is not None else None,
            "method": concat["method"] if concat is not None else None,
            "complete": complete,
        },
        "operator": record["operator"],
        "bind": record["bind"],
        "smpp": _smpp(record, shown),
        "session": session(values),
    }

    ports = next((h.ports.to_json() for h in headers if h.ports is not None), None)
    if ports is None:
        ports = tlv.ports(values)
    if ports is not None:
        data["ports"] = ports
    if language is not None:
        data["language"] = language
    others: list[dict] = []
    for header in headers:
        for element in header.others:
            if element.to_json() not in others:
                others.append(element.to_json())
    if others:
        data["udh"] = others

    if decoded is not None:
        _text_fields(data, decoded, raw)
    return data


def _receipt_data(part: segments.Part, event_id: str, options: DecodeOptions) -> dict:
    # The SMSC writes receipt text itself, in ASCII, whatever alphabet its
    # subscribers' messages use; read as GSM 7-bit, "_" and "@" would change.
    # So data_coding 0 is Latin-1 here, whatever the operator's alphabet.
    record = part.record
    data_coding = record["data_coding"]
    encoding = "latin1" if data_coding == 0 else options.encoding(data_coding)
    if encoding == "binary":
        encoding = "latin1"
    decoded = _read([part], encoding, options, {})

    values = first_values(part.tlvs)
    data = {
        "id": event_id,
        "receipt": receipt.describe(
            decoded.text,
            receipted_message_id=values.get(TAG_RECEIPTED_MESSAGE_ID),
            message_state_tlv=values.get(TAG_MESSAGE_STATE),
            network_error_code=values.get(TAG_NETWORK_ERROR_CODE),
        ),
        "text": decoded.text,
        "from": record["source"],
        "to": record["destination"],
        "operator": record["operator"],
        "bind": record["bind"],
        "smpp": _smpp(record, part.tlvs),
    }
    _text_fields(data, decoded, part.user_data)
    return data


def _smpp(record: dict, tlvs: list[tuple[int, bytes]]) -> dict:
    return {
        "command": record["command"],
        "service_type": record["service_type"],
        "esm_class": record["esm_class"],
        "message_type": record["esm_class"] & MESSAGE_TYPE_MASK,
        "protocol_id": record["protocol_id"],
        "priority_flag": record["priority_flag"],
        "registered_delivery": record["registered_delivery"],
        "tlvs": tlvs_json(tlvs),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
