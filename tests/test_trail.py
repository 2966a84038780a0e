"""The trail's steps as the spools record them and the command prints them."""

from p2a_connector import trail


def test_a_segment_record_becomes_a_received_step_with_its_position():
    record = {
        "command": "deliver_sm",
        "operator": "op1",
        "bind": "op1-a",
        "sequence_number": 7,
        "concat": {"ref": 3, "total": 2, "seqnum": 1},
        "received_at": 1764787770.5,
    }

    assert trail.received(record) == {
        "at": 1764787770.5,
        "step": "received",
        "command": "deliver_sm",
        "operator": "op1",
        "bind": "op1-a",
        "sequence_number": 7,
        "segment": "1/2",
    }


def test_a_single_message_has_no_segment_position():
    step = trail.received({"bind": "op1-a", "concat": None, "received_at": 1.0})

    assert "segment" not in step


def test_an_incomplete_message_says_how_many_segments_came():
    records = [{"concat": {"total": 3, "seqnum": 2}, "received_at": 1.0}]

    steps = trail.assembled(records, complete=False, now=9.0)

    assert steps[-1] == {"at": 9.0, "step": "reassembly_timed_out", "segments": "1/3"}


def test_steps_round_trip_through_their_encoding_in_time_order():
    steps = [trail.step(2.0, "delivered", status=200), trail.step(1.0, "stored")]

    assert trail.decode_steps(trail.encode(steps)) == [steps[1], steps[0]]


def test_render_prints_the_time_the_step_and_its_facts():
    steps = [trail.step(1764787770.5, "delivered", attempt=2, status=200)]

    assert trail.render("msg_1", steps).splitlines() == [
        "trail of msg_1:",
        "2025-12-03T18:49:30.500Z  delivered      attempt=2  status=200",
    ]
