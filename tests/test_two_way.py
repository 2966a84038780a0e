"""
Two-way messaging through the real daemon: replies taken from the webhook's
answer come back to the simulator as submit_sm, USSD menus run to their end,
a throttling SMSC gets the reply later, and the outbound API sends on its own.
"""

import json

import pytest_twisted
import treq
from test_end_to_end import (  # noqa: F401 - fixtures used by name
    PHONE,
    SHORT_CODE,
    admin_url,
    bound,
    daemon,
    deliver,
    events,
    sleep,
    smsc,
    until,
)
from twisted.internet import reactor

from p2a_connector import decode, traffic
from p2a_connector.compose import UDHI
from p2a_connector.receiver import Reply
from p2a_connector.simulator import SMSCSimulator
from p2a_connector.smpp_status import ESME_ROK, status_code
from p2a_connector.tlv import TAG_ITS_SESSION_INFO, TAG_USSD_SERVICE_OP

TOKEN = "t0ken-for-the-outbound-api"
USSR_REQUEST, PSSR_RESPONSE = 2, 17
PSSR_INDICATION, USSR_CONFIRM = 1, 18


def answer(body: dict) -> Reply:
    return Reply(
        200,
        headers=(("content-type", "application/json"),),
        body=json.dumps(body).encode(),
    )


def submitted_text(submits) -> str:
    """The text of these submit_sm, as a handset would join them."""
    records = []
    for n, submitted in enumerate(submits, start=1):
        mo = submitted.pdu
        records.append(
            decode.segment_record(
                mo, decode.inspect(mo), operator="op1", bind="x", received_at=float(n)
            )
        )
    _, envelope = decode.build_event(
        records,
        event_id="msg_check",
        options=decode.DecodeOptions(),
        complete=True,
        completed_at=1.0,
    )
    return envelope["data"]["text"]


async def submitted(simulator: SMSCSimulator, count: int, process) -> list:
    def failed(failure):
        raise AssertionError(
            f"{len(simulator.submits)} submit_sm of {count} arrived; the daemon's "
            f"log:\n{process.text()}"
        )

    waiting = simulator.whenSubmitted(count).addTimeout(15, reactor)
    return await waiting.addErrback(failed)


@pytest_twisted.ensureDeferred
async def test_a_long_gsm_reply_arrives_as_concatenated_submit_sm(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    text = "Your balance is 12.50 EUR [incl. VAT]. " * 5
    receiver.script(answer({"reply": {"text": text}}))
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("BAL", "gsm7", None)[0]) == ESME_ROK
    submits = await submitted(smsc, 2, process)

    assert len(submits) == 2
    for part in submits:
        assert part.pdu.data_coding == 0
        assert part.pdu.esm_class & UDHI
        assert part.pdu.source.address == SHORT_CODE.address
        assert part.pdu.destination.address == PHONE.address
    assert submitted_text(submits) == text


@pytest_twisted.ensureDeferred
async def test_a_reply_gsm_cannot_carry_goes_as_ucs2(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    receiver.script(answer({"reply": {"text": "Привет 👋"}}))
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("hi", "gsm7", None)[0]) == ESME_ROK
    (part,) = await submitted(smsc, 1, process)

    assert part.pdu.data_coding == 0x08
    assert part.pdu.short_message.decode("utf-16-be") == "Привет 👋"


@pytest_twisted.ensureDeferred
async def test_a_webhook_answering_twice_with_the_same_reply_sends_it_once(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    # The first answer arrives after the webhook timeout: the dispatcher has
    # given up on it and posts again, and the second answer carries the same
    # reply.  Only one submit_sm may leave.
    slow = Reply(
        200,
        headers=(("content-type", "application/json"),),
        body=json.dumps({"reply": {"text": "once"}}).encode(),
        delay=1.5,
    )
    receiver.script(slow, answer({"reply": {"text": "once"}}))
    process = daemon(webhook_extra="timeout = 1")
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("hello", "gsm7", None)[0]) == ESME_ROK
    await until(lambda: len(receiver.requests) == 2, what="the retried post")
    await submitted(smsc, 1, process)
    event_id = receiver.requests[0].headers["webhook-id"]
    await until(
        lambda: f"delivered {event_id} to" in process.text(), what="the delivery"
    )
    await sleep(1.0)

    assert [s.pdu.short_message for s in smsc.submits] == [b"once"]


@pytest_twisted.ensureDeferred
async def test_a_three_step_ussd_menu_runs_to_its_end(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    receiver.script(
        answer({"reply": {"text": "1. Balance\n2. Top up", "end_session": False}}),
        answer({"reply": {"text": "Amount?", "end_session": False}}),
        answer({"reply": {"text": "Done, thank you."}}),
    )
    process = daemon()
    await bound(smsc, process)

    steps = [
        ("*123#", PSSR_INDICATION, 0),
        ("2", USSR_CONFIRM, 2),
        ("10", USSR_CONFIRM, 4),
    ]
    for count, (text, op, sequence) in enumerate(steps, start=1):
        status = await smsc.deliver(
            source=PHONE,
            destination=SHORT_CODE,
            short_message=text.encode(),
            tlvs=(
                (TAG_USSD_SERVICE_OP, bytes((op,))),
                (TAG_ITS_SESSION_INFO, bytes((7, sequence << 1))),
            ),
        )
        assert status == ESME_ROK
        await submitted(smsc, count, process)

    ops = [s.ussd_service_op for s in smsc.submits]
    infos = [s.its_session_info for s in smsc.submits]
    assert ops == [USSR_REQUEST, USSR_REQUEST, PSSR_RESPONSE]
    assert [info[0] for info in infos] == [7, 7, 7]
    assert [info[1] & 1 for info in infos] == [0, 0, 1]
    assert smsc.submits[2].pdu.short_message == b"Done, thank you."


@pytest_twisted.ensureDeferred
async def test_a_throttling_smsc_gets_the_reply_later_and_once(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    smsc.submit_statuses = [status_code("ESME_RTHROTTLED")]
    receiver.script(answer({"reply": {"text": "later"}}))
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("hi", "gsm7", None)[0]) == ESME_ROK
    (part,) = await submitted(smsc, 1, process)

    assert part.pdu.short_message == b"later"
    assert [status for _, status in smsc.refused] == [status_code("ESME_RTHROTTLED")]


@pytest_twisted.ensureDeferred
async def test_the_outbound_api_sends_with_a_token_and_shows_the_state(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
):
    process = daemon(admin_extra=f'token = "{TOKEN}"')
    await bound(smsc, process)
    base = admin_url(process)
    message = {"to": "+447700900123", "from": "88000", "text": "Your code is 4711"}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    refused = await treq.post(base + "v1/messages", json=message)
    accepted = await treq.post(base + "v1/messages", json=message, headers=auth)

    assert refused.code == 401
    assert accepted.code == 202
    message_id = (await accepted.json())["id"]
    (part,) = await submitted(smsc, 1, process)
    assert part.pdu.short_message == b"Your code is 4711"
    assert (part.pdu.destination.address, part.pdu.destination.ton) == (
        "447700900123",
        1,
    )

    async def state():
        response = await treq.get(base + "v1/messages/" + message_id, headers=auth)
        return (await response.json())["state"]

    for _ in range(50):
        if await state() == "sent":
            break
        await sleep(0.1)
    assert await state() == "sent"


@pytest_twisted.ensureDeferred
async def test_the_outbound_api_is_refused_without_an_admin_token(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
):
    process = daemon()
    await bound(smsc, process)

    response = await treq.post(
        admin_url(process) + "v1/messages",
        json={"to": "447700900123", "from": "88000", "text": "x"},
    )

    assert response.code == 403
    assert "admin.token" in (await response.json())["error"]


@pytest_twisted.ensureDeferred
async def test_the_receipt_of_a_reply_names_the_reply(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    smsc.send_receipts = True
    receiver.script(answer({"reply": {"text": "tracked"}}))
    process = daemon()
    await bound(smsc, process)

    assert await deliver(smsc, traffic.split("hi", "gsm7", None)[0]) == ESME_ROK
    (part,) = await submitted(smsc, 1, process)
    await until(lambda: len(events(receiver)) == 2, what="the receipt's event")

    receipt = next(
        e for e in events(receiver).values() if e["type"] == "receipt.received"
    )
    message = next(
        e for e in events(receiver).values() if e["type"] == "message.received"
    )
    assert receipt["data"]["receipt"]["message_id"] == part.message_id
    assert receipt["data"]["reply_id"].startswith("rpl_")
    assert part.pdu.registered_delivery == 1
    assert message["data"]["conversation"]["turn"] == 1


@pytest_twisted.ensureDeferred
async def test_messages_of_one_person_carry_one_conversation_in_turns(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    process = daemon()
    await bound(smsc, process)

    for text in ("one", "two", "three"):
        assert await deliver(smsc, traffic.split(text, "gsm7", None)[0]) == ESME_ROK
    await until(lambda: len(events(receiver)) == 3, what="three events")

    conversations = [e["data"]["conversation"] for e in events(receiver).values()]
    assert sorted(c["turn"] for c in conversations) == [1, 2, 3]
    assert len({c["id"] for c in conversations}) == 1
    assert conversations[0]["id"].startswith("cnv_")


@pytest_twisted.ensureDeferred
async def test_an_abandoned_ussd_session_ends_with_a_session_ended_event(
    daemon,  # noqa: F811
    smsc,  # noqa: F811
    receiver,
):
    receiver.script(answer({"reply": {"text": "1. Balance", "end_session": False}}))
    process = daemon(extra="[conversation]\nussd_idle = 0.5\n")
    await bound(smsc, process)

    status = await smsc.deliver(
        source=PHONE,
        destination=SHORT_CODE,
        short_message=b"*123#",
        tlvs=(
            (TAG_USSD_SERVICE_OP, bytes((PSSR_INDICATION,))),
            (TAG_ITS_SESSION_INFO, bytes((9, 0))),
        ),
    )
    assert status == ESME_ROK
    await submitted(smsc, 1, process)
    await until(lambda: len(events(receiver)) == 2, what="the session.ended event")

    ended = [e for e in events(receiver).values() if e["type"] == "session.ended"]
    assert len(ended) == 1
    assert ended[0]["data"]["reason"] == "timeout"
    assert ended[0]["data"]["session"]["id"] == 9
