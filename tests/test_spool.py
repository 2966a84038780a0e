"""The sqlite spool beyond the shared contract: durability, group commit, its file."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from p2a_connector.spool import Event, Segment, SpoolError
from p2a_connector.sqlite_spool import SqliteSpool


class Assembler:
    """Joins the segments' text; remembers every call."""

    def __init__(self, fail_for: str | None = None):
        self.calls: list[tuple[list[dict], bool]] = []
        self.fail_for = fail_for

    def __call__(self, records: list[dict], complete: bool) -> tuple[str, str, bytes]:
        self.calls.append((records, complete))
        reference = records[0]["ref"]
        if reference == self.fail_for:
            raise ValueError(f"cannot assemble {reference}")
        text = "".join(record["text"] for record in records)
        body = {
            "type": "message.received",
            "data": {"text": text, "complete": complete},
        }
        # A fresh id per message, as the spool requires: msg_r1, msg_r1_2, ...
        earlier = sum(1 for records, _ in self.calls if records[0]["ref"] == reference)
        suffix = f"_{earlier}" if earlier > 1 else ""
        event_id = f"msg_{reference}{suffix}"
        return event_id, "message.received", json.dumps(body).encode()


def event(event_id: str, webhook: str = "app") -> Event:
    body = json.dumps({"type": "message.received", "data": {"id": event_id}})
    return Event(
        id=event_id,
        type="message.received",
        webhook=webhook,
        body=body.encode(),
        created_at=reactor.seconds(),
    )


def segment(ref: str, seqnum: int, total: int, text: str, at: float = 0.0) -> Segment:
    return Segment(
        key=f"op|447700900001|88000|{ref}|{total}",
        seqnum=seqnum,
        total=total,
        record={"ref": ref, "text": text},
        webhook="app",
        received_at=at or reactor.seconds(),
    )


@pytest.fixture
def assembler():
    return Assembler()


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "spool" / "spool.db")


@pytest_twisted.async_yield_fixture
async def spool(path, assembler):
    spool = SqliteSpool(path, assembler, reactor)
    await spool.open()
    yield spool
    await spool.close()


async def reopened(spool: SqliteSpool, assembler=None) -> SqliteSpool:
    await spool.close()
    again = SqliteSpool(spool.path, assembler or Assembler(), reactor)
    await again.open()
    return again


async def _tick(delay: float = 0.005) -> None:
    await deferLater(reactor, delay, lambda: None)


# --- durability and group commit ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stored_event_survives_reopening_the_file(spool):
    stored = await spool.store(event("msg_1"))
    spool = await reopened(spool)

    due = await spool.due(reactor.seconds(), 10)

    assert [e.id for e in due] == ["msg_1"]
    assert due[0].body == stored.body
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_store_fires_only_after_the_commit(spool):
    d = spool.store(event("msg_1"))

    assert not d.called
    assert spool.commits == 0
    await d
    assert spool.commits == 1


@pytest_twisted.ensureDeferred
async def test_stores_in_one_reactor_turn_share_one_commit(spool):
    stores = [spool.store(event(f"msg_{n}")) for n in range(200)]

    await gatherResults(stores)

    assert spool.commits == 1
    assert spool.pending() == 200


@pytest_twisted.ensureDeferred
async def test_stores_during_a_commit_share_the_next_one(path):
    spool = SqliteSpool(path, Assembler(), reactor, commit_interval=0.0)
    await spool.open()
    first = spool.store(event("msg_first"))
    later = []

    def store_more():
        # Runs just after the commit timer: the first commit is under way.
        later.extend(spool.store(event(f"msg_{n}")) for n in range(50))

    reactor.callLater(0, store_more)
    await first
    await gatherResults(later)

    assert spool.commits == 2
    assert spool.pending() == 51
    await spool.close()


def test_acknowledged_events_survive_sigkill(tmp_path):
    path = tmp_path / "spool.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from twisted.internet import reactor
        from twisted.internet.defer import gatherResults
        from p2a_connector.spool import Event
        from p2a_connector.sqlite_spool import SqliteSpool

        def assemble(records, complete):
            raise AssertionError("not used")

        spool = SqliteSpool({str(path)!r}, assemble, reactor)

        def stored(_):
            print("acknowledged", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        def run():
            d = spool.open()
            d.addCallback(lambda _: gatherResults([
                spool.store(Event(f"msg_{{n}}", "message.received", "a", b"{{}}", 0))
                for n in range(100)
            ]))
            d.addCallback(stored)

        reactor.callWhenRunning(run)
        reactor.run()
        """
    )

    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == "acknowledged\n"
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM event").fetchone()[0] == 100
    db.close()


# --- reassembly ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_completion_calls_the_assembler_once_and_yields_one_event(
    spool, assembler
):
    results = [
        await spool.store(segment("r1", 3, 3, "c")),
        await spool.store(segment("r1", 1, 3, "a")),
        await spool.store(segment("r1", 2, 3, "b")),
    ]

    assert results[:2] == [None, None]
    assert results[2].id == "msg_r1"
    assert json.loads(results[2].body)["data"] == {"text": "abc", "complete": True}
    assert len(assembler.calls) == 1
    assert [r["text"] for r in assembler.calls[0][0]] == ["a", "b", "c"]
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_segments_completing_in_one_transaction_yield_one_event(spool, assembler):
    results = await gatherResults(
        [spool.store(segment("r1", n, 2, "ab"[n - 1])) for n in (2, 1, 1, 2)]
    )

    assert [r.id if r else None for r in results] == [None, "msg_r1", None, None]
    assert len(assembler.calls) == 1
    assert spool.pending() == 1


@pytest_twisted.ensureDeferred
async def test_a_segment_of_a_recently_completed_message_is_ignored(spool, assembler):
    await spool.store(segment("r1", 1, 2, "a"))
    await spool.store(segment("r1", 2, 2, "b"))

    again = await spool.store(segment("r1", 2, 2, "b"))

    assert again is None
    assert spool.pending() == 1
    assert await spool.expire(reactor.seconds() + 3600) == []
    assert len(assembler.calls) == 1


@pytest_twisted.ensureDeferred
async def test_an_orphan_segment_expires_as_an_incomplete_event(spool, assembler):
    first = segment("r1", 1, 3, "a", at=1000.0)
    await spool.store(first)
    await spool.store(segment("r1", 3, 3, "c", at=1500.0))

    expired = await spool.expire(older_than=1001.0)

    assert [e.id for e in expired] == ["msg_r1"]
    assert json.loads(expired[0].body)["data"] == {"text": "ac", "complete": False}
    assert assembler.calls[-1][1] is False
    assert spool.pending() == 1
    assert await spool.expire(older_than=reactor.seconds()) == []


@pytest_twisted.ensureDeferred
async def test_expire_leaves_messages_younger_than_the_limit(spool):
    await spool.store(segment("r1", 1, 2, "a", at=2000.0))

    assert await spool.expire(older_than=2000.0) == []
    assert (await spool.store(segment("r1", 2, 2, "b"))).id == "msg_r1"


@pytest_twisted.ensureDeferred
async def test_open_segments_and_pending_events_resume_after_reopening(spool):
    await spool.store(segment("r1", 1, 2, "a"))
    await spool.store(event("msg_single"))

    spool = await reopened(spool)
    completed = await spool.store(segment("r1", 2, 2, "b"))

    assert spool.pending() == 2
    assert json.loads(completed.body)["data"]["text"] == "ab"
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_an_assembler_failure_fails_only_its_own_store(path):
    spool = SqliteSpool(path, Assembler(fail_for="bad"), reactor)
    await spool.open()
    await spool.store(segment("bad", 1, 2, "a"))

    results = await gatherResults(
        [
            spool.store(segment("bad", 2, 2, "b")).addErrback(lambda f: f.value),
            spool.store(event("msg_good")),
        ]
    )

    assert isinstance(results[0], ValueError)
    assert results[1].id == "msg_good"
    assert spool.pending() == 1
    await spool.close()


def test_a_segment_numbered_beyond_its_total_is_refused():
    with pytest.raises(ValueError, match="greater than the total"):
        segment("r1", 3, 2, "c")


# --- the delivery queue ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pending_is_loaded_when_the_file_is_opened(spool):
    await gatherResults([spool.store(event(f"msg_{n}")) for n in range(3)])
    await spool.dead("msg_0", 1, "HTTP 400")

    spool = await reopened(spool)

    assert spool.pending() == 2
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_expire_recounts_what_another_process_changed(spool):
    await spool.store(event("msg_1"))
    await spool.dead("msg_1", 1, "HTTP 400")
    command_line = SqliteSpool(spool.path, Assembler(), reactor)
    await command_line.open()
    await command_line.replay(None)
    await command_line.close()

    assert spool.pending() == 0
    await spool.expire(older_than=0.0)
    assert spool.pending() == 1


# --- failures ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_locked_file_fails_the_store_with_spool_error(path):
    spool = SqliteSpool(path, Assembler(), reactor, busy_timeout=0.05)
    await spool.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    with pytest.raises(SpoolError, match="locked"):
        await spool.store(event("msg_1"))
    assert spool.pending() == 0

    other.execute("ROLLBACK")
    other.close()
    assert (await spool.store(event("msg_1"))).id == "msg_1"
    await spool.close()


@pytest_twisted.ensureDeferred
async def test_a_directory_that_cannot_be_created_fails_open(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    spool = SqliteSpool(str(tmp_path / "file" / "spool.db"), Assembler(), reactor)

    with pytest.raises(SpoolError, match="cannot create the directory"):
        await spool.open()


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_not_a_spool_fails_open(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(os.urandom(4096))
    spool = SqliteSpool(str(path), Assembler(), reactor)

    with pytest.raises(SpoolError, match="cannot use the file"):
        await spool.open()


@pytest_twisted.ensureDeferred
async def test_store_after_close_fails_with_spool_error(spool):
    await spool.close()

    with pytest.raises(SpoolError, match="not open"):
        await spool.store(event("msg_1"))


@pytest_twisted.ensureDeferred
async def test_close_commits_what_is_queued(path):
    spool = SqliteSpool(path, Assembler(), reactor, commit_interval=0.5)
    await spool.open()
    stored = spool.store(event("msg_1"))

    await spool.close()

    assert stored.called
    again = SqliteSpool(path, Assembler(), reactor)
    await again.open()
    assert again.pending() == 1
    await again.close()
