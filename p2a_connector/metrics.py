"""
The daemon's Prometheus counters and the webhook latency histogram.

One `Metrics` belongs to one Connector and owns its own registry, never
prometheus_client's global one, so several connectors in one process (as in
the tests) count apart.  The admin endpoint serves that registry next to the
gauges it reads at scrape time.

The hot paths (a PDU read, a response written, a post answered) hold a
`BindMetrics` or `WebhookMetrics` that caches the labelled children, so
counting costs a dict lookup and an ``inc()``.  Label values that come from
the SMSC are bounded: a command_id or command_status without an SMPP 3.4
name is counted as ``unknown``, so a peer sending garbage cannot create
series without end.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from smpp.pdu import constants

# Webhook answers take milliseconds on a LAN and seconds across the internet;
# the top bucket is the default webhook timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)

# Where the spool can fail, as the ``operation`` label of spool errors.
SPOOL_OPERATIONS = ("store", "expire", "due", "delivered", "retry", "dead")

ATTEMPT_OUTCOMES = ("delivered", "retry", "dead")

BIND_OUTCOMES = ("bound", "refused", "failed")

UNKNOWN = "unknown"

_COMMANDS = constants.command_id_value_map
_STATUSES = constants.command_status_value_map


def command_label(command_id: int) -> str:
    """The SMPP name of a command_id, or ``unknown``."""
    return _COMMANDS.get(command_id, UNKNOWN)


def status_label(command_status: int) -> str:
    """The SMPP name of a command_status, or ``unknown``."""
    entry = _STATUSES.get(command_status)
    return entry["name"] if entry else UNKNOWN


class Metrics:
    """Every counter and histogram of one connector, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.pdus_received = Counter(
            "p2a_pdus_received_total",
            "PDUs read from an SMSC, by command and their own command_status.",
            ["operator", "bind", "command", "status"],
            registry=registry,
        )
        self.responses_sent = Counter(
            "p2a_responses_sent_total",
            "deliver_sm_resp, data_sm_resp and generic_nack sent, by status.",
            ["operator", "bind", "command", "status"],
            registry=registry,
        )
        self.submits = Counter(
            "p2a_submits_total",
            "submit_sm answered by the SMSC, by command_status, or timeout when "
            "no submit_sm_resp came in time.",
            ["operator", "bind", "status"],
            registry=registry,
        )
        self.binds = Counter(
            "p2a_binds_total",
            "Bind attempts: bound, refused by the SMSC, or failed otherwise.",
            ["operator", "bind", "outcome"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "p2a_webhook_attempts_total",
            "Webhook posts by recorded outcome: delivered, retry or dead.",
            ["webhook", "outcome"],
            registry=registry,
        )
        self.webhook_responses = Counter(
            "p2a_webhook_responses_total",
            "Webhook answers by HTTP status, or timeout / error for none.",
            ["webhook", "code"],
            registry=registry,
        )
        self.webhook_latency = Histogram(
            "p2a_webhook_latency_seconds",
            "Seconds from sending a webhook post to its response or failure.",
            ["webhook"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "p2a_dead_letters_total",
            "Events moved to the dead letters.",
            ["webhook"],
            registry=registry,
        )
        spool_errors = Counter(
            "p2a_spool_errors_total",
            "Spool failures, by the operation that failed.",
            ["operation"],
            registry=registry,
        )
        self.spool_errors = {
            operation: spool_errors.labels(operation) for operation in SPOOL_OPERATIONS
        }
        self.wakeups = Counter(
            "p2a_wakeups_total",
            "Wake-ups a dispatcher process heard: a receiver's store naming "
            "one of its webhooks (Redis Pub/Sub).",
            registry=registry,
        )
        self._spool_refusals = Counter(
            "p2a_spool_refusals_total",
            "MO PDUs answered with the busy status because a spool limit was "
            "reached, by the limit's name.",
            ["operator", "limit"],
            registry=registry,
        )
        self._refusals: dict[tuple[str, str], Counter] = {}

    def spool_refused(self, operator: str, limit: str) -> None:
        """One PDU refused for ``limit`` (``max_pending``, ``max_reassemblies``...)."""
        key = (operator, limit)
        child = self._refusals.get(key)
        if child is None:
            child = self._refusals[key] = self._spool_refusals.labels(operator, limit)
        child.inc()

    def bind(self, operator: str, bind: str) -> BindMetrics:
        """The counters of one bind."""
        return BindMetrics(self, operator, bind)

    def webhook(self, name: str) -> WebhookMetrics:
        """The counters and the histogram of one webhook."""
        return WebhookMetrics(self, name)


class BindMetrics:
    """One bind's PDU, response and bind counters, children cached."""

    def __init__(self, metrics: Metrics, operator: str, bind: str):
        self._metrics = metrics
        self._labels = (operator, bind)
        self._received: dict[tuple[int, int], Counter] = {}
        self._sent: dict[tuple[int, int], Counter] = {}
        self._submits: dict[int | str, Counter] = {}
        self.binds = {
            outcome: metrics.binds.labels(operator, bind, outcome)
            for outcome in BIND_OUTCOMES
        }

    def received(self, command_id: int, command_status: int) -> None:
        """One PDU read from the SMSC."""
        child = self._received.get((command_id, command_status))
        if child is None:
            child = self._child(
                self._metrics.pdus_received, self._received, command_id, command_status
            )
        child.inc()

    def submitted(self, outcome: int | str) -> None:
        """
        One submit_sm ended: answered with the command_status ``outcome``, or
        ``timeout``.
        """
        child = self._submits.get(outcome)
        if child is None:
            label = outcome if isinstance(outcome, str) else status_label(outcome)
            child = self._metrics.submits.labels(*self._labels, label)
            if label != UNKNOWN:
                self._submits[outcome] = child
        child.inc()

    def sent(self, command_id: int, command_status: int) -> None:
        """One response (or generic_nack) written to the SMSC."""
        child = self._sent.get((command_id, command_status))
        if child is None:
            child = self._child(
                self._metrics.responses_sent, self._sent, command_id, command_status
            )
        child.inc()

    def _child(
        self,
        counter: Counter,
        cache: dict[tuple[int, int], Counter],
        command_id: int,
        command_status: int,
    ) -> Counter:
        command = command_label(command_id)
        status = status_label(command_status)
        child = counter.labels(*self._labels, command, status)
        # Unnamed values all share the ``unknown`` child; caching each raw
        # value would let a peer grow the cache without bound.
        if command != UNKNOWN and status != UNKNOWN:
            cache[(command_id, command_status)] = child
        return child


class WebhookMetrics:
    """One webhook's attempt, response, latency and dead-letter series."""

    def __init__(self, metrics: Metrics, name: str):
        self._responses = metrics.webhook_responses
        self._name = name
        self._codes: dict[int | str, Counter] = {}
        self.attempts = {
            outcome: metrics.webhook_attempts.labels(name, outcome)
            for outcome in ATTEMPT_OUTCOMES
        }
        self.latency = metrics.webhook_latency.labels(name)
        self.dead_letters = metrics.dead_letters.labels(name)

    def answered(self, code: int | str, seconds: float) -> None:
        """
        A post ended after ``seconds``: with an HTTP status ``code``, or
        ``timeout`` or ``error`` when no response came.
        """
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._responses.labels(self._name, str(code))
        child.inc()
        self.latency.observe(seconds)
