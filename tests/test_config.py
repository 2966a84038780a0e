"""The configuration file: defaults, secrets from files, precise errors."""

from pathlib import Path

import pytest

from p2a_connector import config
from p2a_connector.config import ConfigError
from p2a_connector.smpp_status import status_code

MINIMAL = """
[spool]
backend = "sqlite"
path = "var/spool.db"

[[webhook]]
name = "app"
url = "http://127.0.0.1:8099/sms"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[operator]]
name = "op1"
webhook = "app"

[[operator.bind]]
host = "127.0.0.1"
port = 2775
system_id = "p2a"
password = "secret"
mode = "transceiver"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    return str(info.value)


def test_minimal_file_loads_with_defaults(tmp_path):
    loaded = config.load(write(tmp_path, MINIMAL))

    bind = loaded.operators[0].binds[0]
    assert bind.name == "op1-0"
    assert bind.mode == "transceiver"
    assert bind.busy_status == status_code("ESME_RX_T_APPN")
    assert bind.max_pdu_size == 65536
    assert loaded.spool.path == "var/spool.db"
    assert loaded.reassembly.timeout == 600.0
    assert loaded.webhooks[0].timeout == 15.0


def test_password_and_secret_can_come_from_files(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "hook").write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    text = MINIMAL.replace('password = "secret"', 'password_file = "pw"').replace(
        'secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]',
        'secret_files = ["hook"]',
    )

    loaded = config.load(write(tmp_path, text))

    assert loaded.operators[0].binds[0].password == "s3cret"
    assert loaded.webhooks[0].secrets == ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",)


def test_missing_secret_file_names_key_and_path(tmp_path):
    text = MINIMAL.replace('password = "secret"', 'password_file = "nope"')

    message = error_for(tmp_path, text)

    assert message.startswith("operator[0].bind[0].password_file: cannot read")
    assert "nope" in message


def test_wrong_type_names_the_key(tmp_path):
    message = error_for(tmp_path, MINIMAL.replace("port = 2775", 'port = "2775"'))

    assert message.startswith("operator[0].bind[0].port: expected an integer")


def test_unknown_key_is_refused(tmp_path):
    message = error_for(tmp_path, MINIMAL.replace('mode = "transceiver"', "mdoe = 1"))

    assert message == "operator[0].bind[0].mdoe: unknown key"


def test_bad_mode_lists_the_choices(tmp_path):
    message = error_for(tmp_path, MINIMAL.replace('"transceiver"', '"sender"'))

    assert "operator[0].bind[0].mode: 'sender' is not one of" in message


def test_plain_http_to_a_remote_host_needs_insecure(tmp_path):
    text = MINIMAL.replace("http://127.0.0.1:8099/sms", "http://example.com/sms")

    assert "webhook[0].url: plain http://" in error_for(tmp_path, text)
    loaded = config.load(
        write(tmp_path, text.replace('name = "app"', 'name = "app"\ninsecure = true'))
    )
    assert loaded.webhooks[0].insecure


def test_secret_must_be_in_whsec_form(tmp_path):
    text = MINIMAL.replace("whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n", "hunter2")

    assert error_for(tmp_path, text).startswith("webhook[0].secrets[0]: ")


def test_operator_naming_an_unknown_webhook_is_refused(tmp_path):
    text = MINIMAL.replace('webhook = "app"', 'webhook = "ap"')

    assert error_for(tmp_path, text) == "operator[0].webhook: no [[webhook]] named 'ap'"


def test_never_the_permanent_error_as_busy_status(tmp_path):
    text = MINIMAL.replace('mode = "transceiver"', 'busy_status = "ESME_RX_P_APPN"')

    assert "operator[0].bind[0].busy_status" in error_for(tmp_path, text)


def test_routes_prefer_exact_then_longest_prefix_then_operator_default(tmp_path):
    text = (
        MINIMAL
        + """
[[webhook]]
name = "short"
url = "http://127.0.0.1:8099/a"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[webhook]]
name = "uk"
url = "http://127.0.0.1:8099/b"
secrets = ["whsec_ElcSmdbdDYEKKFTRjSshQl++LMhyVr5n"]

[[route]]
match = "44*"
webhook = "app"

[[route]]
match = "447700*"
webhook = "uk"

[[route]]
match = "447700900123"
webhook = "short"
"""
    )
    loaded = config.load(write(tmp_path, text))

    assert loaded.route("op1", "447700900123") == "short"
    assert loaded.route("op1", "447700900999") == "uk"
    assert loaded.route("op1", "441234") == "app"
    assert loaded.route("op1", "12345") == "app"


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    message = error_for(tmp_path, "[spool\n")

    assert "not valid TOML" in message


def test_a_ton_smpp_does_not_define_is_refused(tmp_path):
    text = MINIMAL.replace('mode = "transceiver"', "addr_ton = 9")

    assert error_for(tmp_path, text).startswith(
        "operator[0].bind[0].addr_ton: 9 is not"
    )


def test_a_header_the_signature_depends_on_cannot_be_configured(tmp_path):
    text = MINIMAL.replace(
        'name = "app"', 'name = "app"\nheaders = { "Webhook-Id" = "x" }'
    )

    assert error_for(tmp_path, text).startswith("webhook[0].headers.Webhook-Id: set by")


@pytest.mark.parametrize(
    "header, message",
    [
        ('"Content-Length" = "1"', "webhook[0].headers.Content-Length: set by"),
        ('"X Tenant" = "a"', "webhook[0].headers.X Tenant: not a header name"),
        (
            '"X-Tenant" = "a\\r\\nX-Admin: yes"',
            "webhook[0].headers.X-Tenant: a header value must be printable",
        ),
    ],
)
def test_a_header_that_would_break_the_request_is_refused(tmp_path, header, message):
    text = MINIMAL.replace('name = "app"', f'name = "app"\nheaders = {{ {header} }}')

    assert error_for(tmp_path, text).startswith(message)


def test_a_configured_header_is_kept(tmp_path):
    text = MINIMAL.replace(
        'name = "app"', 'name = "app"\nheaders = { "X-Tenant" = "blue\tgreen" }'
    )

    assert config.load(write(tmp_path, text)).webhooks[0].headers == (
        ("X-Tenant", "blue\tgreen"),
    )


def test_limits_have_defaults_for_a_busy_platform(tmp_path):
    limits = config.load(write(tmp_path, MINIMAL)).limits

    assert limits.max_segments == 32
    assert limits.max_reassemblies_per_operator == 10_000
    assert limits.max_reassemblies == 50_000
    assert limits.max_reassembly_bytes == 64 * 1024 * 1024


def test_limits_are_read_from_their_table(tmp_path):
    text = MINIMAL + "\n[limits]\nmax_segments = 16\nmax_reassemblies = 500\n"

    limits = config.load(write(tmp_path, text)).limits

    assert (limits.max_segments, limits.max_reassemblies) == (16, 500)
    assert limits.max_reassemblies_per_operator == 10_000


@pytest.mark.parametrize(
    "key",
    [
        "max_segments",
        "max_reassemblies_per_operator",
        "max_reassemblies",
        "max_reassembly_bytes",
    ],
)
def test_a_limit_must_be_a_positive_integer(tmp_path, key):
    zero = error_for(tmp_path, MINIMAL + f"\n[limits]\n{key} = 0\n")
    text = error_for(tmp_path, MINIMAL + f'\n[limits]\n{key} = "many"\n')
    fraction = error_for(tmp_path, MINIMAL + f"\n[limits]\n{key} = 1.5\n")

    assert zero == f"limits.{key}: must be greater than 0, got 0"
    assert text.startswith(f"limits.{key}: expected an integer")
    assert fraction.startswith(f"limits.{key}: expected an integer")


def test_an_unknown_limit_is_refused(tmp_path):
    message = error_for(tmp_path, MINIMAL + "\n[limits]\nmax_segment = 8\n")

    assert message == "limits.max_segment: unknown key"


def test_bind_decoding_options_reach_the_decoder(tmp_path):
    text = MINIMAL.replace('name = "op1"', 'name = "op1"\nalphabet = "utf8"').replace(
        'mode = "transceiver"',
        'mode = "transceiver"\ngsm7_packed = true\ndecode_fallback = false\n'
        'data_coding_overrides = { "0x01" = "gsm7", "3" = "utf8" }',
    )

    options = config.load(write(tmp_path, text)).decode_options("op1-0")

    assert options.alphabet == "utf8"
    assert options.gsm7_packed is True
    assert options.fallback is False
    assert options.coding_overrides == ((1, "gsm7"), (3, "utf8"))


def test_an_override_naming_no_encoding_is_refused(tmp_path):
    text = MINIMAL.replace(
        'mode = "transceiver"', 'data_coding_overrides = { "0" = "klingon" }'
    )

    message = error_for(tmp_path, text)

    assert message.startswith("operator[0].bind[0].data_coding_overrides: ")
    assert "klingon" in message


def test_an_override_key_must_be_a_data_coding_value(tmp_path):
    text = MINIMAL.replace(
        'mode = "transceiver"', 'data_coding_overrides = { "zero" = "latin1" }'
    )

    assert error_for(tmp_path, text).startswith(
        "operator[0].bind[0].data_coding_overrides.zero: not a data_coding value"
    )


def test_a_redis_spool_is_configured_by_url_prefix_and_sentinels(tmp_path):
    text = MINIMAL.replace(
        'backend = "sqlite"',
        'backend = "redis"\nurl = "redis://10.0.0.5:6380/2"\nprefix = "p2a-eu"\n'
        'sentinels = ["10.0.0.7:26379", "10.0.0.8:26379"]\nclaim_idle = 90',
    )

    spool = config.load(write(tmp_path, text)).spool

    assert (spool.backend, spool.url, spool.prefix) == (
        "redis",
        "redis://10.0.0.5:6380/2",
        "p2a-eu",
    )
    assert spool.sentinels == (("10.0.0.7", 26379), ("10.0.0.8", 26379))
    assert (spool.sentinel_master, spool.claim_idle) == ("mymaster", 90.0)


def test_a_redis_cluster_spool_names_some_nodes_and_its_shards(tmp_path):
    text = MINIMAL.replace(
        'backend = "sqlite"',
        'backend = "redis"\nurl = "redis://:pw@10.0.0.5:6379/0"\n'
        'cluster = ["10.0.0.5:6379", "[fd00::6]:6379"]\nshards = 12',
    )

    spool = config.load(write(tmp_path, text)).spool

    assert spool.cluster == (("10.0.0.5", 6379), ("fd00::6", 6379))
    assert spool.shards == 12


@pytest.mark.parametrize(
    "line, message",
    [
        ('url = "http://127.0.0.1/0"', "spool.url: expected a redis:// URL"),
        ('cluster = ["10.0.0.5"]', r"spool.cluster\[0\]: expected \"host:port\""),
        ('cluster = ["10.0.0.5:6379"]\nshards = 0', "spool.shards: must be greater"),
        (
            'cluster = ["10.0.0.5:6379"]\nsentinels = ["10.0.0.7:26379"]',
            "spool.cluster: a Redis Cluster fails over by itself",
        ),
        (
            'cluster = ["10.0.0.5:6379"]\nurl = "redis://10.0.0.5:6379/3"',
            "spool.url: a Redis Cluster has database 0 only",
        ),
        ('url = "redis://127.0.0.1:6379/x"', "spool.url: the database must"),
        ('prefix = "{p2a}"', "spool.prefix: must be a non-empty name"),
        ('sentinels = ["10.0.0.7"]', r"spool.sentinels\[0\]: expected \"host:port\""),
        ("claim_idle = 0", "spool.claim_idle: must be greater than 0"),
    ],
)
def test_a_bad_redis_spool_key_is_named(tmp_path, line, message):
    text = MINIMAL.replace('backend = "sqlite"', f'backend = "redis"\n{line}')

    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text))


def test_the_admin_endpoint_defaults_to_loopback(tmp_path):
    admin = config.load(write(tmp_path, MINIMAL)).admin

    assert (admin.enabled, admin.address, admin.port) == (True, "127.0.0.1", 8790)


def test_an_admin_address_must_be_an_ip_address(tmp_path):
    text = MINIMAL + '\n[admin]\naddress = "localhost:80"\n'

    assert error_for(tmp_path, text).startswith("admin.address: 'localhost:80' is not")


def test_trail_is_kept_a_week_by_default(tmp_path):
    loaded = config.load(write(tmp_path, MINIMAL))

    assert loaded.trail.spool_keep == 7 * 24 * 3600


def test_trail_keep_and_enabled_are_read(tmp_path):
    kept = config.load(write(tmp_path, MINIMAL + "\n[trail]\nkeep = 3600\n"))
    off = config.load(write(tmp_path, MINIMAL + "\n[trail]\nenabled = false\n"))

    assert kept.trail.spool_keep == 3600
    assert off.trail.spool_keep is None


def test_trail_keep_must_be_positive(tmp_path):
    message = error_for(tmp_path, MINIMAL + "\n[trail]\nkeep = 0\n")

    assert "trail.keep" in message


def test_a_bind_sends_replies_with_these_defaults(tmp_path):
    loaded = config.load(write(tmp_path, MINIMAL))

    bind = loaded.operators[0].binds[0]
    assert (bind.submit_rate, bind.submit_window, bind.submit_timeout) == (
        20.0,
        10,
        30.0,
    )
    assert (bind.registered_delivery, bind.long_messages) == (1, "udh8")
    assert bind.max_reply_parts == 10
    assert loaded.outbound == config.OutboundConfig(1.0, 60.0, 3600.0, 5.0)


def test_a_transmitter_bind_is_accepted(tmp_path):
    text = MINIMAL.replace('mode = "transceiver"', 'mode = "transmitter"')

    bind = config.load(write(tmp_path, text)).operators[0].binds[0]

    assert bind.mode == "transmitter"
    assert bind.transmits


def test_the_reply_keys_of_a_bind_are_read(tmp_path):
    text = MINIMAL + (
        "submit_rate = 0\nsubmit_window = 4\nsubmit_timeout = 12\n"
        'registered_delivery = 0\nlong_messages = "sar"\nmax_reply_parts = 3\n'
        "[outbound]\nthrottle_delay = 2\nthrottle_max = 30\nretry_for = 600\n"
        "no_bind_delay = 1\n"
    )

    loaded = config.load(write(tmp_path, text))

    bind = loaded.operators[0].binds[0]
    assert (bind.submit_rate, bind.submit_window, bind.submit_timeout) == (0, 4, 12)
    assert (bind.registered_delivery, bind.long_messages) == (0, "sar")
    assert bind.max_reply_parts == 3
    assert loaded.outbound == config.OutboundConfig(2.0, 30.0, 600.0, 1.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("submit_rate = -1", "operator[0].bind[0].submit_rate: must be 0"),
        ("submit_window = 0", "operator[0].bind[0].submit_window: must be greater"),
        ("registered_delivery = 3", "operator[0].bind[0].registered_delivery: 3 is"),
        ('long_messages = "udh7"', "operator[0].bind[0].long_messages: 'udh7' is"),
        ("max_reply_parts = 256", "operator[0].bind[0].max_reply_parts: 256 is more"),
    ],
)
def test_a_bad_reply_key_of_a_bind_is_named(tmp_path, line, message):
    assert message in error_for(tmp_path, MINIMAL + line + "\n")


def test_throttle_max_below_throttle_delay_is_refused(tmp_path):
    text = MINIMAL + "[outbound]\nthrottle_delay = 10\nthrottle_max = 5\n"

    assert "outbound.throttle_max: 5 is less than throttle_delay" in error_for(
        tmp_path, text
    )


def test_the_annotated_example_file_loads(tmp_path):
    example = Path(__file__).parent.parent / "etc" / "connector.toml"
    copy = tmp_path / "connector.toml"
    copy.write_text(example.read_text())
    (tmp_path / "acme.password").write_text("secret\n")

    loaded = config.load(copy)

    assert loaded.outbound.receipt_keep == 259200
    assert loaded.conversation.idle_timeout == 1800
