"""
Delivery receipts: the SMSC's report on a message the application sent.

SMPP 3.4 (appendix B) only suggests a text layout for receipts, such as
``id:123 sub:001 dlvrd:001 submit date:2412031749 done date:2412031750
stat:DELIVRD err:000 text:Hello``, and SMSCs vary it freely: key order,
case, ``submit_date`` for ``submit date``, seconds in the dates, keys of
their own.  The parser here takes whatever ``key:value`` pairs it finds and
never fails; TLVs (receipted_message_id, message_state, network_error_code),
when present, are more reliable than the text and take precedence.
"""

from __future__ import annotations

import re
from datetime import datetime

KNOWN_KEYS = ("id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err", "text")

# SMPP 3.4, 5.2.28.
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVERED",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIVERABLE",
    6: "ACCEPTED",
    7: "UNKNOWN",
    8: "REJECTED",
}

# A key starts the text or follows white space.  The two-word date keys come
# first so that "submit date:" is not read as a key "date" after a value
# "submit"; any one character may join their words ("submit_date", and the
# GSM 7-bit underscore 0x11 when the SMSC encoded its text that way).
_KEY = re.compile(
    r"(?:^|(?<=\s))(submit.?date|done.?date|[a-z][a-z0-9_]*)\s*:",
    re.IGNORECASE,
)
_DATE_LAYOUTS = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S", 14: "%Y%m%d%H%M%S"}


def parse_text(text: str) -> dict[str, str]:
    """
    The ``key:value`` pairs of a receipt text, keys lowercased.

    The two date keys are normalised to ``submit_date`` and ``done_date``.
    A key that repeats keeps its first value.

    Limitation: ``text:`` is taken to run to the end, as the suggested layout
    has it; keys an SMSC writes after it are read as part of the text.
    """
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for position, match in enumerate(matches):
        key = _normalise_key(match.group(1))
        if key == "text":
            value = text[match.end() :]
        else:
            end = (
                matches[position + 1].start()
                if position + 1 < len(matches)
                else len(text)
            )
            value = text[match.end() : end]
        fields.setdefault(key, value.strip())
        if key == "text":
            break
    return fields


def parse_date(value: str | None) -> str | None:
    """
    A receipt date as ISO 8601, or the value unchanged when it is not a date.

    Receipt dates carry no time zone (they are the SMSC's clock), so the ISO
    form has no offset either.
    """
    if value is None:
        return None
    layout = _DATE_LAYOUTS.get(len(value)) if value.isdigit() else None
    if layout is None:
        return value
    try:
        return datetime.strptime(value, layout).isoformat()
    except ValueError:
        return value


def message_state(value: bytes | None) -> dict | None:
    """The message_state TLV as its code and SMPP name (None for codes SMPP lacks)."""
    if not value:
        return None
    code = int.from_bytes(value, "big")
    return {"code": code, "name": MESSAGE_STATES.get(code)}


def network_error(value: bytes | None) -> dict | None:
    """The network_error_code TLV: network type, then a two-octet error code."""
    if value is None or len(value) != 3:
        return None
    return {"type": value[0], "code": int.from_bytes(value[1:], "big")}


def describe(
    text: str,
    *,
    receipted_message_id: bytes | None = None,
    message_state_tlv: bytes | None = None,
    network_error_code: bytes | None = None,
) -> dict:
    """
    The ``receipt`` object of a receipt.received event.

    Values read from the text stay strings (``err:000`` is not the number 0;
    ids may be hexadecimal or decimal and are passed on as written).  Keys
    outside SMPP's suggested layout are kept under ``extra``.
    """
    fields = parse_text(text)

    message_id = fields.get("id")
    if receipted_message_id:
        message_id = receipted_message_id.rstrip(b"\x00").decode("latin-1")

    return {
        "message_id": message_id,
        "stat": fields.get("stat"),
        "err": fields.get("err"),
        "sub": fields.get("sub"),
        "dlvrd": fields.get("dlvrd"),
        "submit_date": parse_date(fields.get("submit_date")),
        "done_date": parse_date(fields.get("done_date")),
        "text": fields.get("text"),
        "message_state": message_state(message_state_tlv),
        "network_error_code": network_error(network_error_code),
        "extra": {k: v for k, v in fields.items() if k not in KNOWN_KEYS},
    }


def _normalise_key(key: str) -> str:
    key = key.lower()
    if key.startswith("submit") and key.endswith("date"):
        return "submit_date"
    if key.startswith("done") and key.endswith("date"):
        return "done_date"
    return key
