"""
The admin HTTP endpoint: liveness, readiness, status, message trails and
Prometheus metrics.

``/healthz`` answers while the process runs.  ``/readyz`` answers 200 when
every operator has at least one bound bind and the spool answers a read,
503 otherwise, with a JSON body saying which binds are down and whether the
spool answered.  ``/status`` and ``/trail/<event id>`` are JSON too
(`p2a_connector.status`); ``/v1/messages`` is the outbound API
(`p2a_connector.api`).  ``/metrics`` is the Prometheus text format: gauges read
from the daemon's own state at scrape time, and the counters and histograms
of `p2a_connector.metrics`.  With ``[admin] token`` set, every path but
``/healthz`` needs it as a bearer token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.web.resource import Resource
from twisted.web.server import Request

from p2a_connector import api, status
from p2a_connector.bearer import BearerGate


class _Collector:
    """Gauges taken from the connector when Prometheus scrapes."""

    def __init__(self, connector):
        self.connector = connector

    def collect(self):
        connector = self.connector
        bind_up = GaugeMetricFamily(
            "p2a_bind_up",
            "1 when the bind is bound to its SMSC, else 0.",
            labels=["operator", "bind"],
        )
        for service in connector.binds:
            bind = service.bind
            bind_up.add_metric(
                [bind.operator, bind.name], float(service.state == "bound")
            )
        yield bind_up

        yield GaugeMetricFamily(
            "p2a_events_pending",
            "Events stored and not yet delivered or dead-lettered.",
            value=connector.spool.pending(),
        )
        reassemblies = connector.spool.reassemblies()
        yield GaugeMetricFamily(
            "p2a_reassemblies_open",
            "Messages waiting for more segments.",
            value=reassemblies.count,
        )
        yield GaugeMetricFamily(
            "p2a_reassembly_bytes",
            "Bytes held by messages waiting for more segments.",
            value=reassemblies.bytes,
        )
        yield GaugeMetricFamily(
            "p2a_outbound_queued",
            "Replies and outbound API messages stored and not yet sent.",
            value=connector.spool.outbound_pending(),
        )


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        return generate_latest(self.registry)


def admin_resource(connector) -> Resource:
    """The admin endpoint's resource tree for one connector."""
    registry = CollectorRegistry()
    registry.register(_Collector(connector))
    # The connector's counters and histograms, served with the gauges.
    registry.register(connector.metrics.registry)
    root = Resource()
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", status.ReadyResource(connector))
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"status", status.StatusResource(connector))
    root.putChild(b"trail", status.TrailResource(connector))
    root.putChild(b"v1", api.api_resource(connector))
    token = connector.config.admin.token
    if token is not None:
        return BearerGate(root, token, open_children=[b"healthz"])
    return root
