"""Reading the replies an application puts in its webhook answer."""

import json

from p2a_connector import replies
from p2a_connector.outbound import reply_id

PERSON = {"address": "447700900123", "ton": 1, "npi": 1}
SHORT_CODE = {"address": "88000", "ton": 3, "npi": 0}


def event_body(**data) -> bytes:
    fields = {"from": PERSON, "to": SHORT_CODE, "operator": "op1"} | data
    return json.dumps({"type": "message.received", "data": fields}).encode()


def read(answer, content_type="application/json", **data) -> replies.Answer:
    if not isinstance(answer, bytes):
        answer = json.dumps(answer).encode()
    return replies.read(
        answer,
        content_type,
        event_id="msg_1",
        event_body=event_body(**data),
        webhook="app",
        now=100.0,
    )


def test_a_reply_goes_back_from_the_number_written_to_to_the_person():
    (reply,) = read({"reply": {"text": "Thanks!"}}).replies

    assert (reply.source, reply.destination) == (SHORT_CODE, PERSON)
    assert (reply.operator, reply.webhook, reply.text) == ("op1", "app", "Thanks!")
    assert reply.in_reply_to == "msg_1"
    assert reply.ussd is None


def test_a_list_of_replies_keeps_its_order_with_ids_from_the_event():
    answer = read({"replies": [{"text": "one"}, {"text": "two"}]})

    assert [r.text for r in answer.replies] == ["one", "two"]
    assert [r.id for r in answer.replies] == [
        reply_id("msg_1", 0),
        reply_id("msg_1", 1),
    ]


def test_the_same_answer_twice_gives_the_same_reply_ids():
    first = read({"reply": {"text": "hi"}}).replies
    again = read({"reply": {"text": "hi"}}).replies

    assert [r.id for r in first] == [r.id for r in again]
    assert reply_id("msg_1", 0) != reply_id("msg_2", 0)


def test_an_empty_or_non_json_answer_has_no_reply():
    assert read(b"").replies == ()
    assert read(b"OK", content_type="text/plain") == replies.Answer()
    assert read({"status": "ok"}) == replies.Answer()


def test_a_json_answer_that_does_not_parse_is_a_problem_not_an_error():
    answer = read(b"{not json")

    assert answer.replies == ()
    assert "not JSON" in answer.problems[0]


def test_a_bad_reply_is_named_and_the_good_ones_are_kept():
    answer = read({"replies": [{"text": ""}, {"text": "fine"}, "nope"]})

    assert [r.text for r in answer.replies] == ["fine"]
    assert answer.problems == (
        "replies[0]: text must be a non-empty string; not sent",
        'replies[2]: expected an object {"text": ...}; not sent',
    )


def test_a_ussd_reply_continues_the_session_when_asked():
    session = {"id": 42, "op": "pssr_indication", "sequence": 3, "end": False}

    (open_,) = read(
        {"reply": {"text": "1. Balance", "end_session": False}}, session=session
    ).replies
    (closed,) = read({"reply": {"text": "Bye"}}, session=session).replies

    assert open_.ussd == {"session": 42, "sequence": 4, "end": False}
    assert closed.ussd == {"session": 42, "sequence": 4, "end": True}


def test_end_session_must_be_a_boolean():
    answer = read({"reply": {"text": "x", "end_session": "no"}})

    assert answer.problems == ("reply: end_session must be true or false; not sent",)
