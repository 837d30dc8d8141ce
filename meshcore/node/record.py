"""One proxied connection as telemetry sees it: the access log line and the metric
labels are both derived from this record, so they never disagree."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from meshcore.state.model import Service, Workload

UNKNOWN = "unknown"


@dataclass(slots=True)
class ConnectionRecord:
    direction: str                                # inbound | outbound
    src_addr: str = ""
    dst_addr: str = ""                            # the original destination (ip:port)
    hbone_addr: str = ""                          # the CONNECT authority, when tunnelled
    src_workload: Workload | None = None
    dst_workload: Workload | None = None
    service: Service | None = None
    src_identity: str = ""                        # SPIFFE URI, from mTLS only
    dst_identity: str = ""
    mtls: bool = False
    bytes_sent: int = 0                           # toward the connection's client
    bytes_recv: int = 0                           # from the connection's client
    flag: str = "-"                               # response flag: DENY, CONNECT, ...
    # the waypoint the destination is behind, when the connection did not come from it
    # (allowed, as ztunnel does: only an AuthorizationPolicy stops it)
    bypassed: str = ""
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0

    def finish(self, error: str = "", flag: str | None = None) -> "ConnectionRecord":
        self.duration = time.monotonic() - self.started
        if error:
            self.error = error
        if flag is not None:
            self.flag = flag
        return self

    def finish_relay(self, splice) -> "ConnectionRecord":
        """Bytes and outcome of the splice that carried it (side a: the client's)."""
        self.bytes_recv, self.bytes_sent = splice.a.received, splice.b.received
        side, _, why = splice.error.partition(": ")
        return self.finish(f"{'client' if side == 'a' else 'destination'} side ended abnormally: {why}"
                           if splice.error else "")

    @property
    def reporter(self) -> str:
        return "destination" if self.direction == "inbound" else "source"

    def labels(self) -> dict[str, str]:
        """Istio's TCP metric labels (ztunnel's set and order)."""
        s, d = self.src_workload, self.dst_workload
        return {
            "reporter": self.reporter,
            **peer_labels(s, self.src_identity, self.service, d, self.dst_identity),
            "request_protocol": "tcp",
            "response_flags": self.flag,
            "connection_security_policy": "mutual_tls" if self.mtls else UNKNOWN,
            "source_region": (s.locality.region if s else "") or UNKNOWN,
            "source_zone": (s.locality.zone if s else "") or UNKNOWN,
            "destination_region": (d.locality.region if d else "") or UNKNOWN,
            "destination_zone": (d.locality.zone if d else "") or UNKNOWN,
        }

    def log_fields(self) -> dict[str, object]:
        """ztunnel's access-log fields, in its order (empty ones left out)."""
        s, d = self.src_workload, self.dst_workload
        fields = {
            "src.addr": self.src_addr,
            "src.workload": s.name if s else "",
            "src.namespace": s.namespace if s else "",
            "src.identity": self.src_identity,
            "src.cluster": s.cluster_id if s else "",
            "dst.addr": self.dst_addr,
            "dst.hbone_addr": self.hbone_addr,
            "dst.service": self.service.hostname if self.service else "",
            "dst.workload": d.name if d else "",
            "dst.namespace": d.namespace if d else "",
            "dst.identity": self.dst_identity,
            "dst.cluster": d.cluster_id if d else "",
            "direction": self.direction,
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "duration": f"{round(self.duration * 1000)}ms",
            "waypoint.bypassed": self.bypassed,
            "error": self.error,
        }
        return {k: v for k, v in fields.items() if v != ""}


FIELD_LABELS = ("workload", "canonical_service", "canonical_revision", "workload_namespace")


def peer_labels(s: Workload | None, src_identity: str, svc: Service | None, d: Workload | None,
                dst_identity: str) -> dict[str, str]:
    """The source, service and destination labels of Istio's metrics, in Istio's order:
    the TCP metrics of a node and the request metrics of a waypoint share them."""
    sv = _NO_WORKLOAD if s is None else s._metric_labels or _workload_values(s)
    dv = _NO_WORKLOAD if d is None else d._metric_labels or _workload_values(d)
    return {
        "source_workload": sv[0],
        "source_canonical_service": sv[1],
        "source_canonical_revision": sv[2],
        "source_workload_namespace": sv[3],
        "source_principal": src_identity or UNKNOWN,
        "source_app": sv[4],
        "source_version": sv[5],
        "source_cluster": sv[6],
        "destination_service": svc.hostname if svc else UNKNOWN,
        "destination_service_namespace": svc.namespace if svc else UNKNOWN,
        "destination_service_name": svc.name if svc else UNKNOWN,
        "destination_workload": dv[0],
        "destination_canonical_service": dv[1],
        "destination_canonical_revision": dv[2],
        "destination_workload_namespace": dv[3],
        "destination_principal": dst_identity or UNKNOWN,
        "destination_app": dv[4],
        "destination_version": dv[5],
        "destination_cluster": dv[6],
    }


# a side's labels: workload, canonical_service, canonical_revision, workload_namespace
# (FIELD_LABELS), app, version, cluster
_NO_WORKLOAD = (UNKNOWN,) * 7


def _workload_values(w: Workload) -> tuple:
    """A workload's labels (kept on it: workloads are frozen, and every connection
    to or from one reports them, once opened and once closed)."""
    values = (w.workload_name or w.name or UNKNOWN,
              w.canonical_name or w.workload_name or w.name or UNKNOWN,
              w.canonical_revision or "latest",
              w.namespace,
              _label(w, "app", w.canonical_name),
              _label(w, "version", w.canonical_revision),
              w.cluster_id)
    object.__setattr__(w, "_metric_labels", values)
    return values


def _label(w: Workload | None, key: str, fallback: str) -> str:
    if w is None:
        return UNKNOWN
    return dict(w.labels).get(key) or fallback or UNKNOWN


LABEL_NAMES = tuple(ConnectionRecord("inbound").labels())
