"""
Reloading the configuration on SIGHUP, against the running daemon.

Each test starts `twistd -n p2a-connector`, rewrites its configuration file,
sends SIGHUP and watches over real connections what the SMSC simulators and
the webhook receivers see: kept binds stay connected, added ones bind,
removed ones unbind, webhooks and routes change for the next event, and a
broken file changes nothing.
"""

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from p2a_connector import traffic
from p2a_connector.harness import TEST_SECRET, Daemon, config_text
from p2a_connector.models import Address
from p2a_connector.receiver import Receiver
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK

PHONE = Address("447700900123", 1, 1)
SHORT_CODE = Address("88000", 3, 0)
OTHER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


async def bound(smsc: SMSCSimulator, process: Daemon, name: str = "op1-a") -> None:
    """Once the simulator has bound ``name`` and the daemon has logged it."""
    await smsc.whenBound().addTimeout(10, reactor)
    await until(
        lambda: f"bound {name} as" in process.text(),
        what=f"the daemon logging bound {name}",
    )


def second_bind(port: int, name: str = "op1-b", extra: str = "") -> str:
    """TOML for one more bind of operator op1, for ``bind_extra``."""
    return (
        f'\n[[operator.bind]]\nname = "{name}"\nhost = "127.0.0.1"\n'
        f'port = {port}\nsystem_id = "p2a"\npassword = "secret"\n'
        f"reconnect_initial = 0.1\nreconnect_max = 0.5\n{extra}\n"
    )


@pytest.fixture
def other_smsc():
    """A second SMSC simulator, for binds a reload adds or removes."""
    simulator = SMSCSimulator("p2a", "secret", name="smsc-2")
    simulator.listen(reactor)
    yield simulator
    pytest_twisted.blockon(simulator.stop())


@pytest.fixture
def other_receiver():
    """A second webhook receiver, for webhooks a reload points elsewhere."""
    receiver = Receiver()
    pytest_twisted.blockon(receiver.start())
    yield receiver
    pytest_twisted.blockon(receiver.stop())


class Running:
    """The daemon under test, with its configuration file."""

    def __init__(self, tmp_path, receiver, smsc):
        self.tmp_path = tmp_path
        self.receiver = receiver
        self.smsc = smsc
        self.path = tmp_path / "connector.toml"
        self.process: Daemon | None = None

    def text(self, **extra: str) -> str:
        fields = {
            "spool": self.tmp_path / "spool.db",
            "webhook_url": self.receiver.url,
            "smsc_port": self.smsc.listening.getHost().port,
        }
        fields.update(extra)
        return config_text(**fields)

    def start(self, **extra: str) -> Daemon:
        self.path.write_text(self.text(**extra))
        self.process = Daemon(reactor, self.path, self.tmp_path / "daemon.log")
        self.process.start()
        return self.process

    async def reload(self, text: str, done: str = "reloaded ") -> None:
        """Write ``text`` as the file, SIGHUP, and wait for the log to say ``done``."""
        before = self.process.text().count(done)
        self.path.write_text(text)
        self.process.process.signalProcess(signal.SIGHUP)
        await until(
            lambda: self.process.text().count(done) > before,
            timeout=10,
            what=f"the daemon logging {done!r}",
        )


@pytest.fixture
def running(tmp_path, receiver, smsc):
    daemon = Running(tmp_path, receiver, smsc)
    yield daemon
    if daemon.process is not None and daemon.process.running:
        pytest_twisted.blockon(daemon.process.kill())


@pytest.fixture
def smsc(smpp_simulator):
    return smpp_simulator


def deliver(smsc: SMSCSimulator, text: str, destination=SHORT_CODE):
    (part,) = traffic.split(text, "gsm7", None)
    return smsc.deliver(
        source=PHONE,
        destination=destination,
        esm_class=part.esm_class,
        data_coding=part.data_coding,
        short_message=part.short_message,
    )


def texts(receiver: Receiver, secret: str = TEST_SECRET) -> list[str]:
    return [payload["data"]["text"] for payload in receiver.payloads(secret)]


@pytest_twisted.ensureDeferred
async def test_unchanged_bind_keeps_its_session(running, smsc, receiver):
    process = running.start()
    await bound(smsc, process)

    await running.reload(running.text(reassembly_extra="timeout = 300"))

    assert smsc.binds == 1
    assert "unbind" not in smsc.commands()
    assert await deliver(smsc, "still here") == ESME_ROK
    await until(lambda: texts(receiver) == ["still here"], what="delivery")


@pytest_twisted.ensureDeferred
async def test_added_bind_binds_and_delivers(running, smsc, other_smsc, receiver):
    process = running.start()
    await bound(smsc, process)

    port = other_smsc.listening.getHost().port
    await running.reload(running.text(bind_extra=second_bind(port)))
    await bound(other_smsc, process, "op1-b")

    assert await deliver(other_smsc, "via the new bind") == ESME_ROK
    await until(lambda: len(receiver.requests) == 1, what="delivery")
    (payload,) = receiver.payloads(TEST_SECRET)
    assert payload["data"]["bind"] == "op1-b"


@pytest_twisted.ensureDeferred
async def test_removed_bind_unbinds(running, smsc, other_smsc):
    port = other_smsc.listening.getHost().port
    process = running.start(bind_extra=second_bind(port))
    await bound(smsc, process)
    await bound(other_smsc, process, "op1-b")
    unbound = other_smsc.whenReceived("unbind")

    await running.reload(running.text())

    await unbound.addTimeout(5, reactor)
    await until(lambda: other_smsc.session is None, what="op1-b closed")
    assert "unbind" not in smsc.commands()


@pytest_twisted.ensureDeferred
async def test_changed_bind_rebinds_with_its_new_settings(running, smsc):
    process = running.start()
    await bound(smsc, process)
    rebound = smsc.nextBind()

    await running.reload(running.text(bind_extra='system_type = "NEW"'))

    await rebound.addTimeout(10, reactor)
    binds = [r for r in smsc.received if r.command == "bind_transceiver"]
    assert "unbind" in smsc.commands()
    assert [b.fields["system_type"] for b in binds] == ["", "NEW"]


@pytest_twisted.ensureDeferred
async def test_changed_webhook_url_takes_the_next_event(
    running, smsc, receiver, other_receiver
):
    process = running.start()
    await bound(smsc, process)

    await running.reload(running.text(webhook_url=other_receiver.url))

    assert await deliver(smsc, "to the new url") == ESME_ROK
    await until(lambda: texts(other_receiver) == ["to the new url"], what="delivery")
    assert receiver.requests == []


@pytest_twisted.ensureDeferred
async def test_changed_route_sends_to_its_webhook(
    running, smsc, receiver, other_receiver
):
    process = running.start()
    await bound(smsc, process)
    routed = (
        f'[[webhook]]\nname = "other"\nurl = "{other_receiver.url}"\n'
        f'secrets = ["{OTHER_SECRET}"]\n\n'
        f'[[route]]\nmatch = "{SHORT_CODE.address}"\nwebhook = "other"\n'
    )

    await running.reload(running.text(extra=routed))

    assert await deliver(smsc, "routed") == ESME_ROK
    await until(
        lambda: texts(other_receiver, OTHER_SECRET) == ["routed"], what="delivery"
    )
    assert receiver.requests == []


@pytest_twisted.ensureDeferred
async def test_invalid_file_keeps_the_running_configuration(running, smsc, receiver):
    process = running.start()
    await bound(smsc, process)

    await running.reload(running.text(bind_extra="window = 0"), done="cannot reload")

    log = process.text()
    assert f"cannot reload {running.path}: operator[0].bind[0].window" in log
    assert "configuration loaded before, unchanged" in log
    assert smsc.binds == 1
    assert await deliver(smsc, "unchanged") == ESME_ROK
    await until(lambda: texts(receiver) == ["unchanged"], what="delivery")


@pytest_twisted.ensureDeferred
async def test_spool_change_waits_for_a_restart(running, smsc):
    process = running.start()
    await bound(smsc, process)

    await running.reload(running.text(spool_extra="max_pending = 7"))

    assert "spool.max_pending changed in" in process.text()
    assert "until the daemon restarts" in process.text()
    assert smsc.binds == 1
