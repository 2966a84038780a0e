"""
What a running connector reports about itself: its readiness, its status
(binds, events pending, dead letters, reassemblies) and a message's trail.

The admin endpoint serves these as JSON (``/readyz``, ``/status``,
``/trail/<event id>``); ``p2a-connector status`` reads ``/status``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from p2a_connector import trail

SPOOL_CHECK_TIMEOUT = 2.0


async def readiness(connector) -> dict[str, Any]:
    """
    Ready when the spool answers a read and every operator has a bound bind
    (a dispatcher-only process holds no binds, so only the spool counts).
    """
    down = [s.bind.name for s in connector.binds if s.state != "bound"]
    bound_operators = {s.bind.operator for s in connector.binds if s.state == "bound"}
    unbound_operators = [
        operator.name
        for operator in connector.config.operators
        if operator.name not in bound_operators and connector.role != "dispatcher"
    ]
    spool_ok = await _spool_answers(connector)
    return {
        "ready": spool_ok and not unbound_operators,
        "spool": "ok" if spool_ok else "unreachable",
        "operators_without_a_bound_bind": unbound_operators,
        "binds_down": down,
    }


async def status(connector) -> dict[str, Any]:
    """Readiness, every bind's state, and what the spool holds."""
    body = await readiness(connector)
    body["role"] = connector.role
    body["binds"] = [
        {
            "operator": s.bind.operator,
            "bind": s.bind.name,
            "mode": s.bind.mode,
            "smsc": f"{s.bind.host}:{s.bind.port}",
            "state": s.state,
        }
        for s in connector.binds
    ]
    spool = connector.spool
    reassemblies = spool.reassemblies()
    body["pending"] = spool.pending()
    body["outbound_queued"] = spool.outbound_pending()
    body["reassemblies"] = {"open": reassemblies.count, "bytes": reassemblies.bytes}
    body["dead_letters"] = None
    if body["spool"] == "ok":
        try:
            body["dead_letters"] = await spool.dead_letter_count().addTimeout(
                SPOOL_CHECK_TIMEOUT, connector.reactor
            )
        except Exception:  # noqa: BLE001 - the spool failing is what this reports
            body["spool"] = "unreachable"
    return body


async def _spool_answers(connector) -> bool:
    try:
        await connector.spool.next_due().addTimeout(
            SPOOL_CHECK_TIMEOUT, connector.reactor
        )
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return True


class JSONResource(Resource):
    """A leaf answering GET with the JSON an async ``answer`` makes."""

    isLeaf = True
    log = Logger()

    def __init__(self, connector):
        super().__init__()
        self.connector = connector

    async def answer(self, request: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def render_GET(self, request: Request):
        d = ensureDeferred(self._respond(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _respond(self, request: Request) -> None:
        code, body = await self.answer(request)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(body).encode() + b"\n")
        request.finish()

    def _failed(self, failure, request: Request) -> None:
        self.log.failure("admin request {path} failed", failure, path=request.path)
        if not request.finished and not request._disconnected:
            request.setResponseCode(500)
            request.finish()


class ReadyResource(JSONResource):
    """``/readyz``: 200 when ready, else 503; the body says what is not."""

    async def answer(self, request: Request) -> tuple[int, Any]:
        body = await readiness(self.connector)
        return (200 if body["ready"] else 503), body


class StatusResource(JSONResource):
    """``/status``: always 200 while the process runs; see `status`."""

    async def answer(self, request: Request) -> tuple[int, Any]:
        return 200, await status(self.connector)


class TrailResource(JSONResource):
    """``/trail/<event id>``: the event's steps, or 404 if none are kept."""

    async def answer(self, request: Request) -> tuple[int, Any]:
        event_id = b"/".join(request.postpath).decode("utf-8", "replace")
        if not event_id:
            return 400, {"error": "name the event: /trail/<event id>"}
        steps = await self.connector.spool.trail(event_id)
        if not steps:
            return 404, {
                "id": event_id,
                "error": "no trail: unknown event, or older than trail.keep",
            }
        return 200, {"id": event_id, "steps": trail.as_json(steps)}
