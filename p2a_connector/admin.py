"""
The admin HTTP endpoint: liveness, readiness and Prometheus metrics.

``/healthz`` answers while the process runs.  ``/readyz`` answers 200 when
every operator has at least one bound bind and the spool answers a read,
503 otherwise, with a JSON body saying which binds are down and whether the
spool answered.  ``/metrics`` is the Prometheus text format, read from the
daemon's own state at scrape time.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

SPOOL_CHECK_TIMEOUT = 2.0


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


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"


class _Ready(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, connector):
        super().__init__()
        self.connector = connector

    def render_GET(self, request: Request):
        d = ensureDeferred(self._answer(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        down = [
            service.bind.name
            for service in self.connector.binds
            if service.state != "bound"
        ]
        bound_operators = {
            service.bind.operator
            for service in self.connector.binds
            if service.state == "bound"
        }
        operators = [operator.name for operator in self.connector.config.operators]
        unbound_operators = [
            name
            for name in operators
            if name not in bound_operators and self.connector.role != "dispatcher"
        ]
        spool_ok = await self._spool_answers()

        ready = spool_ok and not unbound_operators
        body = {
            "ready": ready,
            "spool": "ok" if spool_ok else "unreachable",
            "operators_without_a_bound_bind": unbound_operators,
            "binds_down": down,
        }
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(body).encode())
        request.finish()

    async def _spool_answers(self) -> bool:
        try:
            await self.connector.spool.next_due().addTimeout(
                SPOOL_CHECK_TIMEOUT, self.connector.reactor
            )
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    def _failed(self, failure, request: Request) -> None:
        self.log.failure("readiness check failed", failure)
        if not request.finished:
            request.setResponseCode(500)
            request.finish()


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
    root = Resource()
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(connector))
    root.putChild(b"metrics", _Metrics(registry))
    return root
