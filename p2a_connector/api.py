"""
The outbound API on the admin endpoint: an application sends a message to a
person without waiting for them to write first.

``POST /v1/messages`` takes JSON ``{"to": ..., "from": ..., "text": ...}``
(and optionally ``operator``, ``webhook``, ``registered_delivery``), keeps
the message in the spool and answers 202 with its id; it is then sent like
a reply.  ``GET /v1/messages/<id>`` shows where it is.  An ``Idempotency-Key``
header makes a repeated POST (a client retrying after a timeout) queue the
message once.  The API needs ``admin.token``: without one it refuses every
request, since anyone who can reach the endpoint could send SMS.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from p2a_connector import compose
from p2a_connector.decode import iso_time
from p2a_connector.outbound import Outbound, OutboundState
from p2a_connector.status import JSONResource

MAX_BODY = 64 * 1024


class RequestError(ValueError):
    """What is wrong with a request, for a 400 answer."""


class Messages(JSONResource):
    """``/v1/messages``: POST to send, GET ``/v1/messages/<id>`` to look."""

    def render_POST(self, request: Request):
        return self.render_GET(request)

    async def answer(self, request: Request) -> tuple[int, Any]:
        if self.connector.config.admin.token is None:
            return 403, {
                "error": "the outbound API needs admin.token (or admin.token_file) "
                "to be set: it sends SMS for whoever calls it"
            }
        message_id = b"/".join(request.postpath).decode("utf-8", "replace")
        if request.method == b"POST" and not message_id:
            return await self._send(request)
        if request.method == b"GET" and message_id:
            return await self._show(message_id)
        return 405, {
            "error": "POST /v1/messages to send; GET /v1/messages/<id> to look"
        }

    async def _send(self, request: Request) -> tuple[int, Any]:
        try:
            message = self._message(request)
        except RequestError as e:
            return 400, {"error": str(e)}

        added = await self.connector.spool.queue([message])
        sender = getattr(self.connector, "sender", None)
        if sender is not None and sender.running:
            sender.wake()
        self.log.info(
            "outbound {id} to {to} via {operator} accepted by the API{again}",
            id=message.id,
            to=message.destination["address"],
            operator=message.operator,
            again="" if added else " (a repeat: already queued)",
        )
        return 202, {"id": message.id, "state": "queued"}

    async def _show(self, message_id: str) -> tuple[int, Any]:
        state = await self.connector.spool.outbound(message_id)
        if state is None:
            return 404, {"id": message_id, "error": "no such message"}
        return 200, describe(state)

    def _message(self, request: Request) -> Outbound:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise RequestError(f"the body is over {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise RequestError("the body must be JSON: {to, from, text}") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object: {to, from, text}")

        config = self.connector.config
        operator = _operator(config, body.get("operator"))
        webhook = body.get("webhook", operator.webhook)
        if webhook not in {w.name for w in config.webhooks}:
            raise RequestError(f"webhook: no webhook named {webhook!r}")
        text = body.get("text")
        if not isinstance(text, str) or not text:
            raise RequestError("text: a non-empty string is required")
        try:
            compose.compose(text, reference=0, max_parts=compose.MAX_PARTS)
        except compose.ComposeError as e:
            raise RequestError(f"text: {e}") from None
        registered = body.get("registered_delivery", 0)
        if registered not in (0, 1, 2):
            raise RequestError("registered_delivery: 0, 1 or 2")

        key = request.getHeader(b"idempotency-key")
        return Outbound(
            id=_message_id(key),
            operator=operator.name,
            source=address(body.get("from"), "from"),
            destination=address(body.get("to"), "to"),
            text=text,
            webhook=webhook,
            created_at=self.connector.reactor.seconds(),
            registered_delivery=registered,
        )


def describe(state: OutboundState) -> dict:
    """An outbound message's state as the API shows it."""
    message = state.message
    return {
        "id": message.id,
        "state": state.state,
        "operator": message.operator,
        "from": message.source,
        "to": message.destination,
        "text": message.text,
        "in_reply_to": message.in_reply_to,
        "created_at": iso_time(message.created_at),
        "sent_at": None if state.sent_at is None else iso_time(state.sent_at),
        "attempts": state.attempt,
        "parts_sent": state.parts_sent,
        "message_ids": list(state.message_ids),
        "error": state.error,
    }


def _operator(config, name: Any):
    names = [operator.name for operator in config.operators]
    if name is None:
        if len(names) == 1:
            return config.operators[0]
        raise RequestError(f"operator: required, one of {', '.join(names)}")
    for operator in config.operators:
        if operator.name == name:
            return operator
    raise RequestError(f"operator: no operator named {name!r}; {', '.join(names)}")


def address(value: Any, field: str) -> dict:
    """
    An address from the API: ``{"address", "ton", "npi"}`` as given, or a
    string read the usual way: digits (a leading ``+`` dropped) longer than
    eight are international (ton 1, npi 1), shorter ones a short code (ton 3,
    npi 0), anything else alphanumeric (ton 5, npi 0).
    """
    if isinstance(value, dict):
        text = value.get("address")
        ton, npi = value.get("ton", 1), value.get("npi", 1)
        if not isinstance(ton, int) or not isinstance(npi, int):
            raise RequestError(f"{field}: ton and npi must be integers")
    elif isinstance(value, str):
        text = value.removeprefix("+")
        if text.isdigit():
            ton, npi = (1, 1) if len(text) > 8 else (3, 0)
        else:
            ton, npi = 5, 0
    else:
        raise RequestError(f'{field}: an address string or {{"address": ...}}')
    if not isinstance(text, str) or not text or len(text) > 20:
        raise RequestError(f"{field}: an address of 1 to 20 characters is required")
    return {"address": text, "ton": ton, "npi": npi}


def _message_id(key: bytes | None) -> str:
    """A fresh id, or one fixed by the client's Idempotency-Key."""
    seed = b"api/" + key if key else os.urandom(16)
    return "out_" + hashlib.sha256(seed).hexdigest()[:26]


def api_resource(connector) -> Resource:
    """The ``/v1`` tree of the admin endpoint."""
    v1 = Resource()
    v1.putChild(b"messages", Messages(connector))
    return v1
