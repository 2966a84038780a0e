"""
The dispatcher: posts each pending event to its webhook, signed, and records
the outcome in the spool — delivered (with any replies the answer asks
for), retry later, or dead letter.

Each webhook has its own lane with its own concurrency limit, so a slow or
failing receiver never delays another one.  A lane asks the spool for due
events when it has a free slot or fewer than ``concurrency`` events ready
to take the next ones, and otherwise sleeps until the next event is due, a
post finishes, or `Dispatcher.wake` says new events arrived (but never
longer than `IDLE_CHECK`).

Delivery is at least once: an event stays pending in the spool until its
outcome is committed, so a crash or a stop mid-post means it is posted again
later, with the same ``webhook-id`` and the same body.

A lane is `p2a_connector.webhook_lane.Lane`; the retry schedule and the
HTTP plumbing it posts through are `p2a_connector.webhook_http`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from p2a_connector import signing
from p2a_connector.config import WebhookConfig
from p2a_connector.http_posts import Posts
from p2a_connector.metrics import Metrics
from p2a_connector.spool import Spool
from p2a_connector.webhook_http import SCHEDULE
from p2a_connector.webhook_lane import Lane

# The longest a lane sleeps without looking: events can also appear without
# a wake, when another process replays dead letters into the spool.
IDLE_CHECK = 30.0


class Dispatcher(Service):
    """
    Delivers the spool's pending events to the configured webhooks.

    :param schedule: seconds to wait before each attempt; when the last one
        fails, the event is dead-lettered.
    :param random: the source of jitter, a function returning [0, 1).
    :param shutdown_timeout: how long `stopService` lets posts finish before
        cancelling them.
    :param posts: what posts go through; by default one that keeps up to
        ``concurrency`` idle connections per webhook host.
    :param batch: the most events a lane fetches at once.
    :param idle_check: the longest a lane goes without looking at the spool.
    :param metrics: where attempts, responses, latency, dead letters and
        spool errors are counted; by default a registry of its own.
    :param on_replies: called when a webhook's 2xx answer to a
        ``message.received`` queued replies (`p2a_connector.replies`), which
        the spool keeps in the same write that records the delivery.

    Limitation: events for a webhook that is no longer configured stay
    pending (and count towards ``max_pending``) until it is configured again.
    """

    log = Logger()

    def __init__(
        self,
        spool: Spool,
        webhooks: Sequence[WebhookConfig],
        reactor: Any,
        *,
        schedule: Sequence[float] = SCHEDULE,
        random: Callable[[], float] = _random.random,
        shutdown_timeout: float = 10.0,
        posts: Posts | None = None,
        batch: int = 100,
        idle_check: float = IDLE_CHECK,
        metrics: Metrics | None = None,
        on_replies: Callable[[], None] = lambda: None,
    ):
        if not schedule:
            raise ValueError("the retry schedule needs at least one attempt")
        for webhook in webhooks:
            signing.check_extra_headers(webhook.headers)

        self.spool = spool
        self.metrics = metrics or Metrics()
        self.shutdown_timeout = shutdown_timeout
        self._reactor = reactor
        if posts is None:
            posts = Posts(
                reactor, max_idle=max((w.concurrency for w in webhooks), default=1)
            )
        self._posts = posts
        self._lane_options = {
            "schedule": tuple(schedule),
            "random": random,
            "batch": batch,
            "idle_check": idle_check,
            "on_replies": on_replies,
        }
        self._lanes = {w.name: self._lane(w) for w in webhooks}
        # Lanes of webhooks a reload removed: stopped, kept while their posts
        # finish, so that stopping still waits for them.
        self._removed: set[str] = set()

    def _lane(self, webhook: WebhookConfig) -> Lane:
        return Lane(
            webhook,
            self.spool,
            self._posts,
            self._reactor,
            metrics=self.metrics,
            **self._lane_options,
        )

    def startService(self) -> None:
        super().startService()
        for name, lane in self._lanes.items():
            if name not in self._removed:
                lane.start()

    def reconfigure(self, webhooks: Sequence[WebhookConfig]) -> None:
        """
        Deliver to these webhooks from now on.  A changed webhook's next
        attempt uses its new settings; a new one gets a lane; a removed one
        takes no more events (its posts under way finish) and its pending
        events stay in the spool until it is configured again.
        """
        for webhook in webhooks:
            signing.check_extra_headers(webhook.headers)
        wanted = {webhook.name: webhook for webhook in webhooks}

        for name, lane in list(self._lanes.items()):
            if name not in wanted and name not in self._removed:
                lane.stop()
                self._removed.add(name)
            elif name in self._removed and name not in wanted and not lane.posts:
                del self._lanes[name]
                self._removed.discard(name)

        for name, webhook in wanted.items():
            lane = self._lanes.get(name)
            if lane is None:
                lane = self._lanes[name] = self._lane(webhook)
            else:
                lane.reconfigure(webhook)
            # A lane removed earlier comes back as it was, so that none of
            # its posts still under way is taken up a second time.
            revived = name in self._removed
            self._removed.discard(name)
            if self.running and (revived or not lane.running):
                lane.start()

        # Grown, never shrunk: idle connections beyond the need just expire.
        self._posts.max_idle = max(
            [self._posts.max_idle, *(w.concurrency for w in webhooks)]
        )

    def wake(self, webhook: str | None = None, within: float = 0.0) -> None:
        """
        New events were stored (for ``webhook``, or any): look now, or
        within ``within`` seconds, one look for all wakes meanwhile.
        """
        if webhook is None:
            lanes = list(self._lanes.values())
        else:
            lanes = [self._lanes[webhook]] if webhook in self._lanes else []
        for lane in lanes:
            if within > 0:
                lane.look_within(within)
            else:
                lane.look()

    def in_flight(self) -> int:
        """How many posts are under way."""
        return sum(len(lane.posts) for lane in self._lanes.values())

    def stopService(self) -> Deferred[None]:
        """
        Stop taking events, give the posts under way ``shutdown_timeout`` to
        finish, then cancel the rest: they stay pending and are posted again
        after a restart.
        """
        super().stopService()
        posts = []
        for lane in self._lanes.values():
            lane.stop()
            posts.extend(lane.posts.values())

        deadline = self._reactor.callLater(self.shutdown_timeout, self._cancel)
        finished = DeferredList(posts, consumeErrors=True)
        finished.addCallback(self._stopped, deadline)
        return finished

    def _stopped(self, _: Any, deadline: IDelayedCall) -> Deferred[None]:
        if deadline.active():
            deadline.cancel()
        return self._posts.close()

    def _cancel(self) -> None:
        self.log.warn(
            "posts still under way after {timeout}s: cancelling {count}; "
            "they stay pending",
            timeout=self.shutdown_timeout,
            count=self.in_flight(),
        )
        for lane in self._lanes.values():
            lane.cancel()
