"""
Messages going out to people: replies taken from a webhook's answer and
messages posted to the outbound API, as the spool keeps them until they are
sent as submit_sm.

An `Outbound` is stored before anything is sent, under an id that is a pure
function of where it came from (the event it answers and its place among
the replies, or the API request), so a webhook delivery retried or a daemon
restarted never queues the same reply twice.  Its state moves
``queued`` -> ``sent`` (every part accepted by the SMSC) or ``failed`` (an
error a retry cannot mend, or retries exhausted), and a failure produces a
``reply.failed`` event for the webhook.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

STATES = ("queued", "sent", "failed")

# How long the spools keep a sent or failed message (for GET /v1/messages),
# and how long a part's SMSC message_id finds its message (receipts can take
# days to come back).
DEFAULT_KEEP = 7 * 24 * 3600.0
DEFAULT_RECEIPT_KEEP = 3 * 24 * 3600.0


def reply_id(event_id: str, index: int) -> str:
    """
    The id of the ``index``-th reply to an event: the same on every delivery
    attempt of that event, from any instance.
    """
    digest = hashlib.sha256(f"{event_id}/reply/{index}".encode()).digest()[:16]
    return "rpl_" + base64.b32encode(digest).decode().rstrip("=").lower()


def receipt_key(operator: str, message_id: str) -> str:
    """
    What a receipt is looked up by: the SMSC's message_id, within the
    operator whose SMSC gave it (two SMSCs may both count from 1).
    """
    return f"{operator}|{message_id}"


@attrs.frozen
class Outbound:
    """
    One message to send.

    :ivar id: ``rpl_...``; see `reply_id`.
    :ivar operator: whose transmitter or transceiver bind sends it.
    :ivar source: the address it is sent from (the number the person wrote
        to), as ``{"address", "ton", "npi"}``.
    :ivar destination: the person, in the same form.
    :ivar text: what to send; encoded and split when it is sent.
    :ivar webhook: where a ``reply.failed`` event for it goes.
    :ivar in_reply_to: the event id it answers, or None (outbound API).
    :ivar ussd: for a USSD answer, ``{"session": n, "sequence": n, "end":
        bool}``: it goes with ussd_service_op and its_session_info.
    :ivar registered_delivery: asked of the SMSC in the submit_sm.
    :ivar created_at: when it was queued.
    """

    id: str
    operator: str
    source: Mapping[str, Any]
    destination: Mapping[str, Any]
    text: str
    webhook: str
    created_at: float
    in_reply_to: str | None = None
    ussd: Mapping[str, Any] | None = None
    registered_delivery: int = 0

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Outbound:
        return cls(**value)

    def dumps(self) -> str:
        """The message as the spools keep it: compact ASCII JSON."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> Outbound:
        return cls.from_json(json.loads(text))


@attrs.frozen
class OutboundState:
    """
    Where an outbound message is, as `Spool.outbound` reports it.

    :ivar attempt: failed attempts so far (throttling, a bind not bound).
    :ivar parts_sent: parts the SMSC accepted; a retry goes on from there,
        with the same concatenation reference.
    :ivar message_ids: the SMSC's message_id of each part accepted.
    :ivar error: the last failure, or why it failed for good.
    """

    message: Outbound
    state: str
    attempt: int = 0
    next_at: float = 0.0
    reference: int = 0
    parts_sent: int = 0
    message_ids: tuple[str, ...] = ()
    error: str | None = None
    sent_at: float | None = None

    def to_json(self) -> dict:
        """The state as the outbound API shows it."""
        value = attrs.asdict(self, recurse=False)
        value["message"] = self.message.to_json()
        value["message_ids"] = list(self.message_ids)
        return value
