"""
A token bucket on an injected clock: what keeps a bind at its
``submit_rate``, and holds it back while the SMSC throttles it
(`p2a_connector.sender`).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure


class TokenBucket:
    """
    At most ``rate`` takes per second, spaced evenly; ``rate`` 0 means no
    limit.  Takers wait in order.  `pause` holds every taker until a time.

    The bucket holds ``burst`` tokens at most (one by default), so after an
    idle spell no more than ``burst`` takes go at once.
    """

    def __init__(self, rate: float, clock: IReactorTime, *, burst: float = 1.0):
        if rate < 0:
            raise ValueError(f"rate must be 0 or more, got {rate}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock.seconds()
        self._paused_until = 0.0
        self._waiters: deque[Deferred[None]] = deque()
        self._timer: IDelayedCall | None = None

    def take(self) -> Deferred[None]:
        """Fires when the caller may send one submit_sm."""
        if not self._waiters and self._ready():
            self._spend()
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._forget)
        self._waiters.append(waiter)
        self._schedule()
        return waiter

    def pause(self, seconds: float) -> None:
        """Let nobody take before ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self._clock.seconds() + seconds)
        self._schedule()

    def cancel(self) -> None:
        """Fail every waiter with CancelledError (the sender stops)."""
        waiters, self._waiters = self._waiters, deque()
        self._stop_timer()
        for waiter in waiters:
            waiter.errback(Failure(CancelledError("the sender is stopping")))

    def _ready(self) -> bool:
        now = self._clock.seconds()
        if now < self._paused_until:
            return False
        if self.rate == 0:
            return True
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return self._tokens >= 1

    def _spend(self) -> None:
        if self.rate:
            self._tokens -= 1

    def _wait(self) -> float:
        now = self._clock.seconds()
        wait = max(self._paused_until - now, 0.0)
        if self.rate and self._tokens < 1:
            wait = max(wait, (1 - self._tokens) / self.rate)
        return wait

    def _schedule(self) -> None:
        self._stop_timer()
        if self._waiters:
            self._timer = self._clock.callLater(self._wait(), self._release)

    def _release(self) -> None:
        self._timer = None
        while self._waiters and self._ready():
            self._spend()
            self._waiters.popleft().callback(None)
        self._schedule()

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
