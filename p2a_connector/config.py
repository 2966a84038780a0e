"""
The daemon's configuration: one TOML file, validated once into frozen classes.

Every error names the key it is about (``operator[0].bind[1].port``) and what
is wrong with it, so an operator can fix the file without reading code.

This module holds the classes, `load` and `parse` (the checks that span
sections); each section is read and checked in `p2a_connector.config_sections`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import attrs

from p2a_connector.alphabets import DecodeOptions
from p2a_connector.smpp_status import status_code

ALPHABETS = ("gsm7", "latin1", "ascii", "utf8")
BIND_MODES = ("receiver", "transceiver", "transmitter")
# Binds that can carry submit_sm.
TRANSMITTING_MODES = ("transceiver", "transmitter")
# How a long reply is carried: see p2a_connector.compose.
LONG_MESSAGES = ("udh8", "udh16", "sar", "payload")
# What one daemon process does: see p2a_connector.service.
ROLES = ("all", "receiver", "dispatcher")
# SMPP 3.4, 5.2.5 and 5.2.6: the type-of-number and numbering-plan values.
TONS = frozenset(range(7))
NPIS = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})
# Temporary statuses an SMSC is expected to retry.  ESME_RX_P_APPN is
# permanent and would make the SMSC discard the message, so it is not here.
BUSY_STATUSES = ("ESME_RX_T_APPN", "ESME_RTHROTTLED", "ESME_RMSGQFUL", "ESME_RSYSERR")


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")
# Where systemd puts the files named by LoadCredential= (systemd.exec(5)).
CREDENTIALS_VARIABLE = "CREDENTIALS_DIRECTORY"


class ConfigError(Exception):
    """The configuration file is unusable; the message says where and why."""


@attrs.frozen
class BindConfig:
    """One SMPP bind to one SMSC endpoint."""

    name: str
    operator: str
    host: str
    port: int
    system_id: str
    password: str
    mode: str = "transceiver"
    system_type: str = ""
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    tls: bool = False
    tls_verify: bool = True
    bind_timeout: float = 10.0
    enquire_link_interval: float = 30.0
    enquire_link_timeout: float = 10.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    window: int = 64
    busy_status: int = status_code("ESME_RX_T_APPN")
    unbind_timeout: float = 5.0
    max_pdu_size: int = 65536
    gsm7_packed: bool = False
    data_coding_overrides: tuple[tuple[int, str], ...] = ()
    decode_fallback: bool = True
    # Replies: submit_sm per second (0: unlimited), outstanding submit_sm,
    # seconds to wait for a submit_sm_resp, what receipts to ask for, how a
    # long reply is split and into at most how many parts.
    submit_rate: float = 20.0
    submit_window: int = 10
    submit_timeout: float = 30.0
    registered_delivery: int = 1
    long_messages: str = "udh8"
    max_reply_parts: int = 10

    @property
    def transmits(self) -> bool:
        """Whether this bind can send submit_sm (transmitter or transceiver)."""
        return self.mode in TRANSMITTING_MODES


@attrs.frozen
class OutboundConfig:
    """
    How replies are retried: the first pause of a bind after the SMSC says
    it is throttling or its queue is full (doubling up to ``throttle_max``),
    how long a reply may keep failing before it is given up, and the wait
    while its operator has no bound bind that can send.  Sent and failed
    messages are kept ``keep`` seconds (``GET /v1/messages/<id>``), and the
    SMSC's message ids ``receipt_keep`` seconds, to tie receipts to them.
    """

    throttle_delay: float = 1.0
    throttle_max: float = 60.0
    retry_for: float = 3600.0
    no_bind_delay: float = 5.0
    keep: float = 7 * 24 * 3600.0
    receipt_keep: float = 3 * 24 * 3600.0


@attrs.frozen
class OperatorConfig:
    """A mobile operator: its binds, its default webhook and text defaults."""

    name: str
    webhook: str
    binds: tuple[BindConfig, ...]
    alphabet: str = "gsm7"


@attrs.frozen
class WebhookConfig:
    """Where events go and how they are signed."""

    name: str
    url: str
    secrets: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 15.0
    concurrency: int = 8
    insecure: bool = False


@attrs.frozen
class RouteConfig:
    """Destination address (exact, or a prefix ending in ``*``) to webhook."""

    match: str
    webhook: str
    operator: str | None = None

    def matches(self, operator: str, destination: str) -> bool:
        if self.operator is not None and self.operator != operator:
            return False
        if self.match.endswith("*"):
            return destination.startswith(self.match[:-1])
        return destination == self.match


@attrs.frozen
class SpoolConfig:
    backend: str = "sqlite"
    path: str = "var/spool.db"
    max_pending: int = 100_000
    commit_interval: float = 0.002
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "p2a"
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    cluster: tuple[tuple[str, int], ...] = ()
    shards: int = 4
    claim_idle: float = 60.0
    wait_replicas: int = 0
    wait_timeout: float = 0.5


@attrs.frozen
class ReassemblyConfig:
    timeout: float = 600.0
    check_interval: float = 5.0


@attrs.frozen
class LimitsConfig:
    """
    Bounds on what the SMSCs' traffic can make the connector hold.

    Phones split a long text into a handful of segments; 32 already carry
    some 4,900 GSM characters.  A message's segments usually arrive within
    seconds, so even a busy platform keeps a few hundred reassemblies open;
    the bounds leave room for orphans piling up over ``reassembly.timeout``,
    and past them the SMSC is told to retry, so no peer can fill the disk.
    """

    max_segments: int = 32
    max_reassemblies_per_operator: int = 10_000
    max_reassemblies: int = 50_000
    max_reassembly_bytes: int = 64 * 1024 * 1024


@attrs.frozen
class ConversationConfig:
    """
    How messages are grouped: a person's messages to one number over one
    operator form a conversation while no more than ``idle_timeout`` seconds
    pass between them; a USSD session with no message for ``ussd_idle``
    seconds ends with a ``session.ended`` event.
    """

    idle_timeout: float = 1800.0
    ussd_idle: float = 120.0


@attrs.frozen
class TrailConfig:
    """
    The message trail: each event's steps, kept ``keep`` seconds (each step
    in sqlite, the whole trail after its last step in Redis).
    """

    enabled: bool = True
    keep: float = 7 * 24 * 3600.0

    @property
    def spool_keep(self) -> float | None:
        """What the spools take as ``trail_keep``: None when disabled."""
        return self.keep if self.enabled else None


@attrs.frozen
class AdminConfig:
    """The admin HTTP endpoint: /healthz, /readyz, /metrics."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 8790
    # The bearer token every path but /healthz requires; None: open.
    token: str | None = attrs.field(default=None, repr=False)


# The ports the admin endpoint may listen on, [admin] port or --admin-port;
# 0: any free one.
ADMIN_PORTS = range(65536)

# Long enough not to be guessed by trying.
MIN_ADMIN_TOKEN = 16


@attrs.frozen
class LogConfig:
    """How the daemon logs: text or JSON lines, the lowest level, where to."""

    format: str = "text"
    level: str = "info"
    file: str | None = None


@attrs.frozen
class Config:
    spool: SpoolConfig
    reassembly: ReassemblyConfig
    webhooks: tuple[WebhookConfig, ...]
    operators: tuple[OperatorConfig, ...]
    routes: tuple[RouteConfig, ...] = ()
    shutdown_timeout: float = 10.0
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    trail: TrailConfig = TrailConfig()
    conversation: ConversationConfig = ConversationConfig()
    outbound: OutboundConfig = OutboundConfig()

    def webhook(self, name: str) -> WebhookConfig:
        for webhook in self.webhooks:
            if webhook.name == name:
                return webhook
        raise KeyError(name)

    def operator(self, name: str) -> OperatorConfig:
        for operator in self.operators:
            if operator.name == name:
                return operator
        raise KeyError(name)

    def decode_options(self, bind_name: str) -> DecodeOptions:
        """How text from this bind is read; the defaults for a bind now gone."""
        for operator in self.operators:
            for bind in operator.binds:
                if bind.name == bind_name:
                    return DecodeOptions(
                        alphabet=operator.alphabet,
                        gsm7_packed=bind.gsm7_packed,
                        coding_overrides=bind.data_coding_overrides,
                        fallback=bind.decode_fallback,
                    )
        return DecodeOptions()

    def route(self, operator: str, destination: str) -> str:
        """The webhook name for a message to ``destination`` via ``operator``."""
        exact = [r for r in self.routes if not r.match.endswith("*")]
        prefixes = sorted(
            (r for r in self.routes if r.match.endswith("*")),
            key=lambda r: len(r.match),
            reverse=True,
        )
        for route in [*exact, *prefixes]:
            if route.matches(operator, destination):
                return route.webhook
        return self.operator(operator).webhook


# --- loading -------------------------------------------------------------


def load(path: str | Path, *, admin_port: int | None = None) -> Config:
    """
    Read and validate a configuration file; raise ConfigError if unusable.

    :param admin_port: replaces ``[admin] port`` (twistd's ``--admin-port``,
        so that processes on one host sharing a file listen apart).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
    config = parse(raw, base=path.parent)
    if admin_port is None:
        return config
    return attrs.evolve(config, admin=attrs.evolve(config.admin, port=admin_port))


def parse(raw: dict, base: Path = Path(".")) -> Config:
    """Validate an already-parsed TOML document."""
    # Imported here: the sections build this module's classes, so they import
    # it, and a module-level import would be circular.
    from p2a_connector.config_sections import (
        _admin,
        _conversation,
        _limits,
        _log,
        _operator,
        _outbound,
        _reassembly,
        _route,
        _Section,
        _spool,
        _trail,
        _webhook,
    )

    root = _Section(raw, "", base)
    spool = _spool(root.table("spool"))
    reassembly = _reassembly(root.table("reassembly"))
    limits = _limits(root.table("limits"))
    webhooks = tuple(_webhook(s) for s in root.tables("webhook"))
    operators = tuple(_operator(s) for s in root.tables("operator"))
    routes = tuple(_route(s) for s in root.tables("route"))
    admin = _admin(root.table("admin"))
    log = _log(root.table("log"))
    trail = _trail(root.table("trail"))
    conversation = _conversation(root.table("conversation"))
    outbound = _outbound(root.table("outbound"))
    shutdown_timeout = root.positive("shutdown_timeout", float, 10.0)
    root.finish()

    if not webhooks:
        raise ConfigError("webhook: at least one [[webhook]] is required")
    if not operators:
        raise ConfigError("operator: at least one [[operator]] is required")
    _unique("webhook", [w.name for w in webhooks])
    _unique("operator", [o.name for o in operators])
    _unique("operator.bind", [b.name for o in operators for b in o.binds])

    names = {w.name for w in webhooks}
    for index, operator in enumerate(operators):
        if operator.webhook not in names:
            raise ConfigError(
                f"operator[{index}].webhook: no [[webhook]] named {operator.webhook!r}"
            )
    operator_names = {o.name for o in operators}
    for index, route in enumerate(routes):
        if route.webhook not in names:
            raise ConfigError(
                f"route[{index}].webhook: no [[webhook]] named {route.webhook!r}"
            )
        if route.operator is not None and route.operator not in operator_names:
            raise ConfigError(
                f"route[{index}].operator: no [[operator]] named {route.operator!r}"
            )

    return Config(
        spool=spool,
        reassembly=reassembly,
        webhooks=webhooks,
        operators=operators,
        routes=routes,
        shutdown_timeout=shutdown_timeout,
        log=log,
        trail=trail,
        conversation=conversation,
        limits=limits,
        admin=admin,
        outbound=outbound,
    )


def _unique(where: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        seen.add(name)


# RedisSpool's default per-command timeout; WAIT must end within it.
REDIS_COMMAND_TIMEOUT = 1.0


def parse_redis_url(url: str) -> tuple[str, int, int, str | None, str | None]:
    """host, port, database, username and password of a ``redis://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError("expected a redis:// URL")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the port is not a number") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number, got {path!r}")
    if not parts.hostname:
        raise ValueError("the host is missing")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, int(path or 0), username, password
