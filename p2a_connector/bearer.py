"""
A bearer token in front of a twisted.web resource tree, for the admin endpoint.

Every request must carry ``Authorization: Bearer <token>``, except those for
the top-level children named open (``/healthz``, which a supervisor probes
without credentials).  A request without the right token gets 401 with a
``WWW-Authenticate: Bearer`` challenge and a one-line reason in plain text;
the token itself is compared in constant time and never written anywhere.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

CHALLENGE = b'Bearer realm="p2a-connector"'


class BearerGate(Resource):
    """``wrapped``, answered only for requests that carry ``token``."""

    def __init__(
        self, wrapped: Resource, token: str, open_children: Iterable[bytes] = ()
    ):
        super().__init__()
        self._wrapped = wrapped
        self._token = token.encode("ascii")
        self._open = frozenset(open_children)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path not in self._open:
            refusal = self.refusal(request)
            if refusal is not None:
                return _Unauthorized(refusal)
        return self._wrapped.getChildWithDefault(path, request)

    def render(self, request: Request) -> bytes:
        refusal = self.refusal(request)
        if refusal is not None:
            return _Unauthorized(refusal).render(request)
        return self._wrapped.render(request)

    def refusal(self, request: Request) -> str | None:
        """Why ``request`` may not pass, or None when its token is right."""
        header = request.getHeader(b"authorization")
        if header is None:
            return "this endpoint needs an Authorization: Bearer <token> header"
        scheme, _, presented = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "the Authorization header is not a Bearer token"
        if not hmac.compare_digest(presented.strip(), self._token):
            return "the bearer token is not the one configured in [admin]"
        return None


class _Unauthorized(Resource):
    isLeaf = True

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", CHALLENGE)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.reason.encode() + b"\n"
