"""What each request through a waypoint reports, once: Istio's request metrics (the
labels Envoy's waypoint gives them, `reporter="waypoint"`) and one access-log line,
both derived from one RequestRecord so they never disagree."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from meshcore.node.record import ConnectionRecord, peer_labels
from meshcore.state.model import Service, Workload

access_log = logging.getLogger("meshcore.access")

# Istio's default buckets for request durations and sizes
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000)
SERIES_CACHE_LIMIT = 4096       # label sets whose metric series are kept at hand
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


@dataclass(slots=True)
class RequestRecord:
    connection: ConnectionRecord                  # the tunnel it came in (source, identity)
    method: str = ""
    path: str = ""
    authority: str = ""
    protocol: str = "http"                        # http | grpc
    status: int = 0
    grpc_status: str = ""
    flag: str = "-"                               # Envoy's response flags: UAEX (denied), UH, UF, DC, ...
    upstream: Workload | None = None
    upstream_identity: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    request_id: str = ""
    route: str = ""                               # the route rule that decided: namespace.name.rule
    attempts: int = 1                             # upstream attempts (retries + 1)
    routed: bool = False                          # a route was chosen: `service` is where it sends
    service: Service | None = None
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0

    def finish(self, status: int, flag: str | None = None, error: str = "") -> "RequestRecord":
        self.duration = time.monotonic() - self.started
        self.status = status
        if flag is not None:
            self.flag = flag
        if error:
            self.error = error
        return self

    def route_to(self, service: Service | None) -> None:
        self.routed, self.service = True, service

    @property
    def destination_service(self) -> Service | None:
        """The service Envoy's waypoint reports: the one whose cluster the route sends the
        request to (from the cluster's metadata; None where the route names no cluster);
        for a request answered before any route was chosen (a policy denial, a malformed
        request), the service it was sent to, where the service's default route goes."""
        return self.service if self.routed else self.connection.service

    def labels(self) -> dict[str, str]:
        c = self.connection
        return {
            "reporter": "waypoint",
            **peer_labels(c.src_workload, c.src_identity, self.destination_service, self.upstream,
                          self.upstream_identity),
            "request_protocol": self.protocol,
            "response_code": str(self.status),
            "grpc_response_status": _grpc_label(self.grpc_status),
            "response_flags": self.flag,
            "connection_security_policy": "mutual_tls",
        }

    def log_fields(self) -> dict[str, object]:
        c = self.connection
        s, d, service = c.src_workload, self.upstream, self.destination_service
        fields = {
            "src.addr": c.src_addr,
            "src.workload": s.name if s else "",
            "src.namespace": s.namespace if s else "",
            "src.identity": c.src_identity,
            "dst.service": service.hostname if service else "",
            "dst.workload": d.name if d else "",
            "dst.namespace": d.namespace if d else "",
            "dst.identity": self.upstream_identity,
            "http.method": self.method,
            "http.path": self.path,
            "http.host": self.authority,
            "http.status": self.status,
            "grpc.status": self.grpc_status,
            "response_flags": self.flag if self.flag != "-" else "",
            "request_id": self.request_id,
            "route": self.route,
            "attempts": self.attempts if self.attempts > 1 else "",
            "bytes_recv": self.request_bytes,
            "bytes_sent": self.response_bytes,
            "duration": f"{round(self.duration * 1000)}ms",
            "error": self.error,
        }
        return {k: v for k, v in fields.items() if v != ""}


_GRPC_CODES = frozenset(str(code) for code in range(17))


def _grpc_label(value: str) -> str:
    # the value is the backend's: only gRPC's 17 codes become a label, so that a backend
    # cannot mint series at will
    value = value.strip()
    return value if value in _GRPC_CODES else ""


def _names() -> tuple[str, ...]:
    return tuple(RequestRecord(ConnectionRecord("inbound")).labels())


class RequestMetrics:
    """Istio's request metrics in the proxy's registry."""

    def __init__(self, registry):
        self._series: dict = {}
        names = _names()
        self.requests = Counter("istio_requests", "Requests through the waypoint", names, registry=registry)
        self.duration = Histogram("istio_request_duration_milliseconds", "Request durations in milliseconds",
                                  names, buckets=DURATION_BUCKETS, registry=registry)
        self.request_bytes = Histogram("istio_request_bytes", "Request body sizes in bytes", names,
                                       buckets=SIZE_BUCKETS, registry=registry)
        self.response_bytes = Histogram("istio_response_bytes", "Response body sizes in bytes", names,
                                        buckets=SIZE_BUCKETS, registry=registry)

    def report(self, record: RequestRecord) -> None:
        c = record.connection
        source, service, upstream = c.src_workload, record.destination_service, record.upstream
        # the same few label sets repeat for every request: their series are looked up
        # once, by the (immutable) resources they are made of; an entry holds those, so
        # their ids stay theirs while it lives
        key = (id(source), c.src_identity, id(service), id(upstream), record.upstream_identity, record.protocol,
               record.status, record.grpc_status, record.flag)
        entry = self._series.get(key)
        if entry is None or entry[0] is not source or entry[1] is not service or entry[2] is not upstream:
            if len(self._series) >= SERIES_CACHE_LIMIT:
                self._series.clear()
            labels = record.labels()
            entry = self._series[key] = (source, service, upstream, (
                self.requests.labels(**labels), self.duration.labels(**labels),
                self.request_bytes.labels(**labels), self.response_bytes.labels(**labels)))
        requests, duration, request_bytes, response_bytes = entry[3]
        requests.inc()
        duration.observe(record.duration * 1000)
        request_bytes.observe(record.request_bytes)
        response_bytes.observe(record.response_bytes)
        failed = record.error or record.status >= 500 or record.status == 0
        level = logging.WARNING if failed else logging.INFO
        if access_log.isEnabledFor(level):
            # made directly: the caller's file and line (what Logger.info looks up from
            # the stack) are never part of an access line
            access_log.handle(access_log.makeRecord(
                access_log.name, level, "", 0, "request failed" if failed else "request complete", (), None,
                extra={"fields": record.log_fields()}))
