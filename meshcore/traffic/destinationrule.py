"""Istio DestinationRule documents, checked as istiod's validation checks them, and what
a rule decides for one destination: its subsets' endpoints and the merged policy.

    destination_rule(doc) -> DestinationRule
    destination_rule_for(rules, hostname, waypoint_namespace=, service_namespace=) -> DestinationRule | None
    subset_endpoints(rule, subset_name, endpoints) -> [endpoint] | None
    cluster_policy(rule, subset_name, port) -> ClusterPolicy

Fields the waypoint does not apply are checked where istiod checks them and kept as
written: `tls`, `tunnel`, `proxyProtocol`, `retryBudget`, warmup. Load balancer
choosers are in loadbalancer.py, locality load balancing in locality.py, outlier
ejection in outlier.py.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from meshcore.config import fields as F
from meshcore.traffic import istio_fields as I
from meshcore.traffic.istio_model import (
    ClusterPolicy, ConnectionPool, ConsistentHash, DestinationRule, HashKey, Http2KeepAlive, HTTPSettings,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, SimpleLB, Subset, TCPSettings, TrafficPolicy,
)
from meshcore.traffic.locality import TOPOLOGY_LABELS, Distribute, Failover, LocalityLbSetting

_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel",
                  "proxyProtocol", "retryBudget")
_PORT_POLICY_FIELDS = ("port", "loadBalancer", "connectionPool", "outlierDetection", "tls")
MAGLEV_TABLE_LIMIT = 5000011


def destination_rule(doc: dict) -> DestinationRule:
    """One `kind: DestinationRule` document (networking.istio.io v1, v1beta1 or v1alpha3)."""
    name, namespace, created = I.networking_document(doc)
    spec = F.mapping(doc["spec"], "spec", allowed=("host", "trafficPolicy", "subsets", "exportTo",
                                                   "workloadSelector"), required=("host",))
    host = F.string(spec["host"], "spec.host")
    I.wildcard_domain(host, "spec.host")
    policy = _traffic_policy(spec.get("trafficPolicy"), "spec.trafficPolicy")
    subsets, seen = [], set()
    for i, s in enumerate(F.sequence(spec.get("subsets"), "spec.subsets")):
        p = f"spec.subsets[{i}]"
        if s is None:
            raise F.fail(p, "subset may not be null")
        F.mapping(s, p, allowed=("name", "labels", "trafficPolicy"), required=("name",))
        sname = F.string(s["name"], f"{p}.name")
        I.dns_label(sname, f"{p}.name", "subset name")
        if sname in seen:
            raise F.fail(f"{p}.name", f"duplicate subset names: {sname}")
        seen.add(sname)
        subsets.append(Subset(sname, I.labels(s.get("labels"), f"{p}.labels"),
                              _traffic_policy(s.get("trafficPolicy"), f"{p}.trafficPolicy")))
    selector = None
    if spec.get("workloadSelector") is not None:
        ws = F.mapping(spec["workloadSelector"], "spec.workloadSelector", allowed=("matchLabels",))
        selector = I.labels(ws.get("matchLabels"), "spec.workloadSelector.matchLabels")
    exports = I.export_to(spec.get("exportTo"), "spec.exportTo", namespace)
    if selector is not None and exports:
        if namespace not in [namespace if e == "." else e for e in exports]:
            raise F.fail("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond "
                                          "current namespace")
        if len(exports) > 1:
            raise F.fail("spec.exportTo", "destination rule with workload selector cannot have multiple entries "
                                          "in exportTo")
    return DestinationRule(name, namespace, I.fqdn(host, namespace), policy, tuple(subsets), exports, selector,
                           created)


# -- traffic policy ----------------------------------------------------------------------

def _traffic_policy(obj, path: str) -> TrafficPolicy | None:
    if obj is None:
        return None
    F.mapping(obj, path, allowed=_POLICY_FIELDS)
    if not any(obj.get(k) is not None for k in _POLICY_FIELDS):
        raise F.fail(path, "traffic policy must have at least one field")
    if obj.get("tunnel") is not None and obj.get("proxyProtocol") is not None:
        raise F.fail(path, "tunnel and proxyProtocol must not be set together")
    outlier = _outlier(obj.get("outlierDetection"), f"{path}.outlierDetection")
    ports = []
    for i, pl in enumerate(F.sequence(obj.get("portLevelSettings"), f"{path}.portLevelSettings")):
        pp = f"{path}.portLevelSettings[{i}]"
        if pl is None:
            raise F.fail(pp, "traffic policy may not be null")
        F.mapping(pl, pp, allowed=_PORT_POLICY_FIELDS)
        if pl.get("port") is None:
            raise F.fail(f"{pp}.port", "portTrafficPolicy must have valid port")
        sel = F.mapping(pl["port"], f"{pp}.port", allowed=("number",))
        number = I.port_number(sel.get("number", 0), f"{pp}.port.number")
        if not any(pl.get(k) is not None for k in _PORT_POLICY_FIELDS[1:]):
            raise F.fail(pp, "port traffic policy must have at least one field")
        ports.append(PortTrafficPolicy(
            number, _load_balancer(pl.get("loadBalancer"), f"{pp}.loadBalancer"),
            _connection_pool(pl.get("connectionPool"), f"{pp}.connectionPool"),
            _outlier(pl.get("outlierDetection"), f"{pp}.outlierDetection"),
            _kept(pl.get("tls"), f"{pp}.tls")))
    return TrafficPolicy(
        load_balancer=_load_balancer(obj.get("loadBalancer"), f"{path}.loadBalancer"),
        connection_pool=_connection_pool(obj.get("connectionPool"), f"{path}.connectionPool"),
        outlier_detection=outlier,
        port_level_settings=tuple(ports),
        tls=_kept(obj.get("tls"), f"{path}.tls"),
        other=tuple(k for k in ("tunnel", "proxyProtocol", "retryBudget") if obj.get(k) is not None),
    )


def _kept(obj, path: str) -> dict | None:
    return None if obj is None else dict(F.mapping(obj, path))


def _load_balancer(obj, path: str) -> LoadBalancerSettings | None:
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("simple", "consistentHash", "localityLbSetting", "zoneAwareLbSetting",
                                  "warmupDurationSecs", "warmup"))
    if obj.get("simple") is not None and obj.get("consistentHash") is not None:
        raise F.fail(path, "only one of simple or consistentHash")
    if obj.get("localityLbSetting") is not None and obj.get("zoneAwareLbSetting") is not None:
        raise F.fail(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
    if obj.get("warmupDurationSecs") is not None and obj.get("warmup") is not None:
        raise F.fail(path, "only one of warmupDurationSecs or warmup can be set")
    simple = SimpleLB.UNSPECIFIED
    if obj.get("simple") is not None:
        try:
            simple = SimpleLB(F.string(obj["simple"], f"{path}.simple"))
        except ValueError:
            raise F.fail(f"{path}.simple", f"{obj['simple']!r} is not one of {', '.join(SimpleLB)}") from None
    if obj.get("warmup") is not None:
        wp = f"{path}.warmup"
        w = F.mapping(obj["warmup"], wp, allowed=("duration", "minimumPercent", "aggression"))
        if w.get("duration") is None:
            raise F.fail(f"{wp}.duration", "duration is required")
        I.istio_duration(w["duration"], f"{wp}.duration")
        if w.get("minimumPercent") is not None and I.number(w["minimumPercent"], f"{wp}.minimumPercent") > 100:
            raise F.fail(f"{wp}.minimumPercent", "minimumPercent value should be less than or equal to 100")
        if w.get("aggression") is not None and I.number(w["aggression"], f"{wp}.aggression") <= 0:
            raise F.fail(f"{wp}.aggression", "aggression should be greater than 0")
    locality = _locality_lb(obj.get("localityLbSetting"), f"{path}.localityLbSetting")
    if obj.get("zoneAwareLbSetting") is not None:
        _locality_lb(obj["zoneAwareLbSetting"], f"{path}.zoneAwareLbSetting")
        # istiod gives a waypoint no locality priorities for it (endpoint_builder.go skips
        # zone-aware balancing for waypoints), and it outranks the mesh's locality default
        locality = LocalityLbSetting(enabled=False)
    return LoadBalancerSettings(simple, _consistent_hash(obj.get("consistentHash"), f"{path}.consistentHash"),
                                locality)


def _locality_lb(obj, path: str) -> LocalityLbSetting | None:
    """istiod's ValidateLocalityLbSetting. Failover without outlierDetection is only a
    warning there: it is accepted, and not applied (locality.py)."""
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("enabled", "distribute", "failover", "failoverPriority"))
    enabled = None if obj.get("enabled") is None else F.boolean(obj["enabled"], f"{path}.enabled")
    distribute, failover = [], []
    raw_distribute = F.sequence(obj.get("distribute"), f"{path}.distribute")
    raw_failover = F.sequence(obj.get("failover"), f"{path}.failover")
    priority = tuple(F.strings(obj.get("failoverPriority"), f"{path}.failoverPriority"))
    if raw_distribute and raw_failover:
        raise F.fail(path, "can not simultaneously specify 'distribute' and 'failover'")
    if raw_failover and priority:
        for label in priority:
            if label in TOPOLOGY_LABELS:
                raise F.fail(f"{path}.failoverPriority",
                             f"can not simultaneously set 'failover' and topology label '{label}' in "
                             "'failover_priority'")
    sources = []
    for i, d in enumerate(raw_distribute):
        dp = f"{path}.distribute[{i}]"
        F.mapping(d, dp, allowed=("from", "to"))
        source = F.string(d.get("from", ""), f"{dp}.from", empty_ok=True)
        sources.append(source)
        to, total = [], 0
        for loc, weight in F.mapping(d.get("to") or {}, f"{dp}.to").items():
            w = I.integer(weight, f"{dp}.to.{loc}")
            if not 1 <= w <= 100:
                raise F.fail(f"{dp}.to.{loc}", "locality weight must be in range [1, 100]")
            to.append((str(loc), w))
            total += w
        if total != 100:
            raise F.fail(f"{dp}.to", f"total locality weight {total} != 100")
        _localities([loc for loc, _ in to], f"{dp}.to")
        distribute.append(Distribute(source, tuple(to)))
    _localities(sources, f"{path}.distribute")
    for i, f in enumerate(raw_failover):
        fp = f"{path}.failover[{i}]"
        F.mapping(f, fp, allowed=("from", "to"))
        source = F.string(f.get("from", ""), f"{fp}.from", empty_ok=True)
        target = F.string(f.get("to", ""), f"{fp}.to", empty_ok=True)
        if source == target:
            raise F.fail(fp, "locality lb failover settings must specify different regions")
        if "/" in source or "/" in target:
            raise F.fail(fp, "locality lb failover only specify region")
        if "*" in source or "*" in target:
            raise F.fail(fp, "locality lb failover region should not contain '*' wildcard")
        failover.append(Failover(source, target))
    return LocalityLbSetting(enabled, tuple(distribute), tuple(failover), priority)


def _localities(localities: list[str], path: str) -> None:
    """istiod's validateLocalities: at most one `*`, at the end; no empty part; none
    overlapping another (a region, then a zone of it, ...)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for loc in localities:
        stars = loc.count("*")
        if stars and (stars > 1 or not loc.endswith("*")):
            raise F.fail(path, f"locality {loc} wildcard '*' number can not exceed 1 and must be in the end")
        if "*" in seen:
            raise F.fail(path, f"locality {loc} overlap with previous specified ones")
        parts = loc.split("/", 2)
        if any(p == "" for p in parts):
            raise F.fail(path, f"locality {loc} must not contain empty region/zone/subzone info")
        region = parts[0]
        zones = seen.get(region)
        if len(parts) == 1:
            if zones is not None:
                raise F.fail(path, f"locality {loc} overlap with previous specified ones")
            seen[region] = {"*": {"*"}}
        elif len(parts) == 2:
            if zones is not None and ("*" in zones or parts[1] in zones):
                raise F.fail(path, f"locality {loc} overlap with previous specified ones")
            seen.setdefault(region, {})[parts[1]] = {"*"}
        else:
            if zones is not None and "*" in zones:
                raise F.fail(path, f"locality {loc} overlap with previous specified ones")
            subzones = (zones or {}).get(parts[1])
            if subzones is not None and ("*" in subzones or parts[2] in subzones):
                raise F.fail(path, f"locality {loc} overlap with previous specified ones")
            seen.setdefault(region, {}).setdefault(parts[1], set()).add(parts[2])


def _consistent_hash(obj, path: str) -> ConsistentHash | None:
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName",
                                  "ringHash", "maglev", "minimumRingSize"))
    keys = [k for k in HashKey if obj.get(k.value) not in (None, False)]
    if len(keys) != 1:
        raise F.fail(path, "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName "
                           f"(found {', '.join(keys) or 'none'})")
    key = keys[0]
    name, cookie_path, ttl = "", "", None
    if key is HashKey.COOKIE:
        cp = f"{path}.httpCookie"
        c = F.mapping(obj["httpCookie"], cp, allowed=("name", "path", "ttl", "attributes"))
        name = F.string(c.get("name", ""), f"{cp}.name", empty_ok=True)
        if not name:
            raise F.fail(f"{cp}.name", "name required for HttpCookie")
        cookie_path = F.string(c.get("path", ""), f"{cp}.path", empty_ok=True)
        ttl = I.duration(c["ttl"], f"{cp}.ttl") if c.get("ttl") is not None else None
        seen = set()
        for i, a in enumerate(F.sequence(c.get("attributes"), f"{cp}.attributes")):
            ap = f"{cp}.attributes[{i}]"
            F.mapping(a, ap, allowed=("name", "value"))
            aname = F.string(a.get("name", ""), f"{ap}.name", empty_ok=True)
            if not aname:
                raise F.fail(f"{ap}.name", "cookie attribute name cannot be empty")
            if aname in seen:
                raise F.fail(f"{ap}.name", f"duplicate cookie attribute name: {aname}")
            seen.add(aname)
    elif key is HashKey.SOURCE_IP:
        F.boolean(obj["useSourceIp"], f"{path}.useSourceIp")
    else:
        name = F.string(obj[key.value], f"{path}.{key.value}")
    if obj.get("ringHash") is not None and obj.get("maglev") is not None:
        raise F.fail(path, "only one of ringHash or maglev")
    if obj.get("minimumRingSize") and (obj.get("ringHash") is not None or obj.get("maglev") is not None):
        raise F.fail(path, "only one of MinimumRingSize or Maglev/Ringhash can be specified")
    ring = I.integer(obj.get("minimumRingSize") or 0, f"{path}.minimumRingSize", minimum=0) or 1024
    table = None
    if obj.get("ringHash") is not None:
        r = F.mapping(obj["ringHash"], f"{path}.ringHash", allowed=("minimumRingSize",))
        ring = I.integer(r.get("minimumRingSize") or 0, f"{path}.ringHash.minimumRingSize", minimum=0) or 1024
    if obj.get("maglev") is not None:
        mp = f"{path}.maglev"
        m = F.mapping(obj["maglev"], mp, allowed=("tableSize",))
        table = I.integer(m.get("tableSize", 0), f"{mp}.tableSize", minimum=0)
        if table == 0:
            raise F.fail(f"{mp}.tableSize", "tableSize must be set for maglev")
        if table >= MAGLEV_TABLE_LIMIT:
            raise F.fail(f"{mp}.tableSize", f"tableSize must be less than {MAGLEV_TABLE_LIMIT} for maglev")
        if not _is_prime(table):
            raise F.fail(f"{mp}.tableSize", "tableSize must be a prime number for maglev")
    return ConsistentHash(key, name, cookie_path, ttl, table, ring)


def _is_prime(x: int) -> bool:
    """Envoy's primality test (istiod copies it): 1, 2 and 3 pass."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % f for f in range(3, int(x ** 0.5) + 1, 2))


def _non_negative(obj: dict, key: str, path: str, message: str) -> int | None:
    if obj.get(key) is None:
        return None
    value = I.integer(obj[key], f"{path}.{key}")
    if value < 0:
        raise F.fail(f"{path}.{key}", message)
    return value


H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")


def _connection_pool(obj, path: str) -> ConnectionPool | None:
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("tcp", "http"))
    if obj.get("tcp") is None and obj.get("http") is None:
        raise F.fail(path, "connection pool must have at least one field")
    tcp = http = None
    if obj.get("http") is not None:
        hp = f"{path}.http"
        h = F.mapping(obj["http"], hp, allowed=(
            "http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries", "idleTimeout",
            "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams", "http2KeepAlive"))
        upgrade = "DEFAULT"
        if h.get("h2UpgradePolicy") is not None:
            upgrade = F.string(h["h2UpgradePolicy"], f"{hp}.h2UpgradePolicy")
            if upgrade not in H2_UPGRADE_POLICIES:
                raise F.fail(f"{hp}.h2UpgradePolicy",
                             f"{upgrade!r} is not one of {', '.join(H2_UPGRADE_POLICIES)}")
        client_protocol = F.boolean(h.get("useClientProtocol", False), f"{hp}.useClientProtocol")
        if upgrade == "UPGRADE" and client_protocol:
            raise F.fail(hp, "use client protocol must not be true when H2UpgradePolicy is UPGRADE")
        keepalive = None
        if h.get("http2KeepAlive") is not None:
            kp = f"{hp}.http2KeepAlive"
            k = F.mapping(h["http2KeepAlive"], kp, allowed=("interval", "timeout"))
            for part in ("interval", "timeout"):
                if k.get(part) is None:
                    raise F.fail(f"{kp}.{part}", f"http2 keepalive {part} is required")
            keepalive = Http2KeepAlive(I.istio_duration(k["interval"], f"{kp}.interval"),
                                       I.istio_duration(k["timeout"], f"{kp}.timeout"))
        http = HTTPSettings(
            _non_negative(h, "http1MaxPendingRequests", hp, "http1 max pending requests must be non-negative"),
            _non_negative(h, "http2MaxRequests", hp, "http2 max requests must be non-negative"),
            _non_negative(h, "maxRequestsPerConnection", hp, "max requests per connection must be non-negative"),
            _non_negative(h, "maxRetries", hp, "max retries must be non-negative"),
            I.istio_duration(h["idleTimeout"], f"{hp}.idleTimeout") if h.get("idleTimeout") is not None else None,
            _non_negative(h, "maxConcurrentStreams", hp, "max concurrent streams must be non-negative"),
            keepalive, upgrade, client_protocol,
        )
    if obj.get("tcp") is not None:
        tp = f"{path}.tcp"
        t = F.mapping(obj["tcp"], tp, allowed=("maxConnections", "connectTimeout", "tcpKeepalive",
                                               "maxConnectionDuration", "idleTimeout"))
        if t.get("tcpKeepalive") is not None:
            kp = f"{tp}.tcpKeepalive"
            k = F.mapping(t["tcpKeepalive"], kp, allowed=("probes", "time", "interval"))
            for part in ("time", "interval"):
                if k.get(part) is not None:
                    I.istio_duration(k[part], f"{kp}.{part}")
        idle = None
        if t.get("idleTimeout") is not None:
            idle = I.duration(t["idleTimeout"], f"{tp}.idleTimeout")
            if idle != 0:                      # 0s turns the idle timeout off: istiod skips the check
                I.istio_duration(t["idleTimeout"], f"{tp}.idleTimeout")

        def dur(key):
            return I.istio_duration(t[key], f"{tp}.{key}") if t.get(key) is not None else None

        tcp = TCPSettings(_non_negative(t, "maxConnections", tp, "max connections must be non-negative"),
                          dur("connectTimeout"), dur("maxConnectionDuration"), idle)
    return ConnectionPool(tcp, http)


def _outlier(obj, path: str) -> OutlierDetection | None:
    """Fields left out take Envoy's defaults, as istiod leaves them unset; a 0 that
    istiod cannot tell from unset (maxEjectionPercent) takes Envoy's default too."""
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("consecutiveErrors", "splitExternalLocalOriginErrors",
                                  "consecutiveLocalOriginFailures", "consecutiveGatewayErrors",
                                  "consecutive5xxErrors", "interval", "baseEjectionTime", "maxEjectionPercent",
                                  "minHealthPercent", "outlierDetectionHttpErrorCodes"))
    split = F.boolean(obj.get("splitExternalLocalOriginErrors", False), f"{path}.splitExternalLocalOriginErrors")
    local = I.integer(obj.get("consecutiveLocalOriginFailures") or 0, f"{path}.consecutiveLocalOriginFailures",
                      minimum=0)
    if local > 0 and not split:
        raise F.fail(f"{path}.consecutiveLocalOriginFailures",
                     "outlier detection consecutive local origin failures is specified, but split external local "
                     "origin errors is set to false")

    def pct(key):
        value = I.integer(obj.get(key) or 0, f"{path}.{key}")
        if not 0 <= value <= 100:
            raise F.fail(f"{path}.{key}", f"percentage {value} is not in range 0..100")
        return value

    defaults = OutlierDetection()
    codes = []
    for i, c in enumerate(F.sequence(obj.get("outlierDetectionHttpErrorCodes"),
                                     f"{path}.outlierDetectionHttpErrorCodes")):
        codes.append(I.integer(c, f"{path}.outlierDetectionHttpErrorCodes[{i}]", minimum=100, maximum=599))
    # the deprecated consecutiveErrors: istiod warns and translates nothing from it
    five_xx = obj.get("consecutive5xxErrors")
    return OutlierDetection(
        consecutive_5xx=defaults.consecutive_5xx if five_xx is None
        else I.integer(five_xx, f"{path}.consecutive5xxErrors", minimum=0),
        consecutive_gateway_errors=I.integer(obj.get("consecutiveGatewayErrors") or 0,
                                             f"{path}.consecutiveGatewayErrors", minimum=0),
        split_external_local_origin_errors=split,
        consecutive_local_origin_failures=local,
        interval=I.istio_duration(obj["interval"], f"{path}.interval") if obj.get("interval") is not None
        else defaults.interval,
        base_ejection_time=I.istio_duration(obj["baseEjectionTime"], f"{path}.baseEjectionTime")
        if obj.get("baseEjectionTime") is not None else defaults.base_ejection_time,
        max_ejection_percent=pct("maxEjectionPercent") or defaults.max_ejection_percent,
        min_health_percent=pct("minHealthPercent"),
        error_codes=tuple(codes),
    )


# -- decisions ---------------------------------------------------------------------------

ROOT_NAMESPACE = "istio-system"


def _visible_locally(rule: DestinationRule) -> bool:
    e = rule.export_to
    return not e or "*" in e or "." in e or rule.namespace in e


def _exported_to(rule: DestinationRule, namespace: str) -> bool:
    e = rule.export_to
    private_only = len(e) == 1 and e[0] in (".", rule.namespace)
    return not private_only and (not e or "*" in e or namespace in e)


def _most_specific(rules: list[DestinationRule], hostname: str) -> list[DestinationRule]:
    exact = [r for r in rules if r.host == hostname]
    if exact:
        return exact
    wild = [r for r in rules if r.host.startswith("*") and I.host_matches(r.host, hostname)]
    if not wild:
        return []
    best = max(len(r.host) for r in wild)
    return [r for r in wild if len(r.host) == best]


def _merged(rules: list[DestinationRule]) -> DestinationRule:
    """istiod's mergeDestinationRule: the oldest rule, with the subsets of the others it
    lacks added, and its traffic policy or, without one, the first later rule's."""
    first = rules[0]
    subsets, names = list(first.subsets), {s.name for s in first.subsets}
    policy = first.traffic_policy
    for r in rules[1:]:
        subsets += [s for s in r.subsets if s.name not in names]
        names |= {s.name for s in r.subsets}
        policy = policy or r.traffic_policy
    return DestinationRule(first.name, first.namespace, first.host, policy, tuple(subsets), first.export_to,
                           first.workload_selector, first.creation_timestamp)


def destination_rule_for(rules, hostname: str, *, waypoint_namespace: str, service_namespace: str,
                         root_namespace: str = ROOT_NAMESPACE) -> DestinationRule | None:
    """The DestinationRule a waypoint in `waypoint_namespace` applies to `hostname`, in
    istiod's lookup order: rules in the waypoint's namespace, then those the service's
    namespace exports to it, then those the root namespace exports; in each, the most
    specific host (exact, then the longest wildcard); several rules for that host are
    merged, oldest first. Rules with a workloadSelector select the waypoint's own pods,
    which meshcore does not model: they are left out."""
    ordered = sorted((r for r in rules if r.workload_selector is None),
                     key=lambda r: (r.creation_timestamp, r.name, r.namespace))
    steps = []
    if waypoint_namespace != root_namespace:
        steps.append([r for r in ordered if r.namespace == waypoint_namespace and _visible_locally(r)])
    else:
        steps.append([r for r in ordered if r.namespace == root_namespace and not _exported_to(r, "")
                      and _visible_locally(r)])
    steps.append([r for r in ordered if r.namespace == service_namespace and _exported_to(r, waypoint_namespace)])
    steps.append([r for r in ordered if r.namespace == root_namespace and _exported_to(r, waypoint_namespace)])
    for candidates in steps:
        found = _most_specific(candidates, hostname)
        if found:
            return _merged(found)
    return None

def subset_endpoints(rule: DestinationRule | None, subset_name: str, endpoints: Iterable) -> list | None:
    """The endpoints of `subset_name`: those whose labels (a `labels` attribute of
    (key, value) pairs, as meshcore's Workload has) include all the subset's labels.
    "" is the whole service. None: the rule defines no such subset (istiod builds no
    cluster for it: the request is answered 503, no cluster found)."""
    if not subset_name:
        return list(endpoints)
    subset = rule.subset(subset_name) if rule is not None else None
    if subset is None:
        return None
    wanted = subset.labels
    return [e for e in endpoints if all(pair in set(e.labels) for pair in wanted)]


def _port_level(policy: TrafficPolicy, port: int | None) -> ClusterPolicy | None:
    level = policy.for_port(port) if port is not None else None
    if level is None:
        return None
    # port-level settings replace the whole policy: fields they leave out take defaults
    return ClusterPolicy(level.load_balancer, level.connection_pool, level.outlier_detection)


def cluster_policy(rule: DestinationRule | None, subset_name: str = "", port: int | None = None) -> ClusterPolicy:
    """The load balancer, connection pool and outlier detection for one destination,
    merged as istiod's MergeTrafficPolicy does: the rule's policy (or its port-level
    settings for `port`), then the subset's fields over it, then the subset's
    port-level settings for `port` in place of all of it. A retryBudget (the rule's or
    the subset's) is not port-level: it applies whatever the port."""
    if rule is None:
        return ClusterPolicy()
    top = rule.traffic_policy
    merged = ClusterPolicy()
    if top is not None:
        merged = _port_level(top, port) or ClusterPolicy(top.load_balancer, top.connection_pool,
                                                         top.outlier_detection)
    subset = rule.subset(subset_name) if subset_name else None
    sp = subset.traffic_policy if subset is not None else None
    budget = any(p is not None and "retryBudget" in p.other for p in (top, sp))
    if sp is not None:
        merged = _port_level(sp, port) or ClusterPolicy(sp.load_balancer or merged.load_balancer,
                                                        sp.connection_pool or merged.connection_pool,
                                                        sp.outlier_detection or merged.outlier_detection)
    return replace(merged, retry_budget=True) if budget else merged
