"""Istio's TCP metrics (docs/operations.md, Metrics) in a Prometheus registry of the node's own."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, Counter, Gauge, ProcessCollector, generate_latest

from meshcore.node.record import LABEL_NAMES, ConnectionRecord


class NodeMetrics:
    def __init__(self, version: str):
        disable_created_metrics()             # ztunnel exports no *_created series
        self.registry = CollectorRegistry()
        r = self.registry
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened", LABEL_NAMES, registry=r)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed", LABEL_NAMES, registry=r)
        self.failed = Counter("istio_tcp_connections_failed", "TCP connections that failed or were refused",
                              LABEL_NAMES, registry=r)
        self.received = Counter("istio_tcp_received_bytes", "Bytes received from the connection's client",
                                LABEL_NAMES, registry=r)
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent to the connection's client",
                            LABEL_NAMES, registry=r)
        self.sockets = Gauge("istio_tcp_sockets_open", "Proxied TCP connections open now", ("reporter",),
                             registry=r)
        Gauge("istio_build", "meshcore build", ("component", "tag"), registry=r).labels("ztunnel", version).set(1)
        self.config_reloads = Counter("meshcore_config_reloads", "Configuration loads by outcome", ("outcome",),
                                      registry=r)
        # ztunnel's xDS metrics (istiod's delta ADS stream)
        self.xds_terminations = Counter("istio_xds_connection_terminations",
                                        "Streams to the xDS server that ended, by reason", ("reason",), registry=r)
        self.xds_messages = Counter("istio_xds_message", "xDS responses received, by type", ("url",), registry=r)
        self.xds_bytes = Counter("istio_xds_message_bytes", "Bytes of xDS resources received, by type", ("url",),
                                 registry=r)
        ProcessCollector(registry=r)          # process_open_fds, process_max_fds, memory, CPU

    def opened_connection(self, record: ConnectionRecord) -> None:
        self.opened.labels(**record.labels()).inc()
        self.sockets.labels(record.reporter).inc()

    def closed_connection(self, record: ConnectionRecord) -> None:
        labels = record.labels()
        self.closed.labels(**labels).inc()
        self.received.labels(**labels).inc(record.bytes_recv)
        self.sent.labels(**labels).inc(record.bytes_sent)
        self.sockets.labels(record.reporter).dec()

    def failed_connection(self, record: ConnectionRecord) -> None:
        self.failed.labels(**record.labels()).inc()

    def xds_message(self, type_url: str, nbytes: int) -> None:
        self.xds_messages.labels(type_url).inc()
        self.xds_bytes.labels(type_url).inc(nbytes)

    def xds_terminated(self, reason: str) -> None:
        self.xds_terminations.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
