"""
`ScriptBatch`: the calls made in one reactor turn go to Redis as one script
call, and calls made while Redis still holds earlier batches wait to go
together; each caller hears its own result, or every caller the failure.
And the spool's protocol writes commands as txredisapi's does.
"""

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from p2a_connector.redis_commands import ScriptBatch, _Protocol


class Script:
    """Stands for Redis: records each batch and answers when told to."""

    def __init__(self):
        self.batches: list[list[tuple]] = []
        self.answers: list[Deferred] = []

    def send(self, calls: list[tuple]) -> Deferred:
        self.batches.append(calls)
        d: Deferred = Deferred()
        self.answers.append(d)
        return d


def results(deferreds: list[Deferred]) -> list:
    out = []
    for d in deferreds:
        d.addBoth(out.append)
    return out


def test_the_calls_of_one_turn_are_sent_together_at_its_end():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock)

    calls = [batch.add((n,)) for n in range(3)]
    assert script.batches == []
    clock.advance(0)

    assert script.batches == [[(0,), (1,), (2,)]]
    got = results(calls)
    script.answers[0].callback(["a", "b", "c"])
    assert got == ["a", "b", "c"]


def test_a_failed_call_fails_every_caller_of_the_batch():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock)
    got = results([batch.add((n,)) for n in range(2)])
    clock.advance(0)

    script.answers[0].errback(RuntimeError("Redis refused"))

    assert [failure.check(RuntimeError) for failure in got] == [RuntimeError] * 2


def test_calls_past_the_limit_go_as_another_batch():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock, limit=2)

    for n in range(3):
        batch.add((n,))
    clock.advance(0)

    assert script.batches == [[(0,), (1,)], [(2,)]]
    assert clock.getDelayedCalls() == []


def test_while_redis_holds_the_batches_in_flight_calls_wait_and_go_together():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock, in_flight=1)
    first = results([batch.add(("first",))])
    clock.advance(0)

    later = results([batch.add((n,)) for n in range(3)])
    clock.advance(0)
    assert script.batches == [[("first",)]]

    script.answers[0].callback(["done"])
    clock.advance(0)
    assert first == ["done"]
    assert script.batches == [[("first",)], [(0,), (1,), (2,)]]
    script.answers[1].callback(["a", "b", "c"])
    assert later == ["a", "b", "c"]


def test_a_failed_batch_lets_the_waiting_calls_go():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock, in_flight=1)
    failed = results([batch.add(("first",))])
    clock.advance(0)
    batch.add(("second",))
    clock.advance(0)

    script.answers[0].errback(RuntimeError("Redis did not answer"))
    clock.advance(0)

    assert failed[0].check(RuntimeError)
    assert script.batches == [[("first",)], [("second",)]]


def test_a_later_turn_makes_another_batch():
    clock, script = Clock(), Script()
    batch = ScriptBatch(script.send, clock)
    batch.add(("first",))
    clock.advance(0)
    batch.add(("second",))
    clock.advance(0)

    assert script.batches == [[("first",)], [("second",)]]


def test_nothing_added_sends_nothing():
    clock, script = Clock(), Script()
    ScriptBatch(script.send, clock)
    clock.advance(0)
    assert script.batches == []


def test_commands_are_encoded_as_txredisapi_encodes_them():
    args = ("EVALSHA", "ab" * 20, 1, "{p2a}:counts", "ünï", b"\x00\r\n", 2.5, -7)
    ours = _Protocol(charset=None)._build_command(*args)

    assert ours == txredisapi.RedisProtocol(charset=None)._build_command(*args)
    assert ours.startswith(b"*8\r\n$7\r\nEVALSHA\r\n$40\r\n")
