"""
Logging by configuration: the ``[log]`` section's format, level and file,
as the observers see events and as the real daemon under twistd writes them.
"""

import io
import json
import sys
from pathlib import Path

import pytest
import pytest_twisted
from test_config import MINIMAL
from test_end_to_end import bound, deliver, events, until
from twisted.internet import reactor, utils
from twisted.internet.task import deferLater
from twisted.logger import (
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure

from p2a_connector import config, logs, traffic
from p2a_connector.config import ConfigError, LogConfig
from p2a_connector.harness import Daemon, config_text
from p2a_connector.smpp_status import ESME_ROK


def load(tmp_path: Path, extra: str = "") -> config.Config:
    path = tmp_path / "connector.toml"
    path.write_text(MINIMAL + extra)
    return config.load(path)


def lines(observer_output: str) -> list[dict]:
    return [json.loads(line) for line in observer_output.splitlines()]


# --- the [log] section ---------------------------------------------------


def test_log_section_defaults_to_text_at_info_on_standard_output(tmp_path):
    assert load(tmp_path).log == LogConfig(format="text", level="info", file=None)


def test_log_section_is_read(tmp_path):
    loaded = load(
        tmp_path, '[log]\nformat = "json"\nlevel = "warn"\nfile = "/tmp/c.log"\n'
    )

    assert loaded.log == LogConfig(format="json", level="warn", file="/tmp/c.log")


def test_unknown_log_format_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '[log]\nformat = "xml"\n')

    assert str(info.value) == "log.format: 'xml' is not one of text, json"


def test_unknown_log_level_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '[log]\nlevel = "warning"\n')

    assert str(info.value) == (
        "log.level: 'warning' is not one of debug, info, warn, error"
    )


# --- the observers -------------------------------------------------------


def test_json_line_has_time_level_namespace_text_and_every_field():
    out = io.StringIO()
    log = Logger(namespace="p2a.test", observer=logs.json_observer(out))

    log.info("delivered {id} to {webhook}", id="msg_1", webhook="app", attempt=2)

    (line,) = lines(out.getvalue())
    assert line["level"] == "info"
    assert line["namespace"] == "p2a.test"
    assert line["text"] == "delivered msg_1 to app"
    assert line["time"].endswith("Z")
    assert {"id": "msg_1", "webhook": "app", "attempt": 2}.items() <= line.items()
    assert not [key for key in line if key.startswith("log_")]


def test_json_field_named_like_a_key_of_the_line_is_kept_with_a_prefix():
    out = io.StringIO()
    log = Logger(namespace="p2a.test", observer=logs.json_observer(out))

    log.info("got {text}", text="hello")

    (line,) = lines(out.getvalue())
    assert line["text"] == "got hello"
    assert line["field_text"] == "hello"


def test_json_line_of_a_failure_carries_its_traceback():
    out = io.StringIO()
    log = Logger(namespace="p2a.test", observer=logs.json_observer(out))

    try:
        raise ConnectionError("webhook gone")
    except ConnectionError:
        log.failure("post failed for {id}", id="msg_2")

    (line,) = lines(out.getvalue())
    assert line["level"] == "critical"
    assert line["id"] == "msg_2"
    assert "ConnectionError: webhook gone" in line["traceback"]


def test_json_line_writes_a_field_json_cannot_hold_as_its_repr():
    out = io.StringIO()
    log = Logger(namespace="p2a.test", observer=logs.json_observer(out))

    log.info("raw {body!r}", body=b"\x00\xff")

    (line,) = lines(out.getvalue())
    assert line["body"] == repr(b"\x00\xff")


@pytest_twisted.ensureDeferred
async def test_configured_level_leaves_out_events_below_it(tmp_path):
    path = tmp_path / "connector.log"
    observer = logs.configured(LogConfig(format="json", level="warn", file=str(path)))
    log = Logger(namespace="p2a.test", observer=observer)

    log.info("bound {bind}", bind="op1-a")
    log.warn("refused by {limit}", limit="max_pending")
    await a_reactor_turn()

    assert [line["text"] for line in lines(path.read_text())] == [
        "refused by max_pending"
    ]


@pytest_twisted.ensureDeferred
async def test_configured_file_is_appended_to(tmp_path):
    path = tmp_path / "connector.log"
    path.write_text("kept\n")
    observer = logs.configured(LogConfig(format="text", file=str(path)))

    Logger(namespace="p2a.test", observer=observer).info("bound {bind}", bind="b")
    await a_reactor_turn()

    first, second = path.read_text().splitlines()
    assert first == "kept"
    assert second.endswith("[p2a.test#info] bound b")


def a_reactor_turn():
    """Lines are flushed once per reactor turn."""
    return deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_lines_of_one_turn_are_flushed_together_after_it(tmp_path):
    path = tmp_path / "connector.log"
    out = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115, ASYNC230
    log = Logger(namespace="p2a.test", observer=logs.LineObserver(out, logs.text_line))

    for n in range(3):
        log.info("line {n}", n=n)
    before = path.read_text()
    await a_reactor_turn()
    out.close()

    assert before == ""
    assert [line.rsplit(" ", 1)[1] for line in path.read_text().splitlines()] == [
        "0",
        "1",
        "2",
    ]


# --- the real daemon under twistd ------------------------------------------


@pytest.fixture
def daemon(tmp_path, receiver, smpp_simulator):
    """A function starting the daemon with a [log] section; all killed at the end."""
    started = []

    def start(log_section: str, twistd_args: tuple[str, ...] = (), **extra) -> Daemon:
        path = tmp_path / "connector.toml"
        path.write_text(
            config_text(
                spool=tmp_path / "spool.db",
                webhook_url=receiver.url,
                smsc_port=smpp_simulator.listening.getHost().port,
                **extra,
            )
            + log_section
        )
        process = Daemon(
            reactor, path, tmp_path / "daemon.log", twistd_args=twistd_args
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running:
            pytest_twisted.blockon(process.kill())


async def one_message(smsc, receiver) -> str:
    """Deliver one message; its webhook-id once the receiver has it."""
    (part,) = traffic.split("Hello log", "gsm7", None)
    assert await deliver(smsc, part) == ESME_ROK
    await until(lambda: len(events(receiver)) == 1, what="one event")
    (event_id,) = events(receiver)
    return event_id


@pytest_twisted.ensureDeferred
async def test_json_format_makes_every_line_json_and_traces_the_message_id(
    daemon, smpp_simulator, receiver
):
    process = daemon('\n[log]\nformat = "json"\n')
    await bound(smpp_simulator, process)

    event_id = await one_message(smpp_simulator, receiver)
    await until(lambda: f"delivered {event_id}" in process.text(), what="delivered")

    parsed = lines(process.text())
    about_it = [line["text"] for line in parsed if line.get("id") == event_id]
    assert any(text.startswith(f"acknowledged {event_id}") for text in about_it)
    assert any(text.startswith(f"delivered {event_id}") for text in about_it)
    assert {"bind": "op1-a"}.items() <= next(
        line for line in parsed if line.get("id") == event_id
    ).items()


@pytest_twisted.ensureDeferred
async def test_level_warn_leaves_info_lines_out(daemon, smpp_simulator, receiver):
    process = daemon('\n[log]\nlevel = "warn"\n', reassembly_extra="timeout = 0.5")
    await smpp_simulator.whenBound().addTimeout(20, reactor)
    await one_message(smpp_simulator, receiver)
    first, _second = traffic.split("orphan " * 30, "gsm7", "udh8", reference=9)

    assert await deliver(smpp_simulator, first) == ESME_ROK
    await until(lambda: "reassembly timed out" in process.text(), what="warning")

    text = process.text()
    assert "#warn] reassembly timed out: msg_" in text
    assert "#info]" not in text
    assert "acknowledged" not in text


@pytest_twisted.ensureDeferred
async def test_explicit_logger_option_wins_over_the_log_section(daemon, smpp_simulator):
    process = daemon(
        '\n[log]\nformat = "text"\nlevel = "error"\n',
        twistd_args=("--logger", "p2a_connector.logs.json_stdout"),
    )

    await bound(smpp_simulator, process)

    parsed = lines(process.text())
    assert any(line["text"].startswith("bound op1-a") for line in parsed)


@pytest_twisted.ensureDeferred
async def test_log_file_gets_the_lines_instead_of_standard_output(
    daemon, smpp_simulator, tmp_path
):
    log_file = tmp_path / "logs" / "connector.log"
    log_file.parent.mkdir()
    process = daemon(f'\n[log]\nfile = "{log_file}"\n')

    await smpp_simulator.whenBound().addTimeout(20, reactor)
    await until(lambda: "bound op1-a" in log_file.read_text(), what="bound in file")

    assert "bound op1-a" not in process.text()


@pytest_twisted.ensureDeferred
async def test_unwritable_log_file_is_refused_at_start_saying_what_to_do(tmp_path):
    path = tmp_path / "connector.toml"
    missing = tmp_path / "no-such-directory" / "connector.log"
    path.write_text(MINIMAL + f'\n[log]\nfile = "{missing}"\n')
    twistd = str(Path(sys.executable).with_name("twistd"))

    out, err, code = await utils.getProcessOutputAndValue(
        twistd,
        ["--nodaemon", "--pidfile=", "p2a-connector", "--config", str(path)],
        path=str(tmp_path),
    )

    assert code != 0
    assert (
        f"log.file: cannot open {missing}: No such file or directory; create its "
        "directory"
    ) in (out + err).decode()


@pytest.mark.parametrize(
    "fields",
    [
        {"log_format": "acknowledged {id} on {bind}", "id": "msg_1", "bind": "b"},
        {"log_format": "x {a!r} {b:.1f}", "a": "q", "b": 1.234},
        {"log_format": "from {log_system}", "log_system": "smsc"},
        {"log_format": "two\nlines"},
        {"log_format": "missing {nothing}"},
        {"log_format": "call {f()}", "f": lambda: "called"},
        {"log_format": ""},
        {},
    ],
)
def test_text_lines_read_as_twisted_writes_them(fields):
    event = {
        "log_level": LogLevel.info,
        "log_namespace": "p2a_connector.intake.Intake",
        "log_time": 1764787770.5,
    } | fields

    assert logs.text_line(event) == formatEventAsClassicLogText(event)


def test_a_text_line_with_a_failure_carries_its_traceback():
    failure = Failure(ZeroDivisionError("division by zero"))
    event = {
        "log_level": LogLevel.error,
        "log_namespace": "p2a",
        "log_time": 1764787770.5,
        "log_format": "it failed",
        "log_failure": failure,
    }

    assert "ZeroDivisionError" in logs.text_line(event)


@pytest.mark.parametrize("threshold", list(LogLevel.iterconstants()), ids=str)
def test_the_level_filter_decides_as_twisteds_does(threshold):
    events = [
        {"log_level": level, "log_namespace": namespace}
        for level in (*LogLevel.iterconstants(), None)
        for namespace in ("p2a_connector.intake.Intake", "", None)
    ]
    twisted = LogLevelFilterPredicate(defaultLogLevel=threshold)

    assert [logs.AtLeast(threshold)(e) for e in events] == [twisted(e) for e in events]
