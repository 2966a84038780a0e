"""
What a reload decides before it acts: `reload.diff` and `reload.effective`
on parsed configurations, and `Connector.reload` running one at a time.
"""

import json
import tomllib
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from p2a_connector import config
from p2a_connector.config import WebhookConfig
from p2a_connector.dispatcher import Dispatcher
from p2a_connector.harness import config_text
from p2a_connector.receiver import Receiver, Reply
from p2a_connector.reload import Changes, diff, effective
from p2a_connector.service import Connector
from p2a_connector.spool import Event

SECRET_2 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def second_bind(name: str = "op1-b", port: int = 2776, extra: str = "") -> str:
    return (
        f'\n[[operator.bind]]\nname = "{name}"\nhost = "127.0.0.1"\n'
        f'port = {port}\nsystem_id = "p2a"\npassword = "secret"\n{extra}\n'
    )


def parsed(**extra: str) -> config.Config:
    fields = {
        "spool": Path("spool.db"),
        "webhook_url": "http://127.0.0.1:8099/sms",
        "smsc_port": 2775,
    }
    fields.update(extra)
    return config.parse(tomllib.loads(config_text(**fields)))


def test_identical_files_keep_every_bind_and_change_nothing():
    assert diff(parsed(), parsed()) == Changes(binds_kept=("op1-a",))


def test_a_bind_only_in_the_new_file_is_added():
    changes = diff(parsed(), parsed(bind_extra=second_bind()))

    assert [bind.name for bind in changes.binds_added] == ["op1-b"]
    assert changes.binds_kept == ("op1-a",)


def test_a_bind_only_in_the_old_file_is_removed():
    changes = diff(parsed(bind_extra=second_bind()), parsed())

    assert [bind.name for bind in changes.binds_removed] == ["op1-b"]
    assert changes.binds_kept == ("op1-a",)


def test_a_bind_with_other_settings_is_restarted_with_the_new_ones():
    changes = diff(parsed(), parsed(bind_extra="window = 10"))

    assert [(b.name, b.window) for b in changes.binds_changed] == [("op1-a", 10)]
    assert changes.binds_kept == ()


def test_a_renamed_bind_is_one_removed_and_one_added():
    changes = diff(parsed(), parsed(bind_name="op1-z"))

    assert [b.name for b in changes.binds_removed] == ["op1-a"]
    assert [b.name for b in changes.binds_added] == ["op1-z"]


def test_a_process_without_binds_reports_no_bind_changes():
    changes = diff(parsed(), parsed(bind_extra=second_bind()), binds=False)

    assert changes.binds_added == changes.binds_kept == ()


def test_webhooks_are_compared_by_name():
    other = (
        f'[[webhook]]\nname = "other"\nurl = "http://127.0.0.1:9/"\n'
        f'secrets = ["{SECRET_2}"]\n'
    )
    old = parsed(extra=other)
    new = parsed(webhook_url="http://127.0.0.1:8100/sms")
    newer = parsed(extra=other.replace('"other"', '"third"'))

    assert diff(old, new).webhooks_removed == ("other",)
    assert diff(old, new).webhooks_changed == ("app",)
    assert diff(new, newer).webhooks_added == ("third",)


def test_spool_and_admin_changes_need_a_restart_and_keep_their_old_values():
    old = parsed()
    new = parsed(spool=Path("elsewhere.db"), spool_extra="max_pending = 7")

    changes = diff(old, new)
    running = effective(old, new)

    assert changes.restart_needed == ("spool.path", "spool.max_pending")
    assert running.spool == old.spool


def test_reloadable_sections_take_their_new_values():
    old = parsed()
    new = parsed(reassembly_extra="timeout = 30", webhook_url="http://[::1]:1/")

    running = effective(old, new)

    assert diff(old, new).restart_needed == ()
    assert running.reassembly.timeout == 30
    assert running.webhooks == new.webhooks


@pytest_twisted.ensureDeferred
async def test_reloads_asked_for_during_a_reload_run_once_after_it(
    tmp_path, smpp_simulator
):
    path = tmp_path / "connector.toml"
    text = config_text(
        spool=tmp_path / "spool.db",
        webhook_url="http://127.0.0.1:9/",
        smsc_port=smpp_simulator.listening.getHost().port,
    )
    path.write_text(text)
    connector = Connector(config.load(path), reactor, config_path=path)
    reloads = []

    def observe(event):
        if event.get("log_format", "").startswith("reloaded "):
            reloads.append(event)

    globalLogPublisher.addObserver(observe)
    connector.startService()
    try:
        await smpp_simulator.whenBound()
        await connector.binds.services[0].whenBound()
        # A changed bind makes the first reload wait for its unbind_resp.
        path.write_text(text.replace('mode = "transceiver"', 'mode = "receiver"'))

        first, second, third = (
            connector.reload(),
            connector.reload(),
            connector.reload(),
        )
        changed, again, shared = await first, await second, await third

        assert [b.name for b in changed.binds_changed] == ["op1-a"]
        assert again is shared
        assert again.binds_kept == ("op1-a",)
        assert len(reloads) == 2
    finally:
        globalLogPublisher.removeObserver(observe)
        await connector.stopService()


# --- the dispatcher taking new webhooks ------------------------------------------


def event(event_id: str, webhook: str = "app") -> Event:
    body = json.dumps({"type": "message.received", "data": {"id": event_id}})
    return Event(
        id=event_id,
        type="message.received",
        webhook=webhook,
        body=body.encode(),
        created_at=reactor.seconds(),
    )


def hook(receiver: Receiver, name: str = "app") -> WebhookConfig:
    return WebhookConfig(name=name, url=receiver.url, secrets=(SECRET_2,), timeout=2)


async def until(condition, timeout: float = 5.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "the condition was not met in time"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


@pytest_twisted.async_yield_fixture
async def receivers():
    started = [Receiver(), Receiver()]
    for receiver in started:
        await receiver.start()
    yield started
    for receiver in started:
        await receiver.stop()


@pytest_twisted.async_yield_fixture
async def dispatcher(spool, receivers):
    dispatcher = Dispatcher(spool, [hook(receivers[0])], reactor, schedule=(0, 0.05))
    dispatcher.startService()
    yield dispatcher
    await dispatcher.stopService()


@pytest_twisted.ensureDeferred
async def test_removed_webhook_finishes_its_post_and_takes_no_more(
    spool, receivers, dispatcher
):
    first, second = receivers
    first.script(Reply(delay=0.2))
    await spool.store(event("msg_1"))
    dispatcher.wake("app")
    await first.wait_for(1)

    dispatcher.reconfigure([hook(second, "other")])
    await until(lambda: spool.pending() == 0)
    await spool.store(event("msg_2"))
    dispatcher.wake()
    await deferLater(reactor, 0.2, lambda: None)

    assert [r.verify(SECRET_2)["data"]["id"] for r in first.requests] == ["msg_1"]
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_changed_webhook_url_takes_the_next_post(spool, receivers, dispatcher):
    first, second = receivers

    dispatcher.reconfigure([hook(second)])
    await spool.store(event("msg_1"))
    dispatcher.wake("app")

    await second.wait_for(1)
    assert first.requests == []


@pytest_twisted.ensureDeferred
async def test_added_webhook_gets_a_lane(spool, receivers, dispatcher):
    first, second = receivers

    dispatcher.reconfigure([hook(first), hook(second, "other")])
    await spool.store(event("msg_1", webhook="other"))
    dispatcher.wake("other")

    await second.wait_for(1)
    await until(lambda: spool.pending() == 0)


@pytest_twisted.ensureDeferred
async def test_webhook_removed_then_configured_again_delivers_what_waited(
    spool, receivers, dispatcher
):
    first, second = receivers
    dispatcher.reconfigure([hook(second, "other")])
    await spool.store(event("msg_1"))
    dispatcher.wake()
    await deferLater(reactor, 0.1, lambda: None)
    assert first.requests == []

    dispatcher.reconfigure([hook(first), hook(second, "other")])

    await first.wait_for(1)
    await until(lambda: spool.pending() == 0)
