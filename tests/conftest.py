"""Shared fixtures for the SMPP tests: a listening simulator and bind configs."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_twisted
from redis_server import Cluster, RedisServer, available
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, globalLogPublisher

from p2a_connector.config import BindConfig
from p2a_connector.receiver import Receiver
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.sqlite_spool import SqliteSpool


@contextmanager
def captured_logs() -> Iterator[list[LogEvent]]:
    """
    The events logged in the block, as Twisted's ``capturedLogs`` gives,
    but the capture ends even when the block fails: Twisted's goes on, and
    holds every event of every later test.
    """
    events: list[LogEvent] = []
    observe = events.append
    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def whole_events_only(records: list[dict], complete: bool) -> tuple[str, str, bytes]:
    """The assembler of a spool that is only given whole events."""
    raise AssertionError("these tests store whole events, not segments")


@pytest_twisted.async_yield_fixture
async def spool(tmp_path):
    """An open sqlite spool of whole events in the test's directory; the
    modules that need another kind define their own ``spool``."""
    spool = SqliteSpool(str(tmp_path / "spool.db"), whole_events_only, reactor)
    await spool.open()
    yield spool
    await spool.close()


@pytest.fixture
def smpp_simulator():
    """An SMSC simulator listening on 127.0.0.1, port chosen by the system."""
    simulator = SMSCSimulator("p2a", "secret")
    simulator.listen(reactor)
    yield simulator
    pytest_twisted.blockon(simulator.stop())


@pytest.fixture
def smpp_bind(smpp_simulator):
    """A function making a BindConfig for the simulator, with overrides."""
    port = smpp_simulator.listening.getHost().port

    def make(**overrides) -> BindConfig:
        fields = {
            "name": "test-bind",
            "operator": "test",
            "host": "127.0.0.1",
            "port": port,
            "system_id": "p2a",
            "password": "secret",
        }
        fields.update(overrides)
        return BindConfig(**fields)

    return make


@pytest.fixture
def smpp_wait():
    """A function waiting on the real reactor until a condition holds."""

    def wait(condition, timeout: float = 5.0, step: float = 0.01) -> Deferred:
        if condition():
            return succeed(None)
        if timeout <= 0:
            raise AssertionError("condition not met in time")
        later = deferLater(reactor, step, lambda: None)
        return later.addCallback(lambda _: wait(condition, timeout - step, step))

    return wait


@pytest.fixture
def smpp_logged_failures():
    """Failures logged while the test runs (tracebacks nobody handled)."""
    from twisted.logger import globalLogPublisher

    failures = []

    def observe(event):
        # Legacy twisted.python.log.err events carry "failure" instead.
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            failures.append(failure)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 that records and verifies requests."""
    receiver = Receiver()
    pytest_twisted.blockon(receiver.start())
    yield receiver
    pytest_twisted.blockon(receiver.stop())


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A private redis-server for one test module, on a free port."""
    if not available():
        pytest.skip("no redis-server binary on this machine")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A private Redis Cluster of three masters for one test module."""
    if not available():
        pytest.skip("no redis-server binary on this machine")
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
