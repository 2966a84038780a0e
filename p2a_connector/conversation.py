"""
Conversations and USSD sessions: what the spools need to give every
``message.received`` event its ``data.conversation`` and to end idle USSD
sessions, written once for both backends.

A conversation is keyed by (operator, the person's address, the address
they wrote to).  Its id and turn are assigned by the spool inside the write
that stores the event, so instances never give two messages the same turn.
The event body is encoded before that write, so `decode.build_event` leaves
the placeholder `PLACEHOLDER` in ``data``; the spool puts the conversation
object in its place with `fill`.  A JSON string cannot hold those bytes
unescaped, so the first occurrence is the field.

A USSD session is keyed by (operator, the person's address, the session id
of its_session_info).  It is open from its first message to the message
that ends it, a reply sent with end_session, or ``ussd_idle`` seconds of
silence, which `session_ended` turns into an event for the webhook.

Pure functions only: the spools call them inside their transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from p2a_connector.decode import iso_time
from p2a_connector.spool import Event

PLACEHOLDER = b'"conversation":null'

DEFAULT_IDLE = 1800.0
DEFAULT_USSD_IDLE = 120.0


def conversation_key(operator: str, source: str, destination: str) -> str:
    """The key of the conversation a person holds with one of our addresses."""
    return f"{operator}|{source}|{destination}"


def ussd_key(operator: str, source: str, session_id: int) -> str:
    """The key of one USSD session of one person."""
    return f"{operator}|{source}|{session_id}"


def keys(event_type: str, data: Mapping[str, Any]) -> tuple[str | None, tuple | None]:
    """
    The conversation key and the USSD session an event opens or refreshes,
    from its ``data``: ``(None, None)`` for anything but ``message.received``.

    The session is ``(key, info)``; ``info`` holds what `session_ended`
    needs: ``session``, ``from``, ``to`` and ``operator``.  A session without
    an id (no its_session_info) is not tracked.
    """
    if event_type != "message.received":
        return None, None
    operator = str(data.get("operator") or "")
    source = (data.get("from") or {}).get("address", "")
    destination = (data.get("to") or {}).get("address", "")
    conversation = conversation_key(operator, source, destination)

    session = data.get("session")
    if not session or session.get("id") is None:
        return conversation, None
    info = {
        "session": dict(session),
        "from": data.get("from"),
        "to": data.get("to"),
        "operator": operator,
    }
    return conversation, (ussd_key(operator, source, session["id"]), info)


def keys_of_body(event_type: str, body: bytes) -> tuple[str | None, tuple | None]:
    """`keys` of an encoded event that still holds the placeholder."""
    if event_type != "message.received" or PLACEHOLDER not in body:
        return None, None
    return keys(event_type, orjson.loads(body).get("data") or {})


def conversation_id_for(event_id: str) -> str:
    """
    The id of a conversation the event starts: ``cnv_`` and the characters of
    its ``msg_`` id, unique because a message starts at most one
    conversation, sorting by time as the event ids do, and made without
    drawing random bits for every message that only continues one.
    """
    return "cnv_" + event_id.removeprefix("msg_")


def new_event_id(now: float) -> str:
    """A fresh webhook-id for an event the spool makes itself."""
    from p2a_connector.intake import new_event_id

    return new_event_id(now)


def as_json(conversation_id: str, turn: int, started_at: float) -> bytes:
    """The ``data.conversation`` object, compact, as it replaces the placeholder."""
    value = {"id": conversation_id, "turn": turn, "started_at": iso_time(started_at)}
    return orjson.dumps(value)


def fill(body: bytes, conversation: bytes) -> bytes:
    """The body with its first placeholder replaced by ``conversation``."""
    return body.replace(PLACEHOLDER, b'"conversation":' + conversation, 1)


def next_turn(
    kept: tuple[str, int, float, float] | None,
    created_at: float,
    idle: float,
    fresh_id: str,
) -> tuple[str, int, float, float]:
    """
    Where a message falls: ``(id, turn, started_at, last_at)`` after it.

    ``kept`` is the conversation as stored, or None.  A message within
    ``idle`` seconds of the last one continues it; a message older than the
    last (a late reassembly) continues it too, without moving ``last_at``
    back.
    """
    if kept is not None:
        conversation_id, turn, started_at, last_at = kept
        if created_at - last_at <= idle:
            return conversation_id, turn + 1, started_at, max(last_at, created_at)
    return fresh_id, 1, created_at, created_at


def session_ended(
    event_id: str,
    now: float,
    *,
    webhook: str,
    info: Mapping[str, Any],
    last_message_id: str,
    reason: str = "timeout",
) -> Event:
    """The ``session.ended`` event of a USSD session that went idle."""
    envelope = {
        "type": "session.ended",
        "timestamp": iso_time(now),
        "data": {
            "id": event_id,
            "session": info.get("session"),
            "from": info.get("from"),
            "to": info.get("to"),
            "operator": info.get("operator"),
            "reason": reason,
            "last_message_id": last_message_id,
        },
    }
    # The same encoding as intake.encode_body, which imports this module.
    body = orjson.dumps(envelope)
    return Event(event_id, "session.ended", webhook, body, now)
