"""
The dispatcher against a real webhook receiver over TCP: signatures,
outcomes, retries, concurrency and shutdown.

Every request the receiver gets is checked with standardwebhooks, as an
application developer's receiver would.
"""

import base64
import json
import time
from email.utils import formatdate

import pytest
import pytest_twisted
from conftest import captured_logs, whole_events_only
from redis_server import available
from test_spool_contract import Watched, _command_calls
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from p2a_connector.config import WebhookConfig
from p2a_connector.dispatcher import Dispatcher
from p2a_connector.receiver import Receiver, Reply
from p2a_connector.spool import Event
from p2a_connector.sqlite_spool import SqliteSpool
from p2a_connector.webhook_http import (
    MAX_RETRY_AFTER,
    SCHEDULE,
    parse_retry_after,
    retry_delay,
)

SECRET = "whsec_" + base64.b64encode(b"s" * 24).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
FAST = (0, 0.05, 0.1)


def event(event_id: str, webhook: str = "app") -> Event:
    envelope = {"type": "message.received", "data": {"id": event_id, "text": "hi"}}
    return Event(
        id=event_id,
        type="message.received",
        webhook=webhook,
        body=json.dumps(envelope, separators=(",", ":")).encode(),
        created_at=reactor.seconds(),
    )


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (it may return a Deferred)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "addCallback"):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the condition was not met in time")
        await sleep(0.01)


@pytest_twisted.async_yield_fixture
async def dispatch(spool):
    """Start a dispatcher: ``dispatch(webhooks, **options)``."""
    started = []

    def start(*webhooks: WebhookConfig, **options) -> Dispatcher:
        options.setdefault("schedule", FAST)
        dispatcher = Dispatcher(spool, webhooks, reactor, **options)
        dispatcher.startService()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        if dispatcher.running:
            await dispatcher.stopService()


def webhook(receiver: Receiver, name: str = "app", **options) -> WebhookConfig:
    options.setdefault("secrets", (SECRET,))
    options.setdefault("timeout", 2.0)
    return WebhookConfig(name=name, url=receiver.url, **options)


# --- outcomes ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_2xx_delivers_once_with_a_valid_signature(spool, receiver, dispatch):
    stored = await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await eventually(lambda: spool.pending() == 0)
    await sleep(0.2)

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.verify(SECRET) == json.loads(stored.body)
    assert request.body == stored.body
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_every_configured_secret_signs_the_request(spool, receiver, dispatch):
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver, secrets=(SECRET, OLD_SECRET)))

    await receiver.wait_for(1)

    assert receiver.payloads(SECRET) == receiver.payloads(OLD_SECRET)


@pytest_twisted.ensureDeferred
async def test_503_is_retried_with_the_same_id_and_body(spool, receiver, dispatch):
    receiver.script(503)
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await receiver.wait_for(2)
    await eventually(lambda: spool.pending() == 0)

    first, second = receiver.requests
    assert receiver.payloads(SECRET)[0] == receiver.payloads(SECRET)[1]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_1"
    assert first.body == second.body


@pytest_twisted.ensureDeferred
async def test_the_timestamp_is_the_time_of_each_attempt(spool, receiver, dispatch):
    receiver.script(Reply(429, headers=[("Retry-After", "1")]))
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await receiver.wait_for(2, timeout=10)

    receiver.payloads(SECRET)
    first, second = (int(r.headers["webhook-timestamp"]) for r in receiver.requests)
    # The header is the whole second the attempt was made in.
    assert 0 <= receiver.requests[0].received_at - first < 2
    assert second - first >= 1


@pytest_twisted.ensureDeferred
async def test_400_goes_to_the_dead_letters_at_once(spool, receiver, dispatch):
    receiver.script(400)
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await eventually(spool.dead_letters)
    await sleep(0.3)

    [letter] = await spool.dead_letters()
    assert (letter["id"], letter["reason"], letter["attempts"]) == (
        "msg_1",
        "HTTP 400",
        1,
    )
    assert len(receiver.payloads(SECRET)) == 1
    assert spool.pending() == 0


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_not_followed_but_dead_lettered(spool, receiver, dispatch):
    receiver.script(Reply(302, headers=[("Location", receiver.url + "/elsewhere")]))
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await eventually(spool.dead_letters)

    [letter] = await spool.dead_letters()
    assert letter["reason"] == "HTTP 302"
    assert [r.path for r in receiver.requests] == ["/hook"]


@pytest_twisted.ensureDeferred
async def test_429_waits_as_long_as_retry_after_asks(spool, receiver, dispatch):
    receiver.script(Reply(429, headers=[("Retry-After", "1")]))
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await receiver.wait_for(2, timeout=10)

    first, second = receiver.requests
    assert second.received_at - first.received_at >= 1.0
    receiver.payloads(SECRET)


@pytest_twisted.ensureDeferred
async def test_a_timeout_is_retried(spool, receiver, dispatch):
    receiver.script(Reply.hang())
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver, timeout=0.3))

    await receiver.wait_for(2)
    await eventually(lambda: spool.pending() == 0)

    assert len(receiver.payloads(SECRET)) == 2


@pytest_twisted.ensureDeferred
async def test_a_timeout_is_reported_as_no_response(spool, receiver, dispatch):
    receiver.script(Reply.hang())
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver, timeout=0.3), schedule=(0,))

    await eventually(spool.dead_letters)

    [letter] = await spool.dead_letters()
    assert letter["reason"] == "no response within 0.3s; gave up after 1 attempt"


@pytest_twisted.ensureDeferred
async def test_every_outcome_is_logged_with_the_event_id(spool, receiver, dispatch):
    receiver.script(503, 400)
    await spool.store(event("msg_1"))
    await spool.store(event("msg_2"))
    await spool.store(event("msg_3"))

    with captured_logs() as events:
        dispatch(webhook(receiver, concurrency=1))
        await eventually(lambda: spool.pending() == 0)

    outcomes = {
        (e["id"], formatEvent(e).split(" ")[0])
        for e in events
        if e.get("log_namespace", "").startswith("p2a_connector.webhook_lane")
    }
    assert outcomes == {
        ("msg_1", "retry"),
        ("msg_2", "dead-lettered"),
        ("msg_3", "delivered"),
        ("msg_1", "delivered"),
    }


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_retried_until_the_schedule_ends(
    spool, receiver, dispatch
):
    closed = webhook(receiver)
    await receiver.stop()
    await spool.store(event("msg_1"))
    dispatch(closed)

    await eventually(spool.dead_letters)

    [letter] = await spool.dead_letters()
    assert letter["attempts"] == len(FAST)
    assert letter["reason"].startswith("cannot connect")
    assert letter["reason"].endswith(f"gave up after {len(FAST)} attempts")
    await receiver.start()


@pytest_twisted.ensureDeferred
async def test_failing_the_last_attempt_dead_letters_the_event(
    spool, receiver, dispatch
):
    receiver.script(503, 502, 500)
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver))

    await eventually(spool.dead_letters)

    [letter] = await spool.dead_letters()
    assert letter["reason"] == "HTTP 500; gave up after 3 attempts"
    assert len(receiver.payloads(SECRET)) == 3


@pytest_twisted.ensureDeferred
async def test_extra_headers_are_sent(spool, receiver, dispatch):
    await spool.store(event("msg_1"))
    extra = (("Authorization", "Bearer s3cret"), ("X-Tenant", "acme"))
    dispatch(webhook(receiver, headers=extra))

    await receiver.wait_for(1)

    [request] = receiver.requests
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["x-tenant"] == "acme"
    request.verify(SECRET)


def test_a_configured_header_cannot_replace_a_signature_header(spool):
    hook = WebhookConfig(
        name="app",
        url="http://127.0.0.1:1/hook",
        secrets=(SECRET,),
        headers=(("webhook-signature", "v1,forged"),),
    )

    with pytest.raises(ValueError, match="webhook-signature"):
        Dispatcher(spool, [hook], reactor)


# --- scheduling and concurrency ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrency_per_webhook_is_bounded(spool, receiver, dispatch):
    receiver.default = Reply(delay=0.1)
    for n in range(6):
        await spool.store(event(f"msg_{n}"))
    dispatch(webhook(receiver, concurrency=2))

    await eventually(lambda: spool.pending() == 0)

    assert receiver.peak == 2
    assert len(receiver.payloads(SECRET)) == 6


@pytest_twisted.ensureDeferred
async def test_a_hung_webhook_does_not_hold_up_another(spool, receiver, dispatch):
    other = Receiver(default=Reply.hang())
    await other.start()
    await spool.store(event("msg_hung", webhook="hung"))
    await spool.store(event("msg_ok", webhook="app"))
    dispatch(webhook(other, name="hung", concurrency=1), webhook(receiver))

    await receiver.wait_for(1)
    await other.wait_for(1)

    assert receiver.payloads(SECRET)[0]["data"]["id"] == "msg_ok"
    assert other.payloads(SECRET)[0]["data"]["id"] == "msg_hung"
    await other.stop()


@pytest_twisted.ensureDeferred
async def test_an_idle_dispatcher_posts_only_when_woken(spool, receiver, dispatch):
    dispatcher = dispatch(webhook(receiver))
    await sleep(0.05)
    await spool.store(event("msg_1"))

    await sleep(0.3)
    assert receiver.requests == []

    dispatcher.wake()
    await receiver.wait_for(1)
    receiver.payloads(SECRET)


@pytest_twisted.ensureDeferred
async def test_an_idle_dispatcher_still_looks_now_and_then(spool, receiver, dispatch):
    dispatch(webhook(receiver), idle_check=0.2)
    await sleep(0.05)
    await spool.store(event("msg_1"))

    await receiver.wait_for(1, timeout=1.0)

    receiver.payloads(SECRET)


@pytest_twisted.ensureDeferred
async def test_a_retry_is_posted_when_due_without_a_wake(spool, receiver, dispatch):
    receiver.script(503)
    await spool.store(event("msg_1"))
    dispatch(webhook(receiver), schedule=(0, 0.5))

    await receiver.wait_for(2)

    first, second = receiver.requests
    assert 0.3 <= second.received_at - first.received_at < 2.0


@pytest.mark.skipif(not available(), reason="no redis-server binary on this machine")
@pytest_twisted.ensureDeferred
async def test_one_event_at_a_time_costs_redis_three_scripts_each(
    redis_server, receiver
):
    """
    The usual load, events one at a time: Redis runs a script to store
    each, one to hand it out and one to record its delivery.  The lane asks
    when its next event is due once per idle check or outcome other than a
    delivery, not for every look, and an answer after a look that found the
    stream empty looks no more.
    """
    watched = Watched(redis_server, whole_events_only)
    spool = watched.spool
    await spool.open()
    dispatcher = Dispatcher(spool, [webhook(receiver)], reactor, schedule=FAST)
    dispatcher.startService()
    try:
        await spool.store(event("msg_first"))
        await receiver.wait_for(1)
        await eventually(lambda: spool.pending() == 0)

        before = (await _command_calls(watched.stats))["evalsha"]
        for number in range(10):
            await spool.store(event(f"msg_{number}"))
            dispatcher.wake("app")
            await eventually(lambda: spool.pending() == 0)
        scripts = (await _command_calls(watched.stats))["evalsha"] - before
    finally:
        await dispatcher.stopService()
        await watched.close()

    assert len(receiver.requests) == 11
    assert scripts == 3 * 10


@pytest_twisted.ensureDeferred
async def test_outcomes_recorded_while_the_lane_asks_what_is_due_next_are_not_missed(
    tmp_path, receiver
):
    """
    A lane that polls seldom asks when its next event is due, leaving out
    the events it holds.  A retry recorded while the lane asks is unknown to
    that answer: the lane must ask again, not sleep the idle check away.  A
    spool that commits at once, not in groups, makes the two overlap most
    often; whether they do is up to its thread, so this runs many rounds.
    """
    spool = SqliteSpool(
        str(tmp_path / "spool.db"), whole_events_only, reactor, commit_interval=0
    )
    await spool.open()
    dispatcher = Dispatcher(
        spool, [webhook(receiver, concurrency=1)], reactor, schedule=FAST
    )
    dispatcher.startService()
    try:
        for round in range(20):
            receiver.script(503)
            await spool.store(event(f"msg_{round}"))
            dispatcher.wake("app")
            await eventually(lambda: spool.pending() == 0, timeout=2.0)
    finally:
        await dispatcher.stopService()
        await spool.close()

    assert len(receiver.requests) == 20 * 2


@pytest_twisted.ensureDeferred
async def test_a_lane_that_polls_often_posts_everything_one_slot_at_a_time(
    spool, receiver, dispatch
):
    """
    As in a dispatcher process, which polls often: once a look found the
    stream empty, an answer does not look again (the poll or a wake does),
    yet a retry, a burst beyond the concurrency, and an event stored later
    are all posted.
    """
    receiver.script(503)
    for number in range(5):
        await spool.store(event(f"msg_{number}"))
    dispatch(webhook(receiver, concurrency=1), idle_check=0.05)

    await receiver.wait_for(6)
    await spool.store(event("msg_later"))
    await receiver.wait_for(7)
    await eventually(lambda: spool.pending() == 0)

    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert sorted(set(ids)) == sorted({f"msg_{n}" for n in range(5)} | {"msg_later"})


# --- shutdown ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_cancels_a_hung_post_in_time_and_leaves_it_pending(
    spool, receiver, dispatch
):
    receiver.script(Reply.hang())
    await spool.store(event("msg_1"))
    dispatcher = dispatch(webhook(receiver, timeout=30.0), shutdown_timeout=0.3)
    await receiver.wait_for(1)

    started = time.monotonic()
    await dispatcher.stopService()

    assert 0.25 <= time.monotonic() - started < 1.5
    assert spool.pending() == 1
    [still] = await spool.due(reactor.seconds(), 10)
    assert (still.id, still.attempt) == ("msg_1", 0)


@pytest_twisted.ensureDeferred
async def test_stop_lets_posts_finish_within_the_bound(spool, receiver, dispatch):
    receiver.script(Reply(delay=0.2))
    await spool.store(event("msg_1"))
    dispatcher = dispatch(webhook(receiver), shutdown_timeout=5.0)
    await receiver.wait_for(1)

    await dispatcher.stopService()

    assert spool.pending() == 0
    receiver.payloads(SECRET)


@pytest_twisted.ensureDeferred
async def test_a_stopped_dispatcher_posts_nothing_more(spool, receiver, dispatch):
    dispatcher = dispatch(webhook(receiver))
    await dispatcher.stopService()

    await spool.store(event("msg_1"))
    dispatcher.wake()
    await sleep(0.2)

    assert receiver.requests == []


# --- the retry policy ----------------------------------------------------------


def test_the_default_schedule_is_the_standard_webhooks_one():
    assert SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


@pytest.mark.parametrize("draw, factor", [(0.0, 0.8), (0.5, 1.0), (0.9999, 1.2)])
def test_jitter_spreads_the_wait_by_a_fifth_either_way(draw, factor):
    assert retry_delay(SCHEDULE, 2, lambda: draw) == pytest.approx(300 * factor, 1e-3)


def test_no_wait_is_left_after_the_last_attempt():
    assert retry_delay(SCHEDULE, len(SCHEDULE), lambda: 0.5) is None


def test_a_longer_retry_after_lengthens_the_wait():
    assert retry_delay(SCHEDULE, 1, lambda: 0.5, retry_after=60) == 60


def test_a_shorter_retry_after_does_not_shorten_the_wait():
    assert retry_delay(SCHEDULE, 2, lambda: 0.5, retry_after=1) == 300


def test_retry_after_is_capped_at_a_day():
    assert retry_delay(SCHEDULE, 1, lambda: 0.5, 10**7) == MAX_RETRY_AFTER


def test_retry_after_in_seconds_or_as_an_http_date():
    now = 1_700_000_000.0

    assert parse_retry_after(b"120", now) == 120
    assert parse_retry_after(formatdate(now + 90, usegmt=True).encode(), now) == 90
    assert parse_retry_after(formatdate(now - 90, usegmt=True).encode(), now) == 0


@pytest.mark.parametrize("value", [None, b"", b"soon", b"-5"])
def test_an_unusable_retry_after_is_ignored(value):
    assert parse_retry_after(value, 1_700_000_000.0) is None
