"""Which service a waypoint's request metrics and access line name: the one the route
sent the request to (Envoy's stats filter reads it from the upstream cluster's
metadata), `unknown` where the route names no cluster, the addressed one for a request
answered before any route was chosen; and that each is its own metric series."""
from __future__ import annotations

from prometheus_client import CollectorRegistry

from meshcore.node.record import ConnectionRecord
from meshcore.sources.config import load
from meshcore.traffic.decide import LocalReply
from meshcore.waypoint.destination import routed_service
from meshcore.waypoint.telemetry import RequestMetrics, RequestRecord

VIEW = load(inline="""\
services:
- {name: site, namespace: shop, hostname: site.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
- {name: api, namespace: back, hostname: api.back.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080}}
""")
SITE = VIEW.by_service_key["shop/site.shop.svc.cluster.local"]
API = VIEW.by_service_key["back/api.back.svc.cluster.local"]


def record() -> RequestRecord:
    return RequestRecord(ConnectionRecord("inbound", service=SITE), method="GET", path="/")


def service_labels(r: RequestRecord) -> tuple[str, str, str]:
    labels = r.labels()
    return (labels["destination_service"], labels["destination_service_name"],
            labels["destination_service_namespace"])


def test_a_request_routed_to_another_service_names_that_service():
    r = record()
    r.route_to(routed_service(LocalReply(503, "shop.site.0", flag="UH", service_key=API.key), VIEW))
    assert service_labels(r) == ("api.back.svc.cluster.local", "api", "back")
    assert r.log_fields()["dst.service"] == "api.back.svc.cluster.local"


def test_a_route_without_a_cluster_names_no_service():
    r = record()
    r.route_to(routed_service(LocalReply(404, "", flag="NR"), VIEW))
    assert service_labels(r) == ("unknown", "unknown", "unknown")
    assert "dst.service" not in r.log_fields()


def test_a_request_answered_before_any_route_names_the_service_it_was_sent_to():
    assert service_labels(record()) == ("site.shop.svc.cluster.local", "site", "shop")


def test_each_destination_service_is_its_own_series():
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for service in (API, None, SITE):
        r = record()
        r.route_to(service)
        metrics.report(r.finish(200))
    metrics.report(record().finish(403))
    counts = {(s.labels["destination_service_name"], s.labels["response_code"]): s.value
              for m in registry.collect() if m.name == "istio_requests" for s in m.samples
              if s.name == "istio_requests_total"}
    assert counts == {("api", "200"): 1.0, ("unknown", "200"): 1.0, ("site", "200"): 1.0, ("site", "403"): 1.0}
