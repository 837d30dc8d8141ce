"""DestinationRule documents: what meshcore reads, istiod's refusals, subsets and the
policy merged for one destination."""
from dataclasses import dataclass

import pytest
import yaml

from meshcore.errors import ConfigError
from meshcore.traffic.destinationrule import (
    cluster_policy, destination_rule, destination_rule_for, subset_endpoints,
)
from meshcore.traffic.istio_model import HashKey, OutlierDetection, SimpleLB


def dr(spec: str, *, name="reviews", namespace="prod", api="networking.istio.io/v1"):
    doc = {"apiVersion": api, "kind": "DestinationRule", "metadata": {"name": name, "namespace": namespace},
           "spec": yaml.safe_load(spec)}
    return destination_rule(doc)


FULL = dr("""
host: reviews
exportTo: ["*"]
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN}
  connectionPool:
    tcp: {maxConnections: 100, connectTimeout: 30ms, idleTimeout: 0s}
    http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 1, maxRetries: 3,
           idleTimeout: 60s}
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 3
    interval: 5m
    baseEjectionTime: 15m
    maxEjectionPercent: 100
    minHealthPercent: 50
  portLevelSettings:
  - port: {number: 9080}
    loadBalancer: {simple: RANDOM}
subsets:
- name: v1
  labels: {version: v1}
- name: v2
  labels: {version: v2, tier: gold}
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}
    portLevelSettings:
    - port: {number: 9443}
      connectionPool: {tcp: {maxConnections: 5}}
""")


def test_parse_everything():
    assert FULL.host == "reviews.prod.svc.cluster.local" and FULL.export_to == ("*",)
    tp = FULL.traffic_policy
    assert tp.load_balancer.simple is SimpleLB.ROUND_ROBIN
    assert tp.connection_pool.tcp.max_connections == 100 and tp.connection_pool.tcp.connect_timeout == 0.03
    assert tp.connection_pool.tcp.idle_timeout == 0
    h = tp.connection_pool.http
    assert (h.http1_max_pending_requests, h.http2_max_requests, h.max_requests_per_connection, h.max_retries,
            h.idle_timeout) == (10, 1000, 1, 3, 60)
    od = tp.outlier_detection
    assert (od.consecutive_5xx, od.consecutive_gateway_errors, od.interval, od.base_ejection_time,
            od.max_ejection_percent, od.min_health_percent) == (7, 3, 300, 900, 100, 50)
    assert tp.port_level_settings[0].port == 9080
    v2 = FULL.subset("v2")
    assert v2.labels == (("tier", "gold"), ("version", "v2"))
    ch = v2.traffic_policy.load_balancer.consistent_hash
    assert ch.key is HashKey.HEADER and ch.name == "x-user" and ch.ring_minimum_size == 2048


@pytest.mark.parametrize("policy", [
    "{loadBalancer: {warmup: {duration: 300s}}}",
    "{loadBalancer: {warmup: {duration: 300s, minimumPercent: 5.0, aggression: 5.0}}}",
    "{connectionPool: {http: {http2KeepAlive: {interval: 15s, timeout: 5s}}}}",
    "{tls: {mode: ISTIO_MUTUAL}, tunnel: {targetHost: example.com, targetPort: 443}}",
])
def test_accepted_and_kept(policy):
    assert dr(f"host: ratings.prod.svc.cluster.local\ntrafficPolicy: {policy}").traffic_policy is not None


def test_the_upstream_protocol_settings_are_kept():
    rule = dr("host: r\ntrafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}\n"
              "subsets: [{name: a, labels: {v: a}, trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}}]")
    http = rule.traffic_policy.connection_pool.http
    assert (http.h2_upgrade_policy, http.use_client_protocol) == ("UPGRADE", False)
    http = rule.subset("a").traffic_policy.connection_pool.http
    assert (http.h2_upgrade_policy, http.use_client_protocol) == ("DEFAULT", True)


def test_outlier_defaults_are_envoys():
    od = dr("host: r\ntrafficPolicy: {outlierDetection: {}}").traffic_policy.outlier_detection
    assert od == OutlierDetection()
    assert (od.consecutive_5xx, od.consecutive_gateway_errors, od.interval, od.base_ejection_time,
            od.max_ejection_percent, od.min_health_percent) == (5, 0, 10, 30, 10, 0)


def test_default_algorithm_is_least_request():
    lb = dr("host: r\ntrafficPolicy: {loadBalancer: {localityLbSetting: {enabled: true}}}").traffic_policy.load_balancer
    assert lb.algorithm is SimpleLB.LEAST_REQUEST
    assert dr("host: r\ntrafficPolicy: {loadBalancer: {simple: LEAST_CONN}}"
              ).traffic_policy.load_balancer.algorithm is SimpleLB.LEAST_REQUEST


@pytest.mark.parametrize("hash_spec,key,name", [
    ("{httpHeaderName: x-user}", HashKey.HEADER, "x-user"),
    ("{httpCookie: {name: session, ttl: 0s}}", HashKey.COOKIE, "session"),
    ("{useSourceIp: true}", HashKey.SOURCE_IP, ""),
    ("{httpQueryParameterName: user}", HashKey.QUERY_PARAMETER, "user"),
])
def test_consistent_hash_keys(hash_spec, key, name):
    ch = dr(f"host: r\ntrafficPolicy: {{loadBalancer: {{consistentHash: {hash_spec}}}}}"
            ).traffic_policy.load_balancer.consistent_hash
    assert (ch.key, ch.name) == (key, name)


def test_maglev():
    ch = dr("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}"
            ).traffic_policy.load_balancer.consistent_hash
    assert ch.maglev_table_size == 65537


@pytest.mark.parametrize("spec,path,reason", [
    ("host: ''", "spec.host", "must not be empty"),
    ("host: 'a..b'", "spec.host", "invalid"),
    ("host: r\ntrafficPolicy: {}", "spec.trafficPolicy", "at least one field"),
    ("host: r\nsubsets: [{name: v1}, {name: v1}]", "spec.subsets[1].name", "duplicate subset names: v1"),
    ("host: r\nsubsets: [{name: v_1}]", "spec.subsets[0].name", "subset name is invalid"),
    ("host: r\nsubsets: [{labels: {a: b}}]", "spec.subsets[0].name", "required field is missing"),
    ("host: r\nsubsets: [{name: v1, labels: {'a b': c}}]", "spec.subsets[0].labels.a b", "invalid tag key"),
    ("host: r\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}", "spec.trafficPolicy.loadBalancer.simple",
     "is not one of"),
    ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 1s}}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "name required for HttpCookie"),
    ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "prime"),
    ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "must be set"),
    ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 10, "
     "ringHash: {minimumRingSize: 10}}}}", "spec.trafficPolicy.loadBalancer.consistentHash",
     "only one of MinimumRingSize or Maglev/Ringhash"),
    ("host: r\ntrafficPolicy: {connectionPool: {}}", "spec.trafficPolicy.connectionPool",
     "connection pool must have at least one field"),
    ("host: r\ntrafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}",
     "spec.trafficPolicy.connectionPool.http.http2MaxRequests", "must be non-negative"),
    ("host: r\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}",
     "spec.trafficPolicy.connectionPool.tcp.maxConnections", "must be non-negative"),
    ("host: r\ntrafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}",
     "spec.trafficPolicy.connectionPool.tcp.connectTimeout", "greater than 1ms"),
    ("host: r\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}",
     "spec.trafficPolicy.outlierDetection.maxEjectionPercent", "not in range 0..100"),
    ("host: r\ntrafficPolicy: {outlierDetection: {minHealthPercent: -1}}",
     "spec.trafficPolicy.outlierDetection.minHealthPercent", "not in range 0..100"),
    ("host: r\ntrafficPolicy: {outlierDetection: {baseEjectionTime: 0.5ms}}",
     "spec.trafficPolicy.outlierDetection.baseEjectionTime", "greater than 1ms"),
    ("host: r\ntrafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}",
     "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "split external local origin errors"),
    ("host: r\ntrafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}",
     "spec.trafficPolicy.portLevelSettings[0].port", "must have valid port"),
    ("host: r\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}}]}",
     "spec.trafficPolicy.portLevelSettings[0]", "at least one field"),
    ("host: r\ntrafficPolicy: {tunnel: {targetHost: a, targetPort: 1}, proxyProtocol: {}}", "spec.trafficPolicy",
     "tunnel and proxyProtocol"),
    ("host: r\nworkloadSelector: {matchLabels: {app: a}}\nexportTo: ['*']", "spec.exportTo",
     "beyond current namespace"),
    ("host: r\nexportTo: [a, a]", "spec.exportTo[1]", "duplicate entries in exportTo for entry a"),
    ("host: r\ntrafficPolicy: {loadBalancer: {warmup: {duration: 300s, minimumPercent: 150.0}}}",
     "spec.trafficPolicy.loadBalancer.warmup.minimumPercent", "less than or equal to 100"),
    ("host: r\ntrafficPolicy: {loadBalancer: {warmup: {minimumPercent: 5.0}}}",
     "spec.trafficPolicy.loadBalancer.warmup.duration", "duration is required"),
    ("host: r\ntrafficPolicy: {loadBalancer: {warmup: {duration: 300s, aggression: -0.1}}}",
     "spec.trafficPolicy.loadBalancer.warmup.aggression", "greater than 0"),
    ("host: r\ntrafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 15s}}}}",
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout", "timeout is required"),
    ("host: r\ntrafficPolicy: {connectionPool: {http: {h2UpgradePolicy: ALWAYS}}}",
     "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "'ALWAYS' is not one of DEFAULT, DO_NOT_UPGRADE"),
    ("host: r\ntrafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}",
     "spec.trafficPolicy.connectionPool.http", "use client protocol must not be true"),
    ("host: r\ntrafficPolicy: {connectionPool: {http: {useClientProtocol: yes please}}}",
     "spec.trafficPolicy.connectionPool.http.useClientProtocol", ""),
])
def test_refusals(spec, path, reason):
    with pytest.raises(ConfigError) as e:
        dr(spec)
    assert e.value.path == path, e.value
    assert reason in e.value.reason, e.value.reason


@dataclass(frozen=True)
class Endpoint:
    name: str
    labels: tuple = ()


ENDPOINTS = [Endpoint("a", (("app", "reviews"), ("version", "v1"))),
             Endpoint("b", (("app", "reviews"), ("tier", "gold"), ("version", "v2"))),
             Endpoint("c", (("app", "reviews"), ("version", "v2"))),
             Endpoint("d", ())]


@pytest.mark.parametrize("subset,expected", [("v1", ["a"]), ("v2", ["b"]), ("", ["a", "b", "c", "d"])])
def test_subset_endpoints_by_labels(subset, expected):
    assert [e.name for e in subset_endpoints(FULL, subset, ENDPOINTS)] == expected


def test_unknown_subset_has_no_cluster():
    assert subset_endpoints(FULL, "v9", ENDPOINTS) is None
    assert subset_endpoints(None, "v1", ENDPOINTS) is None


def test_cluster_policy_merging():
    top = cluster_policy(FULL, "", 80)
    assert top.load_balancer.simple is SimpleLB.ROUND_ROBIN and top.outlier_detection.consecutive_5xx == 7
    # port-level settings replace the whole policy: what they leave out is not inherited
    port = cluster_policy(FULL, "", 9080)
    assert port.load_balancer.simple is SimpleLB.RANDOM
    assert port.outlier_detection is None and port.connection_pool is None
    # a subset's fields override the rule's, the rest is inherited
    v2 = cluster_policy(FULL, "v2", 80)
    assert v2.load_balancer.consistent_hash.name == "x-user"
    assert v2.outlier_detection.consecutive_5xx == 7 and v2.connection_pool.tcp.max_connections == 100
    v2_port = cluster_policy(FULL, "v2", 9443)
    assert v2_port.connection_pool.tcp.max_connections == 5 and v2_port.load_balancer is None
    assert cluster_policy(FULL, "v1", 80) == top
    assert cluster_policy(None).load_balancer is None


def rule(name, namespace, host, *, export=None, created="", subsets=(), lb=None):
    spec = {"host": host}
    if export is not None:
        spec["exportTo"] = export
    if subsets:
        spec["subsets"] = [{"name": s, "labels": {"version": s}} for s in subsets]
    if lb:
        spec["trafficPolicy"] = {"loadBalancer": {"simple": lb}}
    meta = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return destination_rule({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta,
                             "spec": spec})


HOST = "reviews.prod.svc.cluster.local"


def pick(rules, waypoint_namespace="wp", service_namespace="prod"):
    found = destination_rule_for(rules, HOST, waypoint_namespace=waypoint_namespace,
                                 service_namespace=service_namespace)
    return None if found is None else found.key


def test_lookup_order_waypoint_namespace_then_service_then_root():
    in_wp = rule("in-wp", "wp", HOST)
    in_svc = rule("in-svc", "prod", "reviews")
    in_root = rule("in-root", "istio-system", "*.svc.cluster.local")
    assert pick([in_root, in_svc, in_wp]) == "wp/in-wp"
    assert pick([in_root, in_svc]) == "prod/in-svc"
    assert pick([in_root]) == "istio-system/in-root"
    assert pick([]) is None


def test_lookup_honours_export_to_and_specificity():
    private = rule("private", "prod", "reviews", export=["."])
    exported = rule("to-wp", "prod", "*.prod.svc.cluster.local", export=["wp"])
    other = rule("to-other", "prod", "reviews", export=["other"])
    assert pick([private, other]) is None
    assert pick([private, exported, other]) == "prod/to-wp"
    assert pick([private], waypoint_namespace="prod") == "prod/private"   # a waypoint in the service's namespace
    wide = rule("wide", "wp", "*.svc.cluster.local")
    narrow = rule("narrow", "wp", "*.prod.svc.cluster.local")
    assert pick([wide, narrow]) == "wp/narrow"


def test_rules_for_one_host_merge_oldest_first():
    old = rule("b-old", "prod", "reviews", created="2020-01-01T00:00:00Z", subsets=("v1",))
    new = rule("a-new", "prod", "reviews", created="2021-01-01T00:00:00Z", subsets=("v1", "v2"), lb="RANDOM")
    merged = destination_rule_for([new, old], HOST, waypoint_namespace="prod", service_namespace="prod")
    assert merged.name == "b-old" and [s.name for s in merged.subsets] == ["v1", "v2"]
    assert merged.subset("v1").labels == (("version", "v1"),)
    assert merged.traffic_policy.load_balancer.simple is SimpleLB.RANDOM     # the first policy given
