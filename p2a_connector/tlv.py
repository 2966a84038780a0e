"""
The optional parameters (TLVs) of a deliver_sm or data_sm, as the event shows them.

SMPP 3.4 (5.3.2) fixes the length of most TLVs, and SMSCs still send other
lengths.  Nothing here fails on a value of a surprising length: a TLV that
cannot be read as what its tag says is shown as hex and not acted on, so a
one-octet sar_msg_ref_num still joins its segments and a five-octet
its_session_info leaves the session id unknown rather than the message lost.
"""

from __future__ import annotations

from p2a_connector.smpp_status import tag_name

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

# SMPP gives 2 octets to the reference and 1 to the counts; the counts are
# taken from up to 2 octets too, but a count past what one octet holds is
# not a count any SMSC meant.
_MAX_SEGMENTS = 255


def tlvs_json(tlvs: list[tuple[int, bytes]]) -> dict:
    """
    TLVs by name with simple values; unknown and vendor tags by hex tag.

    A tag that occurs more than once maps to the list of its values.
    """
    shown: dict = {}
    for tag, value in tlvs:
        key = tag_name(tag) or f"0x{tag:04x}"
        rendered = _value(tag, value)
        if key not in shown:
            shown[key] = rendered
        elif isinstance(shown[key], list):
            shown[key].append(rendered)
        else:
            shown[key] = [shown[key], rendered]
    return shown


def first_values(tlvs: list[tuple[int, bytes]]) -> dict[int, bytes]:
    """Each tag's first value, as `MOPdu.tlv` reads it."""
    values: dict[int, bytes] = {}
    for tag, value in tlvs:
        values.setdefault(tag, value)
    return values


def sar(values: dict[int, bytes]) -> tuple[int, int, int] | None:
    """
    The reference, total and segment number of the SAR TLVs.

    None when one is missing, of a length SMPP cannot mean, or names a
    segment a receiver must ignore (part 0, a part past the total, one part):
    such a PDU is a message on its own.
    """
    numbers = []
    for tag in SAR_TAGS:
        value = values.get(tag)
        if value is None or not 1 <= len(value) <= 2:
            return None
        numbers.append(int.from_bytes(value, "big"))
    reference, total, seqnum = numbers
    if not 2 <= total <= _MAX_SEGMENTS or not 1 <= seqnum <= total:
        return None
    return reference, total, seqnum


def ports(values: dict[int, bytes]) -> dict | None:
    """The source_port and destination_port TLVs, when both are readable."""
    source = values.get(TAG_SOURCE_PORT)
    destination = values.get(TAG_DESTINATION_PORT)
    if source is None or destination is None:
        return None
    if not (1 <= len(source) <= 2 and 1 <= len(destination) <= 2):
        return None
    return {
        "source": int.from_bytes(source, "big"),
        "destination": int.from_bytes(destination, "big"),
    }


def session(values: dict[int, bytes]) -> dict | None:
    """The USSD session of a PDU, or None when it carries no session TLVs."""
    operation = values.get(TAG_USSD_SERVICE_OP)
    info = values.get(TAG_ITS_SESSION_INFO)
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


def _value(tag: int, value: bytes) -> int | str:
    if tag in INTEGER_TAGS and len(value) in (1, 2, 4):
        return int.from_bytes(value, "big")
    if tag in STRING_TAGS:
        return value.rstrip(b"\x00").decode("latin-1")
    return value.hex()


def _ussd_operation_code(value: bytes) -> int | None:
    if len(value) == 1:
        return value[0]
    # An operation written as decimal text ("17") is read rather than lost;
    # the length bound keeps int() away from its limit on digit strings.
    digits = value.rstrip(b"\x00")
    if digits.isdigit() and len(digits) <= 3:
        return int(digits)
    return None
