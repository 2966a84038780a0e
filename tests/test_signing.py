"""Standard Webhooks signing, checked against the standardwebhooks library."""

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from p2a_connector import signing

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()
BODY = '{"type":"message.received","data":{"text":"héllo"}}'.encode()


def received(headers: dict[bytes, list[bytes]]) -> dict[str, str]:
    """The headers as a receiver's framework hands them over."""
    return {name.decode(): values[-1].decode() for name, values in headers.items()}


def now() -> int:
    return int(datetime.now(UTC).timestamp())


def test_signature_is_the_one_standardwebhooks_computes():
    timestamp = now()
    expected = Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(timestamp, UTC), BODY.decode()
    )

    assert signing.sign([SECRET], "msg_1", timestamp, BODY) == expected


def test_headers_verify_with_standardwebhooks():
    headers = signing.headers([SECRET], "msg_1", now(), BODY)

    assert Webhook(SECRET).verify(BODY, received(headers))["data"]["text"] == "héllo"


def test_each_of_two_secrets_verifies_on_its_own():
    headers = received(signing.headers([SECRET, OTHER], "msg_1", now(), BODY))

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(OTHER).verify(BODY, headers)


def test_a_changed_body_does_not_verify():
    headers = received(signing.headers([SECRET], "msg_1", now(), BODY))

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"llo", b"LLO"), headers)


def test_headers_carry_id_timestamp_and_content_type():
    headers = signing.headers([SECRET], "msg_1", 1700000000, BODY)

    assert headers[b"webhook-id"] == [b"msg_1"]
    assert headers[b"webhook-timestamp"] == [b"1700000000"]
    assert headers[b"content-type"] == [b"application/json"]


def test_extra_headers_are_added():
    extra = [("Authorization", "Bearer token"), ("X-Tenant", "acme")]

    headers = signing.headers([SECRET], "msg_1", now(), BODY, extra)

    assert headers[b"authorization"] == [b"Bearer token"]
    assert headers[b"x-tenant"] == [b"acme"]


@pytest.mark.parametrize("name", ["Webhook-Signature", "content-type", "webhook-id"])
def test_extra_headers_cannot_replace_the_signature_headers(name):
    with pytest.raises(ValueError, match="set by the connector"):
        signing.check_extra_headers([(name, "x")])


def test_unpadded_secret_is_accepted_like_the_reference_library():
    unpadded = "whsec_" + base64.b64encode(b"k" * 20).decode().rstrip("=")
    headers = received(signing.headers([unpadded], "msg_1", now(), BODY))

    Webhook(unpadded).verify(BODY, headers)


@pytest.mark.parametrize(
    "secret", ["ElcSmdbdDYEKKFTR", "whsec_!!not base64!!", "whsec_"]
)
def test_malformed_secret_is_refused(secret):
    with pytest.raises(ValueError):
        signing.sign([secret], "msg_1", now(), BODY)


def test_signing_without_a_secret_is_refused():
    with pytest.raises(ValueError, match="at least one secret"):
        signing.sign([], "msg_1", now(), BODY)
