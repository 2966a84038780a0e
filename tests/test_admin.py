"""
The admin endpoint's bearer token and its counters: the ``[admin] token``
setting, the gate on a real listening site, and the running daemon's
/metrics after real traffic, scraped and parsed as Prometheus would.
"""

import re
from pathlib import Path

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from test_config import MINIMAL
from test_end_to_end import daemon, smsc  # noqa: F401 - fixtures used by name
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from p2a_connector import config, traffic
from p2a_connector.bearer import BearerGate
from p2a_connector.config import ConfigError
from p2a_connector.harness import Daemon
from p2a_connector.models import Address
from p2a_connector.receiver import Receiver
from p2a_connector.smpp_status import ESME_ROK

TOKEN = "0123456789abcdef0123456789abcdef"
PHONE = Address("447700900123", 1, 1)


def load(tmp_path: Path, admin: str) -> config.Config:
    path = tmp_path / "connector.toml"
    path.write_text("[admin]\n" + admin + "\n" + MINIMAL)
    return config.load(path)


def refusal(tmp_path: Path, admin: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, admin)
    return str(info.value)


# --- the setting --------------------------------------------------------------


def test_without_a_token_the_endpoint_is_open(tmp_path):
    assert load(tmp_path, "").admin.token is None


def test_the_token_is_read_inline(tmp_path):
    assert load(tmp_path, f'token = "{TOKEN}"').admin.token == TOKEN


def test_the_token_is_read_from_a_file_without_its_newline(tmp_path):
    (tmp_path / "admin-token").write_text(TOKEN + "\n")

    assert load(tmp_path, 'token_file = "admin-token"').admin.token == TOKEN


def test_a_token_shorter_than_16_characters_is_refused(tmp_path):
    message = refusal(tmp_path, 'token = "tooshort"')

    assert message.startswith("admin.token: the token has 8 characters, fewer than 16")
    assert "tooshort" not in message


def test_a_short_token_file_is_named_in_the_refusal(tmp_path):
    (tmp_path / "admin-token").write_text("tiny\n")

    assert refusal(tmp_path, 'token_file = "admin-token"').startswith(
        "admin.token_file: the token has 4 characters"
    )


def test_a_token_and_a_token_file_together_are_refused(tmp_path):
    (tmp_path / "admin-token").write_text(TOKEN)

    message = refusal(tmp_path, f'token = "{TOKEN}"\ntoken_file = "admin-token"')

    assert message == (
        "admin.token: give one of token, token_file or token_credential, "
        "not token and token_file"
    )


def test_a_token_with_a_space_is_refused(tmp_path):
    message = refusal(tmp_path, 'token = "0123456789 abcdef0123"')

    assert message.startswith("admin.token: the token must be printable ASCII")


def test_the_token_stays_out_of_the_configuration_repr(tmp_path):
    loaded = load(tmp_path, f'token = "{TOKEN}"')

    assert TOKEN not in repr(loaded)


# --- the gate -----------------------------------------------------------------


class _Text(Resource):
    isLeaf = True

    def __init__(self, text: bytes):
        super().__init__()
        self.text = text

    def render_GET(self, request) -> bytes:
        return self.text


@pytest_twisted.async_yield_fixture
async def gated():
    """The base URL of a real site: /healthz and /metrics behind the gate."""
    root = Resource()
    root.putChild(b"healthz", _Text(b"ok\n"))
    root.putChild(b"metrics", _Text(b"p2a 1\n"))
    port = reactor.listenTCP(
        0,
        Site(BearerGate(root, TOKEN, open_children=[b"healthz"])),
        interface="127.0.0.1",
    )
    yield f"http://127.0.0.1:{port.getHost().port}/"
    await port.stopListening()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest_twisted.ensureDeferred
async def test_a_request_without_a_token_gets_401_and_a_bearer_challenge(gated):
    response = await treq.get(gated + "metrics")

    assert response.code == 401
    challenge = response.headers.getRawHeaders("www-authenticate")[0]
    assert challenge.startswith("Bearer")
    assert "Authorization: Bearer" in await response.text()


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_gets_401(gated):
    response = await treq.get(gated + "metrics", headers=bearer(TOKEN[::-1]))

    assert response.code == 401
    assert "not the one configured" in await response.text()


@pytest_twisted.ensureDeferred
async def test_basic_credentials_are_not_a_bearer_token(gated):
    response = await treq.get(
        gated + "metrics", headers={"Authorization": f"Basic {TOKEN}"}
    )

    assert response.code == 401
    assert "not a Bearer token" in await response.text()


@pytest_twisted.ensureDeferred
async def test_the_right_token_passes(gated):
    response = await treq.get(gated + "metrics", headers=bearer(TOKEN))

    assert response.code == 200
    assert await response.text() == "p2a 1\n"


@pytest_twisted.ensureDeferred
async def test_the_scheme_name_is_case_insensitive(gated):
    response = await treq.get(
        gated + "metrics", headers={"Authorization": f"bearer {TOKEN}"}
    )

    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_healthz_needs_no_token(gated):
    response = await treq.get(gated + "healthz")

    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_an_unknown_path_without_a_token_gets_401_not_404(gated):
    response = await treq.get(gated + "trail/msg_1")

    assert response.code == 401


# --- the running daemon ---------------------------------------------------------


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


async def until(condition, timeout: float = 15.0, what: str = "condition"):
    waited = 0.0
    while not await condition():
        if waited >= timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        await sleep(0.1)
        waited += 0.1


@pytest_twisted.async_yield_fixture
async def rejecting():
    """A second webhook receiver, which answers 400 to everything."""
    receiver = Receiver()
    receiver.script(*[400] * 10)
    await receiver.start()
    yield receiver
    await receiver.stop()


async def admin_url(process: Daemon) -> str:
    """The admin endpoint's base URL, once the daemon has logged it."""
    pattern = r"admin endpoint on (http://127\.0\.0\.1:\d+/)"

    async def logged():
        return re.search(pattern, process.text()) is not None

    await until(logged, what=f"the admin endpoint line; log:\n{process.text()}")
    return re.search(pattern, process.text()).group(1)


async def scrape(base: str, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by name and sorted labels."""
    response = await treq.get(base + "metrics", headers=headers or None)
    assert response.code == 200
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


REJECTS = """
[[webhook]]
name = "rejects"
url = "{url}"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]
timeout = 5

[[route]]
match = "88001"
webhook = "rejects"
"""


@pytest_twisted.ensureDeferred
async def test_metrics_count_pdus_responses_attempts_and_dead_letters(
    daemon,  # noqa: F811 - the fixture of test_end_to_end
    smpp_simulator,
    receiver,
    rejecting,
):
    receiver.script(503)
    process = daemon(extra=REJECTS.format(url=rejecting.url))
    await smpp_simulator.whenBound().addTimeout(20, reactor)
    base = await admin_url(process)
    [retried] = traffic.split("retried", "gsm7", None)
    [rejected] = traffic.split("rejected", "gsm7", None)

    to_app = await smpp_simulator.deliver(
        source=PHONE,
        destination=Address("88000"),
        short_message=retried.short_message,
    )
    to_rejects = await smpp_simulator.deliver(
        source=PHONE,
        destination=Address("88001"),
        short_message=rejected.short_message,
    )
    assert (to_app, to_rejects) == (ESME_ROK, ESME_ROK)

    async def settled():
        samples = await scrape(base)
        return (
            sample(
                samples,
                "p2a_webhook_attempts_total",
                webhook="app",
                outcome="delivered",
            )
            == 1
            and sample(samples, "p2a_dead_letters_total", webhook="rejects") == 1
        )

    # The 503 is retried after the schedule's 5 s, give or take a fifth.
    await until(settled, timeout=20, what="one delivery and one dead letter")
    samples = await scrape(base)

    bind = {"operator": "op1", "bind": "op1-a"}
    attempts = "p2a_webhook_attempts_total"
    responses = "p2a_webhook_responses_total"
    assert sample(samples, attempts, webhook="app", outcome="retry") == 1
    assert sample(samples, attempts, webhook="app", outcome="dead") == 0
    assert sample(samples, attempts, webhook="rejects", outcome="dead") == 1
    assert sample(samples, attempts, webhook="rejects", outcome="delivered") == 0
    assert sample(samples, responses, webhook="app", code="503") == 1
    assert sample(samples, responses, webhook="app", code="200") == 1
    assert sample(samples, responses, webhook="rejects", code="400") == 1
    assert sample(samples, "p2a_dead_letters_total", webhook="app") == 0
    assert sample(samples, "p2a_webhook_latency_seconds_count", webhook="app") == 2
    assert (
        sample(
            samples,
            "p2a_pdus_received_total",
            command="deliver_sm",
            status="ESME_ROK",
            **bind,
        )
        == 2
    )
    assert (
        sample(
            samples,
            "p2a_responses_sent_total",
            command="deliver_sm_resp",
            status="ESME_ROK",
            **bind,
        )
        == 2
    )
    assert sample(samples, "p2a_binds_total", outcome="bound", **bind) == 1
    assert sample(samples, "p2a_bind_up", **bind) == 1
    assert "no token: open to anyone who can reach it" in process.text()


@pytest_twisted.ensureDeferred
async def test_with_a_token_only_healthz_answers_without_it(
    daemon,  # noqa: F811 - the fixture of test_end_to_end
    smpp_simulator,
):
    process = daemon(admin_extra=f'token = "{TOKEN}"')
    base = await admin_url(process)

    without = await treq.get(base + "metrics")
    ready_without = await treq.get(base + "readyz")
    health = await treq.get(base + "healthz")
    samples = await scrape(base, Authorization=f"Bearer {TOKEN}")

    assert (without.code, ready_without.code, health.code) == (401, 401, 200)
    assert ("p2a_events_pending", ()) in samples
    assert "a bearer token is required except for /healthz" in process.text()
    assert TOKEN not in process.text()
