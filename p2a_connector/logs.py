"""
Log observers: the one the ``[log]`` section describes, and twistd's
``--logger`` option.

twistd asks the application for an ``ILogObserver`` component before it
begins logging (``twisted.application.app.AppLogger.start``); the daemon's
service gives it the observer ``configured`` makes, so the format, the
level and the file of ``[log]`` take effect without command-line options.
An explicit ``twistd --logger ...`` comes first, as twistd decides.

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level``,
``namespace``, ``text`` (the formatted message) and every field the event
was logged with (``id``, ``event_id``, ``bind``, ``sequence_number``,
``webhook``...) as a key of its own; ``traceback`` when it carried a
failure.  ``twistd -n --logger p2a_connector.logs.json_stdout p2a-connector
...`` writes the same lines to standard output whatever ``[log]`` says.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from constantly import NamedConstant
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from p2a_connector.config import LogConfig

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
# Keys every JSON line has; a field logged under one of these names is kept
# as "field_<name>" rather than lost.
OWN_KEYS = frozenset({"time", "level", "namespace", "text", "traceback"})
# Keys of old twisted.python.log events that repeat what the line says.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "why"})


def configured(log: LogConfig) -> ILogObserver:
    """
    The observer ``[log]`` asks for: text or JSON, to ``log.file`` (appended
    to, so ``logrotate``'s ``copytruncate`` works) or standard output,
    passing events at ``log.level`` and above.  Opening the file may raise
    OSError, which the caller turns into an error saying what to do.
    """
    if log.file is None:
        out = sys.stdout
    else:
        # Open for as long as the process logs, so no context manager.
        out = open(log.file, "a", encoding="utf-8")  # noqa: SIM115
    if log.format == "json":
        observer = json_observer(out)
    else:
        observer = LineObserver(out, text_line)
    return FilteringLogObserver(observer, [AtLeast(LEVELS[log.level])])


@implementer(ILogFilterPredicate)
class AtLeast:
    """
    Passes events of ``level`` and above, as Twisted's
    LogLevelFilterPredicate does for a default level with no namespace of
    its own, with each level's verdict worked out once: comparing two
    LogLevel constants sorts all of them, twice per event.
    """

    def __init__(self, level: NamedConstant):
        self._verdicts = {
            each: PredicateResult.no if each < level else PredicateResult.maybe
            for each in LogLevel.iterconstants()
        }

    def __call__(self, event: dict[str, Any]) -> NamedConstant:
        if not event.get("log_namespace"):
            return PredicateResult.no
        return self._verdicts.get(event.get("log_level"), PredicateResult.no)


def text_line(event: dict[str, Any]) -> str | None:
    """
    An event as twistd writes it (``formatEventAsClassicLogText``), made
    cheaper for the lines the daemon writes per message: the time stamp is
    computed once a second, and a plain format string is filled by
    ``str.format_map`` rather than Twisted's formatter, which also allows
    calls in it.  Anything else (a traceback, a format that needs Twisted's
    formatter, no format at all) goes through Twisted's own.
    """
    text = _plain_text(event)
    if text is None:
        return formatEventAsClassicLogText(event, formatTime=_stamps)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        system = f"{namespace}#{level.name if level is not None else '-'}"
    stamp = _stamps(event.get("log_time"))
    return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


def _plain_text(event: dict[str, Any]) -> str | None:
    """The event's text by str.format_map, or None when that cannot serve."""
    form = event.get("log_format")
    if form is None or "log_failure" in event:
        return None
    try:
        return form.format_map(event)
    except Exception:  # noqa: BLE001 - Twisted's formatter says what went wrong
        return None


class _TimeStamps:
    """formatTime's stamp, local time, made once per second."""

    def __init__(self):
        self._second: int | None = None
        self._stamp = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._stamp


_stamps = _TimeStamps()


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event as the line ``format`` makes of it, and flushes once
    per reactor turn rather than once per line, as Twisted's FileLogObserver
    does: the daemon writes two lines per message, and a flush is a system
    call.  Lines are flushed at once while the reactor is not running (start
    and shutdown), and a process killed with SIGKILL loses at most the lines
    of its last turn.
    """

    def __init__(self, out: IO[Any], format: Callable[[dict], str | None]):
        self._out = out
        self._format = format
        self._flush_due = False

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if not text:
            return
        self._out.write(text)
        if self._flush_due:
            return
        from twisted.internet import reactor

        if not reactor.running:
            self._out.flush()
        elif isInIOThread():
            self._flush_due = True
            reactor.callLater(0, self._flush)
        else:
            self._flush_due = True
            reactor.callFromThread(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        try:
            self._out.flush()
        except OSError:
            # Nowhere left to report it: the log is where it would go.
            pass


def json_observer(out: IO[Any]) -> ILogObserver:
    """One JSON object per line on ``out``."""
    return LineObserver(out, json_line)


def json_stdout() -> ILogObserver:
    """One JSON object per line on standard output, for ``--logger``."""
    return json_observer(sys.stdout)


def json_line(event: dict[str, Any]) -> str:
    """An event as one line of compact JSON, ending in a newline."""
    level = event.get("log_level")
    line: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()

    legacy = event.get("log_namespace") == "log_legacy"
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        line[f"field_{key}" if key in OWN_KEYS else key] = value

    try:
        return json.dumps(line, default=repr, ensure_ascii=False) + "\n"
    except ValueError:
        # A field that refers to itself: the line still says what happened.
        own = {key: line[key] for key in OWN_KEYS if key in line}
        return json.dumps(dict(own, fields_unserializable=True), default=repr) + "\n"


def _iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
