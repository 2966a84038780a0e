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
decodes, U+FFFD where nothing does, and its raw bytes.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import attrs

from p2a_connector import receipt, udh
from p2a_connector.alphabets import decode_text, encoding_for
from p2a_connector.models import MOPdu
from p2a_connector.smpp_status import status_code, tag_name

UDHI = 0x40
MESSAGE_TYPE_MASK = 0x3C
SMSC_DELIVERY_RECEIPT = 0x04
INTERMEDIATE_NOTIFICATION = 0x24

TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SOURCE_PORT = 0x020A
TAG_DESTINATION_PORT = 0x020B
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427
TAG_USSD_SERVICE_OP = 0x0501
TAG_ITS_SESSION_INFO = 0x1383

SAR_TAGS = (TAG_SAR_MSG_REF_NUM, TAG_SAR_TOTAL_SEGMENTS, TAG_SAR_SEGMENT_SEQNUM)

USSD_OPERATIONS = {
    0: "pssd_indication",
    1: "pssr_indication",
    2: "ussr_request",
    3: "ussn_request",
    16: "pssd_response",
    17: "pssr_response",
    18: "ussr_confirm",
    19: "ussn_confirm",
}

# Tags whose value SMPP 3.4 defines as an integer, shown as a number.
INTEGER_TAGS = frozenset(
    {
        0x0005, 0x0006, 0x0007, 0x0008, 0x000D, 0x000E, 0x000F, 0x0010,
        0x0017, 0x0019, 0x0030, 0x0201, 0x0204, 0x0205, 0x020A, 0x020B,
        0x020C, 0x020D, 0x020E, 0x020F, 0x0210, 0x0302, 0x0304, 0x0420,
        0x0421, 0x0422, 0x0425, 0x0426, 0x0427, 0x0501, 0x1201, 0x1203,
        0x1204, 0x1380,
    }
)  # fmt: skip
# Tags whose value is a NUL-terminated string.
STRING_TAGS = frozenset({0x001D, 0x001E})

# The user data's length contradicts its own header: RINVMSGLEN names that
# exactly, and as a permanent error it stops the SMSC retrying a PDU that
# can never be read.
MALFORMED_UDH_STATUS = status_code("ESME_RINVMSGLEN")


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
        return attrs.asdict(self)


@attrs.frozen
class Inspected:
    """What `inspect` learnt about one PDU before anything is stored."""

    kind: str
    concat: Concat | None
    udh: bytes
    user_data: bytes


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

    tags = {tlv.tag for tlv in mo.tlvs}
    if is_receipt(mo.esm_class, tags):
        # A receipt reports on one message and is delivered on its own.
        return Inspected("receipt", None, udh_bytes, user_data)

    concat = None
    if header is not None and header.concat is not None:
        found = header.concat
        concat = Concat(found.reference, found.total, found.seqnum, found.method)
    if concat is None:
        concat = _sar(mo)
    return Inspected("message", concat, udh_bytes, user_data)


def is_receipt(esm_class: int, tags: set[int]) -> bool:
    """An SMSC delivery receipt or intermediate notification, by type or TLV."""
    message_type = esm_class & MESSAGE_TYPE_MASK
    return (
        message_type in (SMSC_DELIVERY_RECEIPT, INTERMEDIATE_NOTIFICATION)
        or TAG_RECEIPTED_MESSAGE_ID in tags
    )


def reassembly_key(operator: str, mo: MOPdu, concat: Concat) -> str:
    """The text that the segments of one concatenated message share."""
    parts = [
        operator,
        mo.source.address,
        mo.destination.address,
        concat.reference,
        concat.total,
    ]
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


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
        [tlv.tag, tlv.value.hex()]
        for tlv in mo.tlvs
        if not (payload_used and tlv.tag == TAG_MESSAGE_PAYLOAD)
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
        "received_at": received_at,
    }


def build_event(
    records: list[dict],
    *,
    event_id: str,
    alphabet: str,
    complete: bool,
    completed_at: float,
) -> tuple[str, dict]:
    """
    The event for one message from the records of its segments.

    The records may come in any order, repeat a segment, or (when
    ``complete`` is false) lack some.  The first segment present supplies
    the addresses and SMPP fields; the text joins every segment present.

    :returns: the event type and its envelope.
    """
    segments = _distinct_segments(records)
    first = segments[0]
    tlvs = [(tag, bytes.fromhex(value)) for tag, value in first["tlvs"]]

    received_at = iso_time(min(r["received_at"] for r in records))

    if is_receipt(first["esm_class"], {tag for tag, _ in tlvs}):
        event_type = "receipt.received"
        data = _receipt_data(first, tlvs, event_id)
        data["received_at"] = received_at
    else:
        event_type = "message.received"
        data = _message_data(segments, tlvs, event_id, alphabet, complete)
        data["received_at"] = received_at
        data["completed_at"] = iso_time(completed_at)

    envelope = {"type": event_type, "timestamp": iso_time(completed_at), "data": data}
    return event_type, envelope


def iso_time(t: float) -> str:
    """A unix time as UTC ISO 8601 with milliseconds: 2026-12-03T17:49:30.123Z."""
    millis = round(t * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def tlvs_json(tlvs: list[tuple[int, bytes]]) -> dict:
    """
    TLVs by name with simple values; unknown and vendor tags by hex tag.

    A tag that occurs more than once maps to the list of its values.
    """
    shown: dict = {}
    for tag, value in tlvs:
        key = tag_name(tag) or f"0x{tag:04x}"
        rendered = _tlv_value(tag, value)
        if key not in shown:
            shown[key] = rendered
        elif isinstance(shown[key], list):
            shown[key].append(rendered)
        else:
            shown[key] = [shown[key], rendered]
    return shown


def session(tlvs: dict[int, bytes]) -> dict | None:
    """The USSD session of a PDU, or None when it carries no session TLVs."""
    operation = tlvs.get(TAG_USSD_SERVICE_OP)
    info = tlvs.get(TAG_ITS_SESSION_INFO)
    if operation is None and info is None:
        return None

    op = None
    if operation is not None:
        code = _ussd_operation_code(operation)
        op = USSD_OPERATIONS.get(code) if code is not None else None

    if info is not None and len(info) == 2:
        return {
            "id": info[0],
            "op": op,
            "sequence": info[1] >> 1,
            "end": bool(info[1] & 0x01),
        }
    return {"id": None, "op": op, "sequence": None, "end": None}


# --- building the event data ----------------------------------------------


def _content(mo: MOPdu) -> bytes:
    """short_message, or message_payload when short_message is empty."""
    if mo.short_message:
        return mo.short_message
    payload = mo.tlv(TAG_MESSAGE_PAYLOAD)
    return payload if payload is not None else b""


def _sar(mo: MOPdu) -> Concat | None:
    values = [mo.tlv(tag) for tag in SAR_TAGS]
    if any(not value for value in values):
        return None
    reference, total, seqnum = (int.from_bytes(v, "big") for v in values)
    if total <= 1 or seqnum == 0 or seqnum > total:
        return None
    return Concat(reference, total, seqnum, "sar")


def _distinct_segments(records: list[dict]) -> list[dict]:
    """One record per segment number, in order; the earliest of duplicates."""
    ordered = sorted(records, key=lambda r: (_seqnum(r), r["received_at"]))
    segments: list[dict] = []
    for record in ordered:
        if not segments or _seqnum(segments[-1]) != _seqnum(record):
            segments.append(record)
    return segments


def _seqnum(record: dict) -> int:
    concat = record["concat"]
    return concat["seqnum"] if concat is not None else 0


def _runs(segments: list[dict]) -> list[bytes]:
    """
    The joined user data of each run of consecutive segments.

    A missing segment ends a run, so that an escape or half a UCS2 character
    before a gap is not joined to whatever follows the gap.
    """
    runs: list[bytes] = []
    previous = None
    for record in segments:
        data = base64.b64decode(record["user_data"])
        if previous is not None and _seqnum(record) == previous + 1:
            runs[-1] += data
        else:
            runs.append(data)
        previous = _seqnum(record)
    return runs


def _message_data(
    segments: list[dict],
    tlvs: list[tuple[int, bytes]],
    event_id: str,
    alphabet: str,
    complete: bool,
) -> dict:
    first = segments[0]
    concat = first["concat"]
    runs = _runs(segments)
    user_data = b"".join(runs)

    # Limitation: segments are decoded with the first segment's data_coding;
    # a message whose segments disagree on it is decoded as if they agreed.
    encoding = encoding_for(first["data_coding"], alphabet)
    text = None
    binary = None
    replaced = False
    if encoding == "binary":
        binary = _b64(user_data)
    else:
        pieces = [decode_text(run, encoding) for run in runs]
        text = "".join(piece for piece, _ in pieces)
        replaced = any(flag for _, flag in pieces)

    # `parts` stands for the SAR TLVs; the first segment's own copies, with
    # its segment number, would mislead.
    shown = [
        (tag, value)
        for tag, value in tlvs
        if not (concat is not None and concat["method"] == "sar" and tag in SAR_TAGS)
    ]
    data = {
        "id": event_id,
        "from": first["source"],
        "to": first["destination"],
        "text": text,
        "binary": binary,
        "encoding": encoding,
        "data_coding": first["data_coding"],
        "parts": {
            "total": concat["total"] if concat is not None else 1,
            "received": len(segments),
            "reference": concat["reference"] if concat is not None else None,
            "method": concat["method"] if concat is not None else None,
            "complete": complete,
        },
        "operator": first["operator"],
        "bind": first["bind"],
        "smpp": _smpp(first, shown),
        "session": session(_first_values(tlvs)),
    }

    headers = [udh.parse(bytes.fromhex(r["udh"])) for r in segments if r["udh"]]
    ports = _ports(headers, _first_values(tlvs))
    if ports is not None:
        data["ports"] = ports
    others: list[dict] = []
    for header in headers:
        for element in header.others:
            if element.to_json() not in others:
                others.append(element.to_json())
    if others:
        data["udh"] = others

    if replaced:
        data["raw"] = _b64(user_data)
        data["decode_error"] = True
    return data


def _receipt_data(record: dict, tlvs: list[tuple[int, bytes]], event_id: str) -> dict:
    # The SMSC writes receipt text itself, in ASCII, whatever alphabet its
    # subscribers' messages use; read as GSM 7-bit, "_" and "@" would change.
    user_data = base64.b64decode(record["user_data"])
    encoding = encoding_for(record["data_coding"], "latin1")
    if encoding == "binary":
        encoding = "latin1"
    text, replaced = decode_text(user_data, encoding)

    values = _first_values(tlvs)
    data = {
        "id": event_id,
        "receipt": receipt.describe(
            text,
            receipted_message_id=values.get(TAG_RECEIPTED_MESSAGE_ID),
            message_state_tlv=values.get(TAG_MESSAGE_STATE),
            network_error_code=values.get(TAG_NETWORK_ERROR_CODE),
        ),
        "text": text,
        "from": record["source"],
        "to": record["destination"],
        "operator": record["operator"],
        "bind": record["bind"],
        "smpp": _smpp(record, tlvs),
    }
    if replaced:
        data["raw"] = _b64(user_data)
        data["decode_error"] = True
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


def _ports(headers: list[udh.Header], tlvs: dict[int, bytes]) -> dict | None:
    """Ports from the UDH, else from the source_port/destination_port TLVs."""
    for header in headers:
        if header.ports is not None:
            return header.ports.to_json()
    source = tlvs.get(TAG_SOURCE_PORT)
    destination = tlvs.get(TAG_DESTINATION_PORT)
    if source and destination:
        return {
            "source": int.from_bytes(source, "big"),
            "destination": int.from_bytes(destination, "big"),
        }
    return None


def _tlv_value(tag: int, value: bytes) -> int | str:
    if tag in INTEGER_TAGS and len(value) in (1, 2, 4):
        return int.from_bytes(value, "big")
    if tag in STRING_TAGS:
        return value.rstrip(b"\x00").decode("latin-1")
    return value.hex()


def _first_values(tlvs: list[tuple[int, bytes]]) -> dict[int, bytes]:
    """Each tag's first value, as `MOPdu.tlv` reads it."""
    values: dict[int, bytes] = {}
    for tag, value in tlvs:
        values.setdefault(tag, value)
    return values


def _ussd_operation_code(value: bytes) -> int | None:
    if len(value) == 1:
        return value[0]
    # An operation written as decimal text ("17") is read rather than lost.
    digits = value.rstrip(b"\x00")
    return int(digits) if digits.isdigit() else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
