"""
`Poller`: one look at a time, a look asked for during another one runs
right after it, and one timer between looks.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from p2a_connector.poller import Poller


class Worker:
    """A worker whose looks wait until the test ends them."""

    def __init__(self, clock: Clock):
        self.poller = Poller(clock, self.look)
        self.started = 0
        self.wakes = 0
        self.looks: list[Deferred] = []
        self.failures: list = []

    def look(self) -> None:
        self.wakes += 1
        if not self.poller.busy():
            self.poller.run(self._look, self.failures.append)

    async def _look(self) -> None:
        self.started += 1
        d: Deferred = Deferred()
        self.looks.append(d)
        await d


def test_looks_asked_for_during_a_look_make_one_more_look_after_it():
    worker = Worker(Clock())
    worker.look()
    worker.look()
    worker.look()
    assert worker.started == 1

    worker.looks[0].callback(None)

    assert worker.started == 2
    worker.looks[1].callback(None)
    assert worker.started == 2


def test_the_timer_wakes_the_worker_once_and_a_look_cancels_it():
    clock = Clock()
    worker = Worker(clock)
    worker.poller.sleep(5)
    clock.advance(4.9)
    assert worker.wakes == 0
    clock.advance(0.1)
    assert worker.wakes == 1

    worker.looks[0].callback(None)
    worker.poller.sleep(5)
    worker.look()
    clock.advance(10)
    assert worker.wakes == 2
    assert clock.getDelayedCalls() == []


def test_a_failed_look_is_reported_and_ends_the_look():
    worker = Worker(Clock())
    worker.look()
    worker.look()

    worker.looks[0].errback(RuntimeError("spool down"))

    assert [f.check(RuntimeError) for f in worker.failures] == [RuntimeError]
    assert worker.started == 2


def test_cancel_forgets_the_timer():
    clock = Clock()
    worker = Worker(clock)
    worker.poller.sleep(1)
    worker.poller.cancel()
    clock.advance(2)
    assert worker.wakes == 0


def test_soon_brings_a_later_timer_forward_and_keeps_a_sooner_one():
    clock = Clock()
    worker = Worker(clock)
    worker.poller.sleep(30)
    worker.poller.soon(0.005)
    worker.poller.soon(0.005)
    clock.advance(0.004)
    worker.poller.soon(0.005)
    clock.advance(0.001)
    assert worker.wakes == 1

    worker.looks[0].callback(None)
    worker.poller.sleep(0.001)
    worker.poller.soon(1)
    clock.advance(0.001)
    assert worker.wakes == 2
    assert clock.getDelayedCalls() == []


def test_soon_during_a_look_makes_one_more_look_after_it():
    clock = Clock()
    worker = Worker(clock)
    worker.look()
    worker.poller.soon(0.005)
    worker.poller.soon(0.005)

    worker.looks[0].callback(None)

    assert worker.started == 2
    assert clock.getDelayedCalls() == []
