"""
Webhook posts (`p2a_connector.http_posts`) against receivers on real TCP
connections: a scripted one that answers with exact bytes, and twisted.web
over TLS with a certificate authority made for the test.
"""

import datetime
import gc

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from p2a_connector.http_posts import AnswerLost, NotHTTP, Posts, Target

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class _Scripted(Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        while b"\r\n\r\n" in self.received:
            head, _, rest = self.received.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            if len(rest) < length:
                return
            self.received = rest[length:]
            request = head + b"\r\n\r\n" + rest[:length]
            self.factory.requests.append(request)
            answer = self.factory.answers.pop(0) if self.factory.answers else OK
            if answer is None:
                continue
            if callable(answer):
                answer(self)
            else:
                self.transport.write(answer)

    def connectionLost(self, reason):
        self.factory.closed.append(self)


class Scripted(Factory):
    """Answers each request with the next of ``answers`` (bytes; None: no
    answer; a callable: given the connection), then with `OK`."""

    protocol = _Scripted

    def __init__(self):
        self.answers: list = []
        self.requests: list[bytes] = []
        self.connections: list[_Scripted] = []
        self.closed: list[_Scripted] = []


@pytest.fixture
def scripted():
    factory = Scripted()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.target = Target.of(f"http://127.0.0.1:{port.getHost().port}/hook?x=1")
    yield factory
    for connection in factory.connections:
        connection.transport.abortConnection()
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.async_yield_fixture
async def posts():
    posts = Posts(reactor)
    yield posts
    await posts.close()


def post(posts, target, body=b"{}", timeout=2.0, keep=1024, headers=None):
    return posts.post(
        target,
        headers if headers is not None else {b"webhook-id": [b"msg_1"]},
        body,
        timeout=timeout,
        keep=keep,
    )


async def sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


async def failure_of(d: Deferred) -> Exception:
    try:
        await d
    except Exception as e:  # noqa: BLE001 - the failure is what is tested
        return e
    raise AssertionError("the post did not fail")


# --- requests and answers ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_post_is_one_request_with_host_length_and_headers(scripted, posts):
    answer = await post(posts, scripted.target, body=b'{"a":1}')

    port = scripted.target.port
    assert scripted.requests == [
        b"POST /hook?x=1 HTTP/1.1\r\n"
        + b"Host: 127.0.0.1:%d\r\n" % port
        + b"Content-Length: 7\r\n"
        + b"webhook-id: msg_1\r\n\r\n"
        + b'{"a":1}'
    ]
    assert (answer.code, answer.body) == (200, b"{}")
    assert answer.headers == {b"content-length": b"2"}


@pytest_twisted.ensureDeferred
async def test_a_configured_host_header_replaces_the_urls(scripted, posts):
    await post(posts, scripted.target, headers={b"host": [b"app.example"]})

    [request] = scripted.requests
    assert request.count(b"Host:") + request.count(b"host:") == 1
    assert b"\r\nhost: app.example\r\n" in request


def test_a_target_encodes_host_and_path_once():
    target = Target.of("https://bücher.example/päth?q=ä")

    assert target.scheme == b"https"
    assert target.host == b"xn--bcher-kva.example"
    assert target.port == 443
    assert target.path == b"/p%C3%A4th?q=%C3%A4"
    assert target.host_header == b"xn--bcher-kva.example"
    assert Target.of("http://[::1]:8080/").host_header == b"[::1]:8080"


@pytest_twisted.ensureDeferred
async def test_the_connection_is_kept_for_the_next_post(scripted, posts):
    for _ in range(3):
        await post(posts, scripted.target)

    assert len(scripted.requests) == 3
    assert len(scripted.connections) == 1


@pytest_twisted.ensureDeferred
async def test_a_chunked_answer_is_joined(scripted, posts):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    scripted.answers = [chunked + b'3\r\n{"r\r\n4\r\n":1}\r\n0\r\n\r\n']

    answer = await post(posts, scripted.target)

    assert answer.body == b'{"r":1}'
    await post(posts, scripted.target)
    assert len(scripted.connections) == 1


@pytest_twisted.ensureDeferred
async def test_an_answer_without_a_length_ends_with_its_connection(scripted, posts):
    def close_after(connection):
        connection.transport.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        connection.transport.loseConnection()

    scripted.answers = [close_after]

    answer = await post(posts, scripted.target)

    assert (answer.code, answer.body) == (200, b"all of it")


@pytest_twisted.ensureDeferred
async def test_connection_close_makes_the_next_post_use_a_new_one(scripted, posts):
    scripted.answers = [b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"]

    first = await post(posts, scripted.target)
    second = await post(posts, scripted.target)

    assert (first.code, first.body, second.code) == (204, b"", 200)
    assert len(scripted.connections) == 2


@pytest_twisted.ensureDeferred
async def test_an_informational_answer_is_skipped(scripted, posts):
    final = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"

    def continue_then_answer(connection):
        connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        reactor.callLater(0.05, connection.transport.write, final)

    scripted.answers = [continue_then_answer]

    answer = await post(posts, scripted.target)

    assert answer.code == 429
    assert answer.headers == {b"retry-after": b"7", b"content-length": b"0"}


@pytest_twisted.ensureDeferred
async def test_a_body_over_keep_is_read_but_not_kept(scripted, posts):
    scripted.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"]

    answer = await post(posts, scripted.target, keep=9)

    assert (answer.code, answer.body) == (200, None)
    assert (await post(posts, scripted.target)).body == b"{}"
    assert len(scripted.connections) == 1


@pytest_twisted.ensureDeferred
async def test_header_names_are_lower_case_and_the_last_value_counts(scripted, posts):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    scripted.answers = [
        head + b"content-type: application/json\r\nContent-Length: 0\r\n\r\n"
    ]

    answer = await post(posts, scripted.target)

    assert answer.headers[b"content-type"] == b"application/json"


# --- deadlines and failures ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_answer_by_the_deadline_fails_and_closes(scripted, posts):
    scripted.answers = [None]

    error = await failure_of(post(posts, scripted.target, timeout=0.2))

    assert isinstance(error, TimeoutError)
    await sleep(0.05)
    assert len(scripted.closed) == 1


@pytest_twisted.ensureDeferred
async def test_an_answer_whose_body_is_late_counts_without_it(scripted, posts):
    scripted.answers = [b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial']

    answer = await post(posts, scripted.target, timeout=0.2)

    assert (answer.code, answer.body) == (200, None)
    await sleep(0.05)
    assert len(scripted.closed) == 1


@pytest_twisted.ensureDeferred
async def test_a_cancelled_post_closes_its_connection(scripted, posts):
    scripted.answers = [None]
    posting = post(posts, scripted.target)
    await sleep(0.05)

    posting.cancel()

    assert isinstance(await failure_of(posting), CancelledError)
    await sleep(0.05)
    assert len(scripted.closed) == 1


@pytest_twisted.ensureDeferred
async def test_an_answer_that_is_not_http_fails(scripted, posts):
    scripted.answers = [b"SSH-2.0-OpenSSH_9.2\r\n"]

    error = await failure_of(post(posts, scripted.target))

    assert isinstance(error, NotHTTP)
    assert str(error).startswith("the answer is not HTTP/1.1: ")


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_whole_answer_close_the_connection_not_the_post(
    scripted, posts
):
    scripted.answers = [OK + b"\x00garbage\r\n\r\n"]

    answer = await post(posts, scripted.target)
    await post(posts, scripted.target)

    assert (answer.code, answer.body) == (200, b"{}")
    assert len(scripted.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_new_connection_closed_before_the_answer_fails(scripted, posts):
    scripted.answers = [lambda connection: connection.transport.loseConnection()]

    error = await failure_of(post(posts, scripted.target))

    assert isinstance(error, AnswerLost)
    assert len(scripted.requests) == 1


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_closed_as_the_post_goes_out_is_tried_anew(
    scripted, posts
):
    await post(posts, scripted.target)
    scripted.answers = [lambda connection: connection.transport.abortConnection()]

    answer = await post(posts, scripted.target)

    assert answer.code == 200
    assert len(scripted.requests) == 3
    assert len(scripted.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_post_is_tried_anew_once_only(scripted, posts):
    await post(posts, scripted.target)

    def drop(connection):
        connection.transport.abortConnection()

    scripted.answers = [drop, drop]

    error = await failure_of(post(posts, scripted.target))

    assert isinstance(error, AnswerLost)
    assert len(scripted.requests) == 3


@pytest_twisted.ensureDeferred
async def test_a_closed_port_fails_to_connect(posts):
    probe = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port = probe.getHost().port
    await probe.stopListening()

    error = await failure_of(post(posts, Target.of(f"http://127.0.0.1:{port}/")))

    assert isinstance(error, ConnectError)


# --- idle connections ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_closed_after_the_idle_timeout(scripted):
    posts = Posts(reactor, idle_timeout=0.1)
    await post(posts, scripted.target)

    await sleep(0.3)

    assert len(scripted.closed) == 1
    await post(posts, scripted.target)
    assert len(scripted.connections) == 2
    await posts.close()


@pytest_twisted.ensureDeferred
async def test_idle_connections_beyond_max_idle_are_closed(scripted):
    posts = Posts(reactor, max_idle=2)
    scripted.answers = [None, None, None]
    held = [post(posts, scripted.target) for _ in range(3)]
    await sleep(0.1)

    for connection in list(scripted.connections):
        connection.transport.write(OK)
    for d in held:
        await d
    await sleep(0.05)

    assert len(scripted.connections) == 3
    assert len(scripted.closed) == 1
    await posts.close()


@pytest_twisted.ensureDeferred
async def test_close_closes_the_idle_connections(scripted):
    posts = Posts(reactor)
    await post(posts, scripted.target)

    await posts.close()

    await sleep(0.05)
    assert len(scripted.closed) == 1


# --- TLS -------------------------------------------------------------------------


def _certificate(subject, issuer, key, signer, ca: bool):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_receiver(tmp_path):
    """twisted.web over TLS for ``localhost``, its certificate signed by a
    test authority; yields (url, the authority's PEM file)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("p2a test CA", "p2a test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("localhost", "p2a test CA", key, ca_key, ca=False)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(_pem(ca))

    class Hook(Resource):
        isLeaf = True

        def render_POST(self, request):
            return b'{"seen":' + request.content.read() + b"}"

    options = CertificateOptions(privateKey=key, certificate=leaf)
    endpoint = SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
    port = pytest_twisted.blockon(endpoint.listen(Site(Hook())))
    yield f"https://localhost:{port.getHost().port}/hook", ca_file
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_https_to_a_trusted_certificate(tls_receiver, monkeypatch):
    url, ca_file = tls_receiver
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    posts = Posts(reactor)

    answer = await post(posts, Target.of(url), body=b"1")

    assert (answer.code, answer.body) == (200, b'{"seen":1}')
    await posts.close()


@pytest_twisted.ensureDeferred
async def test_https_refuses_a_certificate_it_does_not_trust(tls_receiver):
    url, _ = tls_receiver
    posts = Posts(reactor)

    error = await failure_of(post(posts, Target.of(url)))

    assert isinstance(error, AnswerLost)
    assert "certificate verify failed" in str(error)
    await posts.close()


@pytest_twisted.ensureDeferred
async def test_answered_posts_leave_no_cyclic_garbage(scripted, posts):
    await post(posts, scripted.target)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            await post(posts, scripted.target)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    # Reference counting alone frees each post: posts left in cycles were
    # what the collector paused a busy dispatcher's reactor for.
    assert garbage == []
