"""
The HTTP side of webhook delivery: the retry schedule and ``Retry-After``,
how a failed post is described and which answers are retried.  The posts
themselves go through `p2a_connector.http_posts`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python.failure import Failure

from p2a_connector.http_posts import AnswerLost, NotHTTP

# Seconds to wait before attempts 1 to 10: the Standard Webhooks schedule.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


# A receiver's Retry-After may lengthen a wait up to this, never beyond.
MAX_RETRY_AFTER = 86400.0


# How far a scheduled wait is spread either way, so that events that failed
# together do not all come back together.
JITTER = 0.2


_RETRIED_STATUSES = (408, 429)


def retry_delay(
    schedule: Sequence[float],
    attempts: int,
    random: Callable[[], float] = _random.random,
    retry_after: float | None = None,
) -> float | None:
    """
    Seconds to wait after ``attempts`` failed attempts, or None to give up.

    The scheduled wait gets ±`JITTER`; a ``Retry-After`` from the receiver
    may lengthen it, up to `MAX_RETRY_AFTER`, but never shortens it.
    """
    if attempts >= len(schedule):
        return None
    delay = schedule[attempts] * (1 - JITTER + 2 * JITTER * random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return max(delay, 0.0)


def parse_retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delay or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _retried(status: int) -> bool:
    return status in _RETRIED_STATUSES or 500 <= status <= 599


def _describe(failure: Failure, timeout: float) -> str:
    """A short, operator-readable reason for a failed post."""
    if failure.check(TimeoutError):
        return f"no response within {timeout:g}s"
    if failure.check(DNSLookupError):
        return f"cannot resolve the host: {failure.value}"
    if failure.check(ConnectError):
        return f"cannot connect: {failure.getErrorMessage().rstrip('.')}"
    if failure.check(AnswerLost):
        return f"no response: {failure.getErrorMessage().rstrip('.')}"
    if failure.check(NotHTTP):
        return failure.getErrorMessage()
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"
