"""
One webhook's lane: at most ``concurrency`` posts at a time, each signed,
sent, and its outcome recorded in the spool — delivered (with the replies
the answer asks for, `p2a_connector.replies`), retried on the schedule, or
dead-lettered.  `p2a_connector.dispatcher.Dispatcher` runs one per webhook.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import replies, signing
from p2a_connector.config import WebhookConfig
from p2a_connector.http_posts import Answer, Posts, Target
from p2a_connector.metrics import Metrics
from p2a_connector.poller import Poller
from p2a_connector.spool import PendingEvent, Spool, SpoolError
from p2a_connector.webhook_http import (
    _describe,
    _retried,
    parse_retry_after,
    retry_delay,
)

# The most of a 2xx answer read for replies: ten long texts and their JSON.
MAX_ANSWER = 256 * 1024


# How long a lane waits before asking again when the spool fails.
SPOOL_PAUSE = 5.0

# A lane that looks at least this often anyway (a dispatcher-only process
# polls every 50 ms) does not ask when the next event is due: a retry found
# by the next poll is late by less than the question would cost.  One that
# looks seldom asks once per idle check, and after each retry or dead letter
# of its own.
ASK_NEXT_DUE_ABOVE = 0.5


def _note(attempt: int, answer: int | str, elapsed: float) -> dict:
    """What an attempt's step in the trail says: the answer and how long it took."""
    return {
        "attempt": attempt,
        "status": answer,
        "duration_ms": round(elapsed * 1000, 1),
    }


class Lane:
    """
    Delivery to one webhook: at most ``concurrency`` posts at a time.

    A lane is idle, looking (a spool query under way) or sleeping (a timer
    set for the next due event).  Whatever asks it to look while it is
    already looking makes it look once more afterwards, so no wake is lost.
    """

    log = Logger()

    def __init__(
        self,
        webhook: WebhookConfig,
        spool: Spool,
        posts: Posts,
        reactor: Any,
        *,
        schedule: tuple[float, ...],
        random: Callable[[], float],
        batch: int,
        idle_check: float,
        metrics: Metrics,
        on_replies: Callable[[], None],
    ):
        self.webhook = webhook
        self._on_replies = on_replies
        self._target = Target.of(webhook.url)
        self._metrics = metrics.webhook(webhook.name)
        self._spool_errors = metrics.spool_errors
        # Every delivery under way, from its POST to its recorded outcome;
        # `_posting` is the part of them with a request still open, which is
        # what ``concurrency`` bounds: waiting for the spool to commit an
        # outcome holds no connection, so it does not hold a slot either.
        self.posts: dict[str, Deferred[None]] = {}
        self._posting: set[str] = set()
        # Due events fetched beyond the free slots, so a slot that frees up
        # is refilled at once instead of after a spool query.  At most one
        # more round of ``concurrency``: an event waits here no longer than
        # a post takes, well within the time after which a shared spool
        # hands an untouched event to another instance (``claim_idle``).
        self._ready: deque[PendingEvent] = deque()
        self._spool = spool
        self._posts = posts
        self._reactor = reactor
        self._schedule = schedule
        self._random = random
        self._batch = batch
        self._idle_check = idle_check
        self._drained = False
        # When the lane must look anyway, as the spool last said (the next
        # retry due, or the idle check); None until it is asked again.
        # `_recorded_outcomes` counts the retries and dead letters recorded,
        # so an answer asked before one of them is not taken for after.
        self._look_by: float | None = None
        self._recorded_outcomes = 0
        self._running = False
        self._cancelling = False
        self._poller = Poller(reactor, self.look)

    # --- looking for due events -------------------------------------------

    def start(self) -> None:
        self._running = True
        self._cancelling = False
        self._look_by = None
        self.look()

    def stop(self) -> None:
        self._running = False
        self._ready.clear()
        self._poller.cancel()

    @property
    def running(self) -> bool:
        return self._running

    def reconfigure(self, webhook: WebhookConfig) -> None:
        """New settings for the next attempt; posts under way keep theirs."""
        self.webhook = webhook
        self._target = Target.of(webhook.url)
        # A higher concurrency has free slots to fill now.
        self.look()

    def cancel(self) -> None:
        """Abandon the posts under way; their events stay pending."""
        self._cancelling = True
        for post in list(self.posts.values()):
            post.cancel()

    def look(self) -> None:
        if not self._running:
            return
        self._fill()
        if self._poller.busy():
            return
        self._poller.cancel()
        concurrency = self.webhook.concurrency
        if len(self._posting) >= concurrency and len(self._ready) >= concurrency:
            return
        self._poller.run(self._look, self._look_failed)

    def look_within(self, delay: float) -> None:
        """`look` within ``delay`` seconds, one look for every call meanwhile."""
        if self._running:
            self._poller.soon(delay)

    async def _look(self) -> None:
        name = self.webhook.name

        concurrency = self.webhook.concurrency
        wanted = min(
            2 * concurrency - len(self._posting) - len(self._ready), self._batch
        )
        held = self._held()
        now = self._reactor.seconds()
        events = await self._spool.due(now, wanted, held, webhook=name)
        self._drained = len(events) < wanted
        if not self._running:
            return
        held = self._held()
        self._ready.extend(e for e in events if e.id not in held)
        self._fill()
        if len(self._posting) >= concurrency:
            return

        delay = self._idle_check
        if delay > ASK_NEXT_DUE_ABOVE:
            await self._ask_next_due()
            # Still None if an outcome recorded meanwhile made the answer
            # stale: that outcome asked for the look after this one.
            if self._look_by is not None:
                delay = self._look_by - self._reactor.seconds()
        self._sleep(delay)

    async def _ask_next_due(self) -> None:
        """
        Learn when to look next, unless that is known: only this lane's own
        retries and dead letters bring it sooner, and they forget it.  An
        event stored meanwhile wakes the lane; one another instance gives up
        is claimable by the next look.
        """
        now = self._reactor.seconds()
        if self._look_by is not None and self._look_by > now:
            return
        recorded = self._recorded_outcomes
        next_at = await self._spool.next_due(
            webhook=self.webhook.name, exclude=self._held()
        )
        if recorded != self._recorded_outcomes:
            # A retry recorded while the spool answered was left out as held;
            # its next attempt may come before this answer says.
            return
        look_by = now + self._idle_check
        self._look_by = look_by if next_at is None else min(next_at, look_by)

    def _held(self) -> set[str]:
        """Every event this lane holds: posting, recording or ready."""
        return {*self.posts, *(event.id for event in self._ready)}

    def _look_failed(self, failure: Failure) -> None:
        if failure.check(SpoolError):
            self._spool_errors["due"].inc()
            self.log.error(
                "cannot read the spool for {webhook}: {error}; "
                "trying again in {pause}s",
                webhook=self.webhook.name,
                error=failure.value,
                pause=SPOOL_PAUSE,
            )
        else:
            self.log.failure(
                "unexpected error looking for events for {webhook}",
                failure,
                webhook=self.webhook.name,
            )
        self._sleep(SPOOL_PAUSE)

    def _sleep(self, delay: float) -> None:
        if self._running:
            self._poller.sleep(delay)

    # --- delivering one event ---------------------------------------------

    def _fill(self) -> None:
        while self._ready and len(self._posting) < self.webhook.concurrency:
            self._start(self._ready.popleft())

    def _start(self, event: PendingEvent) -> None:
        self._posting.add(event.id)
        d = Deferred.fromCoroutine(self._deliver(event))
        self.posts[event.id] = d
        d.addErrback(self._failed, event)
        d.addBoth(self._finished, event)

    def _finished(self, delivered: bool | None, event: PendingEvent) -> None:
        # A delivery answered looked for the next event when its answer
        # came; a retry or dead letter just recorded may change when the next
        # look is due, and a post that ended unanswered frees its slot now.
        unanswered = event.id in self._posting
        self._posting.discard(event.id)
        self.posts.pop(event.id, None)
        if delivered is not True:
            self._look_by = None
            self._recorded_outcomes += 1
        if unanswered or delivered is not True:
            self.look()

    def _answered(self, event: PendingEvent) -> None:
        """The request is over: its slot may carry the next event."""
        if event.id not in self._posting:
            return
        self._posting.discard(event.id)
        if self._idle_check <= ASK_NEXT_DUE_ABOVE:
            look_in: float | None = self._idle_check
        elif self._look_by is not None:
            look_in = self._look_by - self._reactor.seconds()
        else:
            look_in = None
        if not self._drained or look_in is None:
            self.look()
        elif self._running:
            # A lane whose last look found its stream empty need not ask
            # again for each answer: whatever stores an event wakes it (its
            # own intake, or for a dispatcher's the receivers' stores), and
            # it knows when its next retry or poll is due.  It only makes
            # sure that its timer is set, as a look at full concurrency set
            # none.
            self._fill()
            self._poller.soon(look_in)

    def _failed(self, failure: Failure, event: PendingEvent) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(SpoolError):
            self.log.error(
                "cannot record the outcome of {id} for {webhook}: {error}; "
                "it stays pending and will be posted again",
                id=event.id,
                webhook=self.webhook.name,
                error=failure.value,
            )
        else:
            self.log.failure(
                "unexpected error delivering {id} to {webhook}",
                failure,
                id=event.id,
                webhook=self.webhook.name,
            )
        self._sleep(SPOOL_PAUSE)

    async def _deliver(self, event: PendingEvent) -> bool:
        """Post and record the outcome; True once recorded as delivered."""
        attempt = event.attempt + 1
        started = self._reactor.seconds()

        try:
            answer = await self._post(event)
        except Exception:  # noqa: BLE001 - any failure to post is retried
            failure = Failure()
            self._answered(event)
            if self._cancelling or failure.check(CancelledError):
                self.log.info(
                    "cancelled {id} to {webhook} attempt {attempt}; it stays pending",
                    id=event.id,
                    webhook=self.webhook.name,
                    attempt=attempt,
                )
                return False
            answer = "timeout" if failure.check(TimeoutError) else "error"
            elapsed = self._reactor.seconds() - started
            self._metrics.answered(answer, elapsed)
            await self._retry(
                event,
                attempt,
                _describe(failure, self.webhook.timeout),
                None,
                _note(attempt, answer, elapsed),
            )
            return False

        elapsed = self._reactor.seconds() - started
        self._answered(event)
        status = answer.code
        self._metrics.answered(status, elapsed)

        note = _note(attempt, status, elapsed)
        if 200 <= status <= 299:
            asked = (
                self._replies(event, answer)
                if event.type == "message.received"
                else None
            )
            queued = asked.replies if asked is not None else ()
            await self._recorded(
                "delivered",
                self._spool.delivered,
                event.id,
                note,
                *((queued,) if queued else ()),
            )
            if queued:
                self._on_replies()
            self._metrics.attempts["delivered"].inc()
            self.log.info(
                "delivered {id} to {webhook} status {status} attempt {attempt}",
                id=event.id,
                webhook=self.webhook.name,
                status=status,
                attempt=attempt,
            )
            return True
        if _retried(status):
            retry_after = parse_retry_after(
                answer.headers.get(b"retry-after"), self._reactor.seconds()
            )
            await self._retry(event, attempt, f"HTTP {status}", retry_after, note)
        else:
            await self._dead(event, attempt, f"HTTP {status}", note)
        return False

    def _replies(self, event: PendingEvent, answer: Answer) -> replies.Answer:
        """The replies in a webhook's 2xx answer; what is wrong is logged."""
        if answer.body is None:
            self.log.warn(
                "the answer of {webhook} to {id} is over {size} bytes or did not "
                "end in time; any reply in it is not sent",
                webhook=self.webhook.name,
                id=event.id,
                size=MAX_ANSWER,
            )
            return replies.Answer()
        content_type = answer.headers.get(b"content-type")
        asked = replies.read(
            answer.body,
            content_type.decode("latin-1") if content_type else None,
            event_id=event.id,
            event_body=event.body,
            webhook=self.webhook.name,
            now=self._reactor.seconds(),
        )
        for problem in asked.problems:
            self.log.warn(
                "the answer of {webhook} to {id}: {problem}",
                webhook=self.webhook.name,
                id=event.id,
                problem=problem,
            )
        for reply in asked.replies:
            self.log.info(
                "reply {reply} to {id} queued for {to} via {operator}",
                reply=reply.id,
                id=event.id,
                to=reply.destination.get("address"),
                operator=reply.operator,
            )
        return asked

    def _post(self, event: PendingEvent) -> Deferred[Answer]:
        webhook = self.webhook
        timestamp = int(self._reactor.seconds())
        headers = signing.headers(
            webhook.secrets, event.id, timestamp, event.body, webhook.headers
        )
        return self._posts.post(
            self._target,
            headers,
            event.body,
            timeout=webhook.timeout,
            keep=MAX_ANSWER if event.type == "message.received" else 0,
        )

    async def _retry(
        self,
        event: PendingEvent,
        attempt: int,
        error: str,
        retry_after: float | None,
        note: dict | None = None,
    ) -> None:
        delay = retry_delay(self._schedule, attempt, self._random, retry_after)
        if delay is None:
            attempts = "1 attempt" if attempt == 1 else f"{attempt} attempts"
            reason = f"{error}; gave up after {attempts}"
            await self._dead(event, attempt, reason, note)
            return

        next_at = self._reactor.seconds() + delay
        await self._recorded(
            "retry", self._spool.retry, event.id, attempt, next_at, error, note
        )
        self._metrics.attempts["retry"].inc()
        self.log.info(
            "retry {id} to {webhook}: attempt {attempt} failed ({error}); "
            "next in {delay:.1f}s",
            id=event.id,
            webhook=self.webhook.name,
            attempt=attempt,
            error=error,
            delay=delay,
        )

    async def _dead(
        self,
        event: PendingEvent,
        attempt: int,
        reason: str,
        note: dict | None = None,
    ) -> None:
        await self._recorded("dead", self._spool.dead, event.id, attempt, reason, note)
        self._metrics.attempts["dead"].inc()
        self._metrics.dead_letters.inc()
        self.log.warn(
            "dead-lettered {id} for {webhook} after attempt {attempt}: {reason}",
            id=event.id,
            webhook=self.webhook.name,
            attempt=attempt,
            reason=reason,
        )

    async def _recorded(self, operation: str, record: Callable, *args: Any) -> None:
        """Record an outcome in the spool, counting the spool's failures."""
        # An outcome the spool could not record is not counted as an attempt:
        # the event stays pending and is posted again.
        try:
            await record(*args)
        except SpoolError:
            self._spool_errors[operation].inc()
            raise
