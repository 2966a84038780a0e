"""
Looking at the spool for work, one look at a time: what a webhook lane
(`p2a_connector.webhook_lane.Lane`) and the sender
(`p2a_connector.sender.Sender`) share.

Whatever asks for a look while one is under way gets one more look right
after it, so no wake is lost and no two looks run at once.  Between looks
there is at most one timer, set for when the next work is due.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure


class Poller:
    """
    The looking state of one worker: idle, looking, or sleeping until a timer.

    :param wake: the worker's own ``look``, called when the timer fires or
        when a look asked for during another one is due; it decides (is it
        running, has it room) and calls `run`.
    """

    def __init__(self, reactor: Any, wake: Callable[[], None]):
        self._reactor = reactor
        self._wake = wake
        self._looking = False
        self._again = False
        self._timer: IDelayedCall | None = None

    def busy(self) -> bool:
        """Is a look under way?  If so, another follows it."""
        if self._looking:
            self._again = True
        return self._looking

    def run(
        self,
        look: Callable[[], Coroutine[Any, Any, None]],
        failed: Callable[[Failure], None],
    ) -> None:
        """Start a look; ``failed`` hears its failure, then the look is over."""
        self.cancel()
        self._looking = True
        d = Deferred.fromCoroutine(look())
        d.addErrback(failed)
        d.addBoth(self._looked)

    def _looked(self, _: Any) -> None:
        self._looking = False
        if self._again:
            self._again = False
            self._wake()

    def soon(self, delay: float) -> None:
        """
        Look within ``delay`` seconds: a later timer is brought forward, a
        sooner one kept, a look under way followed by one more; so the
        calls of several moments make one look.
        """
        if self.busy():
            return
        timer = self._timer
        soon_enough = self._reactor.seconds() + delay
        if timer is not None and timer.active() and timer.getTime() <= soon_enough:
            return
        self.sleep(delay)

    def sleep(self, delay: float) -> None:
        """Look again in ``delay`` seconds, unless woken sooner."""
        self.cancel()
        self._timer = self._reactor.callLater(max(delay, 0.0), self._wake)

    def cancel(self) -> None:
        """Forget the timer."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
