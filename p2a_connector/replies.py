"""
Replies in a webhook's answer: what an application writes back to the person
who texted it, read from the body of its 2xx response.

The body is JSON with either ``{"reply": {"text": ...}}`` or ``{"replies":
[{"text": ...}, ...]}``; for a USSD message a reply may say ``"end_session":
false`` to keep the menu open (ending it is the default).  Anything else in
the body is ignored, and an empty body or one that is not JSON means no
reply.  A reply goes back over the same operator, from the address the
person wrote to, to the person; its id comes from the event's, so the same
answer given twice (a retried delivery) queues it once.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from p2a_connector.outbound import Outbound, reply_id

# Longer texts would need more than the 255 parts a message can have.
MAX_TEXT = 8000
MAX_REPLIES = 10


@attrs.frozen
class Answer:
    """The replies found in one response, and what was wrong with the rest."""

    replies: tuple[Outbound, ...] = ()
    problems: tuple[str, ...] = ()


def read(
    answer: bytes,
    content_type: str | None,
    *,
    event_id: str,
    event_body: bytes,
    webhook: str,
    now: float,
) -> Answer:
    """The replies a webhook's 2xx answer asks for, for the event it answered."""
    if not answer.strip():
        return Answer()
    if content_type is not None and "json" not in content_type.lower():
        return Answer()
    try:
        document = json.loads(answer)
    except (UnicodeDecodeError, ValueError):
        return Answer(problems=("the answer is not JSON; no reply sent",))
    if not isinstance(document, dict):
        return Answer()

    wanted, problems = _wanted(document)
    if not wanted:
        return Answer(problems=tuple(problems))

    data = json.loads(event_body).get("data", {})
    if not data.get("from") or not data.get("to") or not data.get("operator"):
        problems.append("the event has no sender to answer; no reply sent")
        return Answer(problems=tuple(problems))

    replies = []
    for index, reply in enumerate(wanted):
        replies.append(
            Outbound(
                id=reply_id(event_id, index),
                operator=data["operator"],
                source=data["to"],
                destination=data["from"],
                text=reply["text"],
                webhook=webhook,
                created_at=now,
                in_reply_to=event_id,
                ussd=_ussd(data.get("session"), reply),
            )
        )
    return Answer(tuple(replies), tuple(problems))


def _wanted(document: dict) -> tuple[list[dict], list[str]]:
    """The well-formed replies of the answer, and a problem for each other one."""
    if "reply" in document:
        candidates: Any = [document["reply"]]
        where = "reply"
    elif "replies" in document:
        candidates = document["replies"]
        where = "replies"
        if not isinstance(candidates, list):
            return [], ['replies: expected a list of {"text": ...}']
    else:
        return [], []

    wanted, problems = [], []
    for index, reply in enumerate(candidates):
        name = where if where == "reply" else f"replies[{index}]"
        problem = _problem(reply)
        if problem is not None:
            problems.append(f"{name}: {problem}; not sent")
        elif len(wanted) == MAX_REPLIES:
            problems.append(f"{name}: at most {MAX_REPLIES} replies; not sent")
        else:
            wanted.append(reply)
    return wanted, problems


def _problem(reply: Any) -> str | None:
    if not isinstance(reply, dict):
        return 'expected an object {"text": ...}'
    text = reply.get("text")
    if not isinstance(text, str) or not text:
        return "text must be a non-empty string"
    if len(text) > MAX_TEXT:
        return f"text is {len(text)} characters; at most {MAX_TEXT} are sent"
    if not isinstance(reply.get("end_session", True), bool):
        return "end_session must be true or false"
    return None


def _ussd(session: dict | None, reply: dict) -> dict | None:
    """The USSD session a reply continues or ends, from the event's session."""
    if not session or session.get("id") is None:
        return None
    return {
        "session": session["id"],
        "sequence": ((session.get("sequence") or 0) + 1) % 128,
        "end": reply.get("end_session", True),
    }
