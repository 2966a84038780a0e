"""
Standard Webhooks signatures: the headers that let a receiver check that an
event came from us and was not altered or replayed later.

Each configured ``whsec_`` secret yields one ``v1`` signature over
``{id}.{timestamp}.{body}``.  Sending one per secret is what lets secrets
rotate: the receiver accepts the request as soon as any one of them matches
the secret it knows.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"

# Set from the event on every attempt; configuration must not replace them,
# nor the headers that frame the request on its connection.
SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
RESERVED_HEADERS = (
    *SIGNED_HEADERS,
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
)


# Decoded once per secret, not on every post.
@functools.lru_cache(maxsize=64)
def secret_key(secret: str) -> bytes:
    """The HMAC key in a ``whsec_<base64>`` secret; ValueError if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret must start with whsec_")
    encoded = secret[len(SECRET_PREFIX) :]
    # The reference library accepts unpadded base64, so we do too.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        mac = _keyed(secret).copy()
        mac.update(signed)
        signatures.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
    return " ".join(signatures)


@functools.lru_cache(maxsize=64)
def _keyed(secret: str) -> hmac.HMAC:
    """
    An HMAC-SHA256 that has taken the secret's key and nothing else: a copy
    per post signs without looking the algorithm up and keying it again
    (`sign` took 2.9 µs for a 650-byte body, 2.5 with the copy).
    """
    return hmac.new(secret_key(secret), digestmod=hashlib.sha256)


def check_extra_headers(extra: Sequence[tuple[str, str]]) -> None:
    """Refuse configured headers that would replace the signature headers."""
    for name, _ in extra:
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(
                f"the header {name!r} is set by the connector on every request "
                "and cannot be configured"
            )


def headers(
    secrets: Sequence[str],
    msg_id: str,
    timestamp: int,
    body: bytes,
    extra: Sequence[tuple[str, str]] = (),
) -> dict[bytes, list[bytes]]:
    """
    All headers of one webhook attempt, signed, plus the ``extra`` ones,
    which the caller checked once with `check_extra_headers`.
    """
    result = {
        b"webhook-id": [msg_id.encode("utf-8")],
        b"webhook-timestamp": [str(timestamp).encode("ascii")],
        b"webhook-signature": [sign(secrets, msg_id, timestamp, body).encode()],
        b"content-type": [b"application/json"],
    }
    for name, value in extra:
        result.setdefault(name.lower().encode("ascii"), []).append(
            value.encode("utf-8")
        )
    return result
