"""
What operations staff read off the running daemon: a message's trail, through
`p2a-connector trail` and the admin endpoint, and `p2a-connector status`.
"""

import json

import pytest_twisted
import treq
from test_end_to_end import (  # noqa: F401 - fixtures used by name
    admin_url,
    bound,
    cli,
    daemon,
    deliver,
    events,
    smsc,
    until,
)

from p2a_connector import traffic
from p2a_connector.smpp_status import ESME_ROK, status_code


def steps(trail: dict) -> list[str]:
    return [step["step"] for step in trail["steps"]]


async def delivered_two_part_after_a_503(daemon, smsc, receiver):  # noqa: F811
    receiver.script(503)
    process = daemon()
    await bound(smsc, process)
    for part in traffic.split("a message in two parts, " * 8, "gsm7", "udh8"):
        assert await deliver(smsc, part) == ESME_ROK
    await until(lambda: len(receiver.requests) == 2, what="the retried post")
    event_id = receiver.requests[0].headers["webhook-id"]
    # The line logged once the delivery is recorded; "delivered " alone is
    # also in the start-up line's "undelivered events".
    await until(
        lambda: f"delivered {event_id} to" in process.text(),
        what="the daemon logging delivery",
    )
    return process, event_id


@pytest_twisted.ensureDeferred
async def test_trail_command_shows_each_step_from_segments_to_delivery(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
    tmp_path,
):
    _process, event_id = await delivered_two_part_after_a_503(daemon, smsc, receiver)
    config = str(tmp_path / "connector.toml")

    out, err, status = await cli("trail", event_id, "--json", "--config", config)
    text, _, _ = await cli("trail", event_id, "--config", config)

    assert status == 0, err
    trail = json.loads(out)
    expected = ["received", "received", "stored", "attempt_failed", "delivered"]
    assert steps(trail) == expected
    lines = text.decode().splitlines()
    assert lines[0] == f"trail of {event_id}:"
    assert [line.split()[1] for line in lines[1:]] == expected
    first, second, stored, failed, delivered = trail["steps"]
    assert {first["segment"], second["segment"]} == {"1/2", "2/2"}
    assert first["bind"] == "op1-a"
    assert stored["webhook"] == "app"
    assert (failed["attempt"], failed["status"]) == (1, 503)
    assert (delivered["attempt"], delivered["status"]) == (2, 200)
    assert "duration_ms" in delivered


@pytest_twisted.ensureDeferred
async def test_trail_of_an_unknown_event_exits_1(daemon, smsc, tmp_path):  # noqa: F811
    process = daemon()
    await bound(smsc, process)

    _out, err, status = await cli(
        "trail", "msg_unknown", "--config", str(tmp_path / "connector.toml")
    )

    assert status == 1
    assert b"no trail for msg_unknown" in err


@pytest_twisted.ensureDeferred
async def test_admin_endpoint_serves_the_trail(daemon, smsc, receiver):  # noqa: F811
    process, event_id = await delivered_two_part_after_a_503(daemon, smsc, receiver)
    base = admin_url(process)

    found = await treq.get(base + "trail/" + event_id)
    missing = await treq.get(base + "trail/msg_unknown")

    assert found.code == 200
    trail = await found.json()
    assert trail["id"] == event_id
    assert steps(trail)[-1] == "delivered"
    assert trail["steps"][0]["time"].endswith("Z")
    assert missing.code == 404


@pytest_twisted.ensureDeferred
async def test_status_command_reports_binds_pending_and_dead_letters(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
    tmp_path,
):
    receiver.script(400)
    process = daemon()
    await bound(smsc, process)
    assert await deliver(smsc, traffic.split("refused", "gsm7", None)[0]) == ESME_ROK
    await until(lambda: "dead-lettered" in process.text(), what="a dead letter")
    config = str(tmp_path / "connector.toml")
    url = admin_url(process)

    out, err, status = await cli("status", "--config", config, "--url", url)
    raw, _, _ = await cli("status", "--json", "--config", config, "--url", url)

    assert status == 0, err
    text = out.decode()
    assert ": ready" in text
    assert "bind op1-a (operator op1, " in text and "): bound" in text
    assert "0 pending, 1 dead letter(s)" in text
    body = json.loads(raw)
    assert body["ready"] is True
    assert (body["pending"], body["dead_letters"]) == (0, 1)
    assert body["outbound_queued"] == 0
    assert "0 outbound to send" in text
    assert [b["state"] for b in body["binds"]] == ["bound"]


@pytest_twisted.ensureDeferred
async def test_status_command_exits_1_when_a_bind_is_down(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    tmp_path,
):
    process = daemon()
    await bound(smsc, process)
    url = admin_url(process)
    smsc.refuse_status = status_code("ESME_RBINDFAIL")
    smsc.disconnect()
    config = str(tmp_path / "connector.toml")

    status = None
    for _ in range(40):
        out, _err, status = await cli("status", "--config", config, "--url", url)
        if status == 1:
            break

    assert status == 1
    assert "NOT READY" in out.decode()
    assert "operator op1 has no bound bind" in out.decode()


@pytest_twisted.ensureDeferred
async def test_status_command_exits_2_when_the_daemon_is_not_running(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    tmp_path,
):
    process = daemon()
    await bound(smsc, process)
    url = admin_url(process)
    await process.stop()

    _out, err, status = await cli(
        "status", "--config", str(tmp_path / "connector.toml"), "--url", url
    )

    assert status == 2
    assert b"cannot reach the daemon" in err
