"""
The sections of the configuration file, read and checked: `_Section` (a TOML
table that knows where it is, for precise errors, and which of its keys were
used) and one validator per section, each making one frozen class of
`p2a_connector.config` from its table.  `p2a_connector.config.parse` calls
them and checks what spans sections.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from p2a_connector.alphabets import DecodeOptions
from p2a_connector.config import (
    ADMIN_PORTS,
    ALPHABETS,
    BIND_MODES,
    BUSY_STATUSES,
    CREDENTIALS_VARIABLE,
    LOG_FORMATS,
    LOG_LEVELS,
    LONG_MESSAGES,
    MIN_ADMIN_TOKEN,
    NPIS,
    REDIS_COMMAND_TIMEOUT,
    TONS,
    AdminConfig,
    BindConfig,
    ConfigError,
    ConversationConfig,
    LimitsConfig,
    LogConfig,
    OperatorConfig,
    OutboundConfig,
    ReassemblyConfig,
    RouteConfig,
    SpoolConfig,
    TrailConfig,
    WebhookConfig,
    parse_redis_url,
)
from p2a_connector.signing import RESERVED_HEADERS
from p2a_connector.smpp_status import status_code

# RFC 9110: a header name is a token; a value is visible ASCII or text
# beyond it, with spaces and tabs between, and no line break.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


class _Section:
    """A TOML table with its dotted location, for precise error messages."""

    def __init__(self, data: Any, where: str, base: Path):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.data = dict(data)
        self.where = where
        self.base = base
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple, default: Any = attrs.NOTHING) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is attrs.NOTHING:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {_kind_name(kinds)}")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.key(name)}: expected {_kind_name(kinds)}, "
                f"got {type(value).__name__} {value!r}"
            )
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            raise ConfigError(f"{self.key(name)}: must be greater than 0, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}"
            )
        return value

    def secret(
        self, name: str, file_key: str, credential_key: str | None = None
    ) -> str:
        """
        An inline secret, or the stripped contents of the file named, or (when
        ``credential_key`` is given) of the systemd credential named.
        """
        inline = self.get(name, str, None)
        path = self.get(file_key, str, None)
        credential = None
        if credential_key is not None:
            credential = self.get(credential_key, str, None)
        values = {name: inline, file_key: path, credential_key: credential}
        given = [key for key, value in values.items() if value is not None]
        if len(given) > 1 and credential_key is None:
            raise ConfigError(f"{self.key(name)}: give {name} or {file_key}, not both")
        if len(given) > 1:
            raise ConfigError(
                f"{self.key(name)}: give one of {name}, {file_key} or "
                f"{credential_key}, not {' and '.join(given)}"
            )
        if path is not None:
            return _read_secret(self.key(file_key), self.base / path)
        if credential is not None:
            return _read_credential(self.key(credential_key), credential, file_key)
        if inline is None:
            raise ConfigError(f"{self.key(name)}: required key is missing")
        return inline

    def tables(self, name: str) -> list[_Section]:
        self.used.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(
                f"{self.key(name)}: expected an array of tables [[{name}]]"
            )
        return [
            _Section(item, f"{self.key(name)}[{index}]", self.base)
            for index, item in enumerate(value)
        ]

    def table(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name, {}), self.key(name), self.base)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _defaults(cls: type) -> dict[str, Any]:
    return {name: f.default for name, f in attrs.fields_dict(cls).items()}


def _kind_name(kinds: tuple) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }
    names.update({list: "an array", dict: "a table"})
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _read_secret(key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def _read_credential(key: str, name: str, file_key: str) -> str:
    """The stripped contents of the systemd credential ``name``."""
    directory = os.environ.get(CREDENTIALS_VARIABLE)
    if not directory:
        raise ConfigError(
            f"{key}: the credential {name!r} is only available when systemd "
            f"passes credentials (LoadCredential=), and ${CREDENTIALS_VARIABLE} "
            f"is not set; use {file_key} otherwise"
        )
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(
            f"{key}: {name!r} is not a credential name (the ID of a "
            "LoadCredential= line, without slashes)"
        )
    path = Path(directory) / name
    if not path.is_file():
        raise ConfigError(
            f"{key}: no credential {name!r} in ${CREDENTIALS_VARIABLE} "
            f"({directory}); add LoadCredential={name}:/path/to/file to the unit"
        )
    return _read_secret(key, path)


def _spool(s: _Section) -> SpoolConfig:
    sd = _defaults(SpoolConfig)
    backend = s.choice("backend", ("sqlite", "redis"), "sqlite")
    path = s.get("path", str, sd["path"])
    url = s.get("url", str, sd["url"])
    try:
        parse_redis_url(url)
    except ValueError as e:
        raise ConfigError(
            f"{s.key('url')}: {e}: {url!r}; expected redis://host:port/db"
        ) from None
    prefix = s.get("prefix", str, sd["prefix"])
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(
            f"{s.key('prefix')}: must be a non-empty name without braces, "
            f"got {prefix!r}"
        )
    config = SpoolConfig(
        backend=backend,
        path=path,
        max_pending=s.positive("max_pending", int, sd["max_pending"]),
        commit_interval=s.get("commit_interval", float, sd["commit_interval"]),
        url=url,
        prefix=prefix,
        sentinels=_addresses(s, "sentinels"),
        sentinel_master=s.get("sentinel_master", str, sd["sentinel_master"]),
        cluster=_addresses(s, "cluster"),
        shards=s.positive("shards", int, sd["shards"]),
        claim_idle=s.positive("claim_idle", float, sd["claim_idle"]),
        wait_replicas=s.get("wait_replicas", int, sd["wait_replicas"]),
        wait_timeout=s.positive("wait_timeout", float, sd["wait_timeout"]),
    )
    if config.cluster and config.sentinels:
        raise ConfigError(
            f"{s.key('cluster')}: a Redis Cluster fails over by itself; give "
            "either spool.cluster or spool.sentinels, not both"
        )
    if config.cluster and parse_redis_url(url)[2] != 0:
        raise ConfigError(
            f"{s.key('url')}: a Redis Cluster has database 0 only; got {url!r}"
        )
    if config.wait_replicas < 0:
        raise ConfigError(
            f"{s.key('wait_replicas')}: {config.wait_replicas} is not a number "
            "of replicas (0: do not wait)"
        )
    if config.wait_timeout >= REDIS_COMMAND_TIMEOUT:
        raise ConfigError(
            f"{s.key('wait_timeout')}: {config.wait_timeout:g} s must be below "
            f"{REDIS_COMMAND_TIMEOUT:g} s, the most any Redis command may take"
        )
    s.finish()
    return config


def _addresses(s: _Section, name: str) -> tuple[tuple[str, int], ...]:
    """A list of "host:port" strings."""
    addresses = []
    for index, address in enumerate(s.get(name, list, [])):
        key = f"{s.key(name)}[{index}]"
        if not isinstance(address, str):
            raise ConfigError(f'{key}: expected a string "host:port"')
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'{key}: expected "host:port", got {address!r}')
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def _reassembly(s: _Section) -> ReassemblyConfig:
    rd = _defaults(ReassemblyConfig)
    config = ReassemblyConfig(
        timeout=s.positive("timeout", float, rd["timeout"]),
        check_interval=s.positive("check_interval", float, 5.0),
    )
    s.finish()
    return config


def _conversation(s: _Section) -> ConversationConfig:
    cd = _defaults(ConversationConfig)
    config = ConversationConfig(
        idle_timeout=s.positive("idle_timeout", float, cd["idle_timeout"]),
        ussd_idle=s.positive("ussd_idle", float, cd["ussd_idle"]),
    )
    s.finish()
    return config


def _trail(s: _Section) -> TrailConfig:
    config = TrailConfig(
        enabled=s.get("enabled", bool, True),
        keep=s.positive("keep", float, _defaults(TrailConfig)["keep"]),
    )
    s.finish()
    return config


def _outbound(s: _Section) -> OutboundConfig:
    od = _defaults(OutboundConfig)
    config = OutboundConfig(**{name: s.positive(name, float, od[name]) for name in od})
    if config.throttle_max < config.throttle_delay:
        raise ConfigError(
            f"{s.key('throttle_max')}: {config.throttle_max:g} is less than "
            f"throttle_delay ({config.throttle_delay:g}); the pause only grows"
        )
    s.finish()
    return config


def _limits(s: _Section) -> LimitsConfig:
    ld = _defaults(LimitsConfig)
    config = LimitsConfig(**{name: s.positive(name, int, ld[name]) for name in ld})
    s.finish()
    return config


def _webhook(s: _Section) -> WebhookConfig:
    name = s.get("name", str)
    url = s.get("url", str)
    insecure = s.get("insecure", bool, False)
    _check_url(s.key("url"), url, insecure)

    secrets = list(s.get("secrets", list, []))
    for index, path in enumerate(s.get("secret_files", list, [])):
        if not isinstance(path, str):
            raise ConfigError(f"{s.key('secret_files')}[{index}]: expected a string")
        secrets.append(_read_secret(f"{s.key('secret_files')}[{index}]", s.base / path))
    for index, credential in enumerate(s.get("secret_credentials", list, [])):
        key = f"{s.key('secret_credentials')}[{index}]"
        if not isinstance(credential, str):
            raise ConfigError(f"{key}: expected a string, the name of a credential")
        secrets.append(_read_credential(key, credential, "secret_files"))
    if not secrets:
        raise ConfigError(f"{s.key('secrets')}: at least one secret is required")
    for index, secret in enumerate(secrets):
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise ConfigError(
                f"{s.key('secrets')}[{index}]: a secret must be a string "
                "in the whsec_ form (whsec_ followed by base64)"
            )
        _check_secret(f"{s.key('secrets')}[{index}]", secret)

    headers = s.get("headers", dict, {})
    for header, value in headers.items():
        if not isinstance(value, str):
            raise ConfigError(f"{s.key('headers')}.{header}: expected a string")
        if header.lower() in RESERVED_HEADERS:
            raise ConfigError(
                f"{s.key('headers')}.{header}: set by the connector itself; "
                "remove it from the configuration"
            )
        if not _HEADER_NAME.fullmatch(header):
            raise ConfigError(
                f"{s.key('headers')}.{header}: not a header name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(
                f"{s.key('headers')}.{header}: a header value must be printable "
                "text on one line"
            )

    wd = _defaults(WebhookConfig)
    config = WebhookConfig(
        name=name,
        url=url,
        secrets=tuple(secrets),
        headers=tuple(sorted(headers.items())),
        timeout=s.positive("timeout", float, wd["timeout"]),
        concurrency=s.positive("concurrency", int, wd["concurrency"]),
        insecure=insecure,
    )
    s.finish()
    return config


def _check_secret(key: str, secret: str) -> None:
    import base64
    import binascii

    try:
        raw = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ConfigError(f"{key}: the part after whsec_ is not valid base64") from None
    if len(raw) < 16:
        raise ConfigError(f"{key}: the secret is shorter than 16 bytes")


def _check_url(key: str, url: str, insecure: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {url!r} is not an http:// or https:// URL")
    if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{key}: plain http:// is allowed only to loopback addresses; "
            "use https:// or set insecure = true for this webhook"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _operator(s: _Section) -> OperatorConfig:
    name = s.get("name", str)
    webhook = s.get("webhook", str)
    alphabet = s.choice("alphabet", ALPHABETS, "gsm7")
    binds = tuple(_bind(b, name, index) for index, b in enumerate(s.tables("bind")))
    if not binds:
        raise ConfigError(
            f"{s.key('bind')}: at least one [[operator.bind]] is required"
        )
    s.finish()
    return OperatorConfig(name=name, webhook=webhook, binds=binds, alphabet=alphabet)


def _bind(s: _Section, operator: str, index: int) -> BindConfig:
    port = s.get("port", int)
    if not 0 < port < 65536:
        raise ConfigError(f"{s.key('port')}: {port} is not a TCP port")
    system_id = s.get("system_id", str)
    if len(system_id) > 15:
        raise ConfigError(f"{s.key('system_id')}: longer than SMPP's 15 characters")
    password = s.secret("password", "password_file", "password_credential")
    if len(password) > 8:
        raise ConfigError(f"{s.key('password')}: longer than SMPP's 8 characters")
    d = _defaults(BindConfig)
    busy = s.choice("busy_status", BUSY_STATUSES, "ESME_RX_T_APPN")
    addr_ton = s.get("addr_ton", int, 0)
    if addr_ton not in TONS:
        raise ConfigError(
            f"{s.key('addr_ton')}: {addr_ton} is not an SMPP 3.4 TON (0-6)"
        )
    addr_npi = s.get("addr_npi", int, 0)
    if addr_npi not in NPIS:
        raise ConfigError(
            f"{s.key('addr_npi')}: {addr_npi} is not an SMPP 3.4 NPI "
            f"({', '.join(map(str, sorted(NPIS)))})"
        )
    config = BindConfig(
        name=s.get("name", str, f"{operator}-{index}"),
        operator=operator,
        host=s.get("host", str),
        port=port,
        system_id=system_id,
        password=password,
        mode=s.choice("mode", BIND_MODES, d["mode"]),
        system_type=s.get("system_type", str, ""),
        addr_ton=addr_ton,
        addr_npi=addr_npi,
        address_range=s.get("address_range", str, ""),
        tls=s.get("tls", bool, False),
        tls_verify=s.get("tls_verify", bool, True),
        bind_timeout=s.positive("bind_timeout", float, d["bind_timeout"]),
        enquire_link_interval=s.positive(
            "enquire_link_interval", float, d["enquire_link_interval"]
        ),
        enquire_link_timeout=s.positive(
            "enquire_link_timeout", float, d["enquire_link_timeout"]
        ),
        reconnect_initial=s.positive(
            "reconnect_initial", float, d["reconnect_initial"]
        ),
        reconnect_max=s.positive("reconnect_max", float, d["reconnect_max"]),
        window=s.positive("window", int, d["window"]),
        busy_status=status_code(busy),
        unbind_timeout=s.positive("unbind_timeout", float, d["unbind_timeout"]),
        max_pdu_size=s.positive("max_pdu_size", int, d["max_pdu_size"]),
        gsm7_packed=s.get("gsm7_packed", bool, False),
        data_coding_overrides=_overrides(s),
        decode_fallback=s.get("decode_fallback", bool, True),
        **_submit_settings(s, d),
    )
    try:
        DecodeOptions(coding_overrides=config.data_coding_overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{s.key('data_coding_overrides')}: {e}") from None
    if config.max_pdu_size < 65536:
        raise ConfigError(f"{s.key('max_pdu_size')}: must be at least 65536")
    s.finish()
    return config


def _submit_settings(s: _Section, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of a bind that shape the submit_sm it sends."""
    rate = s.get("submit_rate", float, d["submit_rate"])
    if rate < 0:
        raise ConfigError(
            f"{s.key('submit_rate')}: must be 0 (unlimited) or more, got {rate:g}"
        )
    registered_delivery = s.get("registered_delivery", int, d["registered_delivery"])
    if registered_delivery not in (0, 1, 2):
        raise ConfigError(
            f"{s.key('registered_delivery')}: {registered_delivery} is not 0 (no "
            "receipt), 1 (a receipt always) or 2 (a receipt on failure)"
        )
    max_parts = s.positive("max_reply_parts", int, d["max_reply_parts"])
    if max_parts > 255:
        raise ConfigError(
            f"{s.key('max_reply_parts')}: {max_parts} is more than the 255 parts "
            "a concatenated message can have"
        )
    return {
        "submit_rate": rate,
        "submit_window": s.positive("submit_window", int, d["submit_window"]),
        "submit_timeout": s.positive("submit_timeout", float, d["submit_timeout"]),
        "registered_delivery": registered_delivery,
        "long_messages": s.choice("long_messages", LONG_MESSAGES, d["long_messages"]),
        "max_reply_parts": max_parts,
    }


def _overrides(s: _Section) -> tuple[tuple[int, str], ...]:
    table = s.get("data_coding_overrides", dict, {})
    pairs = []
    for key, name in table.items():
        where = f"{s.key('data_coding_overrides')}.{key}"
        try:
            value = int(key, 0)
        except ValueError:
            raise ConfigError(
                f'{where}: not a data_coding value; write it as "0" or "0x08"'
            ) from None
        if not isinstance(name, str):
            raise ConfigError(f"{where}: expected an encoding name")
        pairs.append((value, name))
    return tuple(sorted(pairs))


def _admin(s: _Section) -> AdminConfig:
    port = s.get("port", int, 8790)
    if port not in ADMIN_PORTS:
        raise ConfigError(
            f"{s.key('port')}: {port} is not a TCP port (0: any free one)"
        )
    address = s.get("address", str, "127.0.0.1")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(
            f"{s.key('address')}: {address!r} is not an IP address"
        ) from None
    config = AdminConfig(
        enabled=s.get("enabled", bool, True),
        address=address,
        port=port,
        token=_admin_token(s),
    )
    s.finish()
    return config


def _admin_token(s: _Section) -> str | None:
    if not {"token", "token_file", "token_credential"} & set(s.data):
        return None
    token = s.secret("token", "token_file", "token_credential")
    given = [k for k in ("token_file", "token_credential") if k in s.data]
    key = s.key(given[0] if given else "token")
    if len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError(
            f"{key}: the token has {len(token)} characters, fewer than "
            f"{MIN_ADMIN_TOKEN}; use a random one, such as the output of "
            "`openssl rand -hex 32`"
        )
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(
            f"{key}: the token must be printable ASCII without spaces, as it "
            "is sent in an Authorization header"
        )
    return token


def _log(s: _Section) -> LogConfig:
    file = s.get("file", str, None)
    if file is not None and not file.strip():
        raise ConfigError(
            f"{s.key('file')}: empty; remove the key to log to standard output"
        )
    config = LogConfig(
        format=s.choice("format", LOG_FORMATS, "text"),
        level=s.choice("level", LOG_LEVELS, "info"),
        file=file,
    )
    s.finish()
    return config


def _route(s: _Section) -> RouteConfig:
    match = s.get("match", str)
    if "*" in match[:-1]:
        raise ConfigError(f"{s.key('match')}: '*' may only end a prefix, as in '4477*'")
    config = RouteConfig(
        match=match,
        webhook=s.get("webhook", str),
        operator=s.get("operator", str, None),
    )
    s.finish()
    return config
