"""What each proxied connection reports, once: Istio's TCP metrics and one access-log
line (ztunnel's shapes, see metrics.py and logs.py)."""
from __future__ import annotations

from meshcore.node import logs
from meshcore.node.metrics import NodeMetrics
from meshcore.node.record import ConnectionRecord


class Telemetry:
    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def opened(self, record: ConnectionRecord) -> None:
        self.metrics.opened_connection(record)

    def refused(self, record: ConnectionRecord, why: str, flag: str = "CONNECT") -> None:
        """A connection that never carried a byte: refused, or its far side not reached."""
        record.finish(why, flag)
        self.metrics.failed_connection(record)
        logs.access(record)

    def relay_ended(self, record: ConnectionRecord, splice) -> None:
        """A relayed connection ended: its bytes, metrics and access-log line."""
        record.finish_relay(splice)
        self.closed(record)

    def closed(self, record: ConnectionRecord) -> None:
        self.metrics.closed_connection(record)
        logs.access(record)
