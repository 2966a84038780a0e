"""
The message trail: for each event, the timestamped steps from its first
segment received to the webhook's last answer.

A step is a small JSON object: ``at`` (seconds since the epoch), ``step``
(its name) and the facts of that step.  The spools write them inside the
same transaction or script as the change they describe, so the trail never
claims what did not happen, and keep each trail for ``[trail] keep``
seconds.  The steps, in the order they can occur:

- ``received``: a PDU of the message, with the bind, operator, command,
  sequence_number and, for a segment, ``segment`` as ``"2/3"``;
- ``reassembly_timed_out``: its missing segments never came, so it was
  delivered incomplete (``segments`` says how many of how many arrived);
- ``stored``: the event was made and is durable, so its PDUs were
  acknowledged; with the webhook and the event type;
- ``attempt_failed``: a post failed and will be retried at ``next_at``;
- ``delivered``: the webhook answered 2xx;
- ``dead_lettered``: it will not be retried, with the reason;
- ``replayed`` and ``purged``: a dead letter replayed or deleted by an
  operator.

Posts record the attempt number, the HTTP status (or ``timeout``/``error``)
and the duration in milliseconds when the dispatcher knows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from p2a_connector.decode import iso_time

DEFAULT_KEEP = 7 * 24 * 3600.0


def step(at: float, name: str, **facts: Any) -> dict:
    """One step; facts that are None are left out."""
    return {"at": at, "step": name} | {k: v for k, v in facts.items() if v is not None}


def received(record: Mapping[str, Any]) -> dict:
    """The ``received`` step of one segment record (`decode.segment_record`)."""
    concat = record.get("concat") or {}
    segment = None
    if concat.get("total"):
        segment = f"{concat.get('seqnum')}/{concat.get('total')}"
    return step(
        record.get("received_at", 0.0),
        "received",
        command=record.get("command"),
        operator=record.get("operator"),
        bind=record.get("bind"),
        sequence_number=record.get("sequence_number"),
        segment=segment,
    )


def stored(at: float, *, webhook: str, type: str) -> dict:
    return step(at, "stored", webhook=webhook, type=type)


def attempt_failed(
    at: float,
    attempt: int,
    error: str,
    next_at: float,
    note: Mapping[str, Any] | None = None,
) -> dict:
    """A post that failed and is retried; ``note`` is the dispatcher's facts."""
    facts = {"attempt": attempt} | dict(note or {})
    return step(at, "attempt_failed", **facts, error=error, next_at=next_at)


def dead_lettered(
    at: float, attempt: int, reason: str, note: Mapping[str, Any] | None = None
) -> dict:
    facts = {"attempt": attempt} | dict(note or {})
    return step(at, "dead_lettered", **facts, reason=reason)


def queued(at: float, *, operator: str, in_reply_to: str | None) -> dict:
    """An outbound message kept for sending."""
    return step(at, "queued", operator=operator, in_reply_to=in_reply_to)


def outbound_retry(
    at: float, attempt: int, error: str, next_at: float, parts_sent: int
) -> dict:
    return step(
        at,
        "retry",
        attempt=attempt,
        error=error,
        next_at=next_at,
        parts_sent=parts_sent,
    )


def encode(steps: Iterable[Mapping[str, Any]]) -> list[str]:
    """Steps as compact JSON, one string each (never containing a newline)."""
    return [orjson.dumps(s if isinstance(s, dict) else dict(s)).decode() for s in steps]


def decode_steps(lines: Iterable[str | bytes]) -> list[dict]:
    """Stored steps back into dicts, in time order (stable for equal times)."""
    steps = [orjson.loads(line) for line in lines]
    steps.sort(key=lambda s: s.get("at", 0.0))
    return steps


def render(event_id: str, steps: Sequence[Mapping[str, Any]]) -> str:
    """The trail as lines for a terminal: time, step, then its facts."""
    lines = [f"trail of {event_id}:"]
    for s in steps:
        facts = "  ".join(
            f"{key}={value}" for key, value in s.items() if key not in ("at", "step")
        )
        lines.append(f"{iso_time(s['at'])}  {s['step']:<14} {facts}".rstrip())
    return "\n".join(lines)


def as_json(steps: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The steps with ``at`` also given as an ISO 8601 time, for APIs."""
    return [dict(s) | {"time": iso_time(s["at"])} for s in steps]


def assembled(records: Sequence[Mapping[str, Any]], complete: bool, now: float):
    """The steps of a message made from segment records, before it is stored."""
    steps = [received(record) for record in records]
    if not complete:
        total = (records[0].get("concat") or {}).get("total") if records else None
        steps.append(
            step(now, "reassembly_timed_out", segments=f"{len(records)}/{total}")
        )
    return tuple(steps)
