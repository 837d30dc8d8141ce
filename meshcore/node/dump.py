"""`/config_dump`: the node's state as JSON in ztunnel's shapes (camelCase, its
top-level keys), so scripts written against ztunnel's dump read meshcore's; a
waypoint's traffic resources in their own field names (Gateway API's, Istio's)."""
from __future__ import annotations

import base64
import datetime as dt
import re
import ssl
from dataclasses import fields, is_dataclass
from enum import Enum

from meshcore.identity.der import certificate_fields, pem_certificates
from meshcore.state.model import GatewayAddress, Service, Workload
from meshcore.state.view import MeshView
from meshcore.policy.model import Match, Policy, StringMatch, resolved_scope
from meshcore.traffic import istio_model as istio
from meshcore.traffic import model as gateway
from meshcore.traffic.locality import LocalityLbSetting
from meshcore.traffic.ratelimit import attached
from meshcore.traffic.ratelimit_config import HeaderToAdd, Origin, RateLimitPolicy

_STRING_KIND = {"exact": "Exact", "prefix": "Prefix", "suffix": "Suffix", "presence": "Presence"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _gateway(g: GatewayAddress | None):
    if g is None:
        return None
    dest = f"{g.address[0]}/{g.address[1]}" if g.address else {"namespace": g.hostname[0], "hostname": g.hostname[1]}
    return {"destination": dest, "hboneMtlsPort": g.hbone_mtls_port}


def workload(w: Workload) -> dict:
    out = {"uid": w.uid, "workloadIps": [str(ip) for ip in w.ips], "protocol": w.protocol, "name": w.name,
           "namespace": w.namespace, "serviceAccount": w.service_account, "workloadName": w.workload_name,
           "workloadType": w.workload_type, "canonicalName": w.canonical_name,
           "canonicalRevision": w.canonical_revision, "clusterId": w.cluster_id, "trustDomain": w.trust_domain,
           "locality": {k: v for k, v in (("region", w.locality.region), ("zone", w.locality.zone),
                                          ("subzone", w.locality.subzone)) if v},
           "node": w.node, "network": w.network, "status": "Healthy" if w.healthy else "Unhealthy",
           "authorizationPolicies": list(w.authorization_policies),
           "services": {k: {str(p): t for p, t in ports} for k, ports in w.services}}
    if w.waypoint:
        out["waypoint"] = _gateway(w.waypoint)
    if w.network_gateway:
        out["networkGateway"] = _gateway(w.network_gateway)
    return out


def endpoint(w: Workload, service_key: str) -> dict:
    return {"workloadUid": w.uid, "service": "", "status": "Healthy" if w.healthy else "Unhealthy",
            "port": {str(p): t for k, ports in w.services if k == service_key for p, t in ports}}


def service(s: Service, state: MeshView) -> dict:
    out = {"name": s.name, "namespace": s.namespace, "hostname": s.hostname,
           "vips": [f"{n}/{ip}" for n, ip in s.vips], "ports": {str(p): t for p, t in s.ports},
           "endpoints": {w.uid: endpoint(w, s.key) for w in state.endpoints.get(s.key, ())},
           "subjectAltNames": list(s.subject_alt_names), "ipFamilies": "IPv4"}
    if s.waypoint:
        out["waypoint"] = _gateway(s.waypoint)
    if s.load_balancer:
        lb = s.load_balancer
        out["loadBalancer"] = {"routingPreferences": list(lb.routing_preferences), "mode": lb.mode,
                               "healthPolicy": lb.health_policy}
    return out


def _values(value):
    if isinstance(value, StringMatch):
        return {_STRING_KIND[value.kind]: [] if value.kind == "presence" else value.value}
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return {"namespace": value[0], "serviceAccount": value[1]}
    if isinstance(value, tuple):
        return [value[0], [_values(v) for v in value[1]]]      # header name, values
    return value if isinstance(value, int) else str(value)


def _match(m: Match) -> dict:
    return {_camel(f.name): [_values(v) for v in getattr(m, f.name)] for f in fields(m) if getattr(m, f.name)}


def policy(p: Policy, root_namespace: str) -> dict:
    return {"name": p.name, "namespace": p.namespace, "scope": resolved_scope(p, root_namespace).value, "action": p.action.value.title(),
            "rules": [[[_match(m) for m in clause] for clause in rule] for rule in p.rules],
            "dryRun": p.dry_run}


def _time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificates(store, identities) -> list[dict]:
    """ztunnel's states: Available, Initializing (a remote CA has not answered yet) and
    Unavailable: <why>. A remote CA's certificates are shown as held, never fetched here
    (a dump must not wait on, or add load to, istiod); local issuers answer at once."""
    out = []
    for identity in identities:
        creds = store.current(identity) if getattr(store, "remote", False) else None
        if creds is None and getattr(store, "remote", False):
            out.append({"identity": identity.uri, "state": store.state(identity), "certChain": [], "rootCerts": []})
            continue
        try:
            creds = creds or store.credentials(identity)
        except Exception as exc:                  # noqa: BLE001  (shown, not hidden)
            out.append({"identity": identity.uri, "state": f"Unavailable: {exc}", "certChain": [], "rootCerts": []})
            continue
        out.append({"identity": identity.uri, "state": "Available",
                    "certChain": [_cert(d) for d in pem_certificates(creds.chain_pem())],
                    "rootCerts": [_cert(d) for d in store.bundle.der]})
    return out


def _cert(der: bytes) -> dict:
    # read from the DER: a dump does not load cryptography (~10 MB) into a node that never needed it
    serial, not_before, not_after = certificate_fields(der)
    # the PEM text base64-encoded, as ztunnel writes it (istioctl decodes it)
    return {"pem": base64.b64encode(ssl.DER_cert_to_PEM_cert(der).encode("ascii")).decode(),
            "serialNumber": format(serial, "x"), "validFrom": _time(not_before), "expirationTime": _time(not_after)}


def config_dump(proxy) -> dict:
    state = proxy.store.view
    local = state.local_workloads(proxy.node_name)
    return {
        "workloads": [workload(w) for w in state.workloads],
        "services": [service(s, state) for s in state.services],
        "policies": [policy(p, state.root_namespace) for p in state.policies],
        # endpoints that name a service not known yet, as ztunnel lists them
        "stagedServices": {key: {w.uid: endpoint(w, key) for w in members} for key, members in state.staged.items()},
        "certificates": certificates(proxy.certs, sorted(proxy.certificates.wanted(state))),
        "workloadState": {w.uid: {"state": "Up"} for w in local},
        "staticConfig": {"sources": list(proxy.files.sources)},
        "xds": proxy.xds.describe() if proxy.xds is not None else None,
        "version": proxy.version,
        "config": proxy.describe_config(),
    }


# -- traffic resources ---------------------------------------------------------------------
# A resource as its own YAML writes it: its field names (camelCase), durations as
# "1.5s", label and header maps as mappings, nothing for what was left unset.

# seconds, shown as Istio's and Gateway API's durations
_DURATIONS = frozenset(("timeout", "per_try_timeout", "backoff", "fixed_delay", "interval", "base_ejection_time",
                        "max_ejection_time", "connect_timeout", "idle_timeout", "max_connection_duration",
                        "cookie_ttl", "request", "backend_request", "max_age"))
# where meshcore's field name is not the resource's
_NAMES = {(istio.HTTPRoute, "matches"): "match", (istio.Rewrite, "uri_regex"): "uriRegexRewrite",
          (istio.Redirect, "code"): "redirectCode", (istio.LoadBalancerSettings, "locality"): "localityLbSetting",
          (istio.OutlierDetection, "consecutive_5xx"): "consecutive5xxErrors",
          (istio.OutlierDetection, "error_codes"): "outlierDetectionHttpErrorCodes",
          (istio.TrafficPolicy, "other"): "otherFields", (istio.HTTPSettings, "http2_keepalive"): "http2KeepAlive",
          (gateway.RequestMirror, "backend"): "backendRef"}
# booleans whose false says something (`enabled: false` turns locality load balancing off)
_FALSE_SHOWN = frozenset(((LocalityLbSetting, "enabled"),))
# (name, value) pairs Gateway API writes as a list of {name, value}; Istio's are maps
_NAME_VALUE_LISTS = frozenset(((gateway.HeaderModifier, "set"), (gateway.HeaderModifier, "add")))


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _plain(value, name: str = "", owner: type | None = None):
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, istio.StringMatch):
        return {} if value.kind is istio.MatchKind.PRESENT else {str(value.kind): value.value}
    if isinstance(value, istio.ConsistentHash):
        return _consistent_hash(value)
    if is_dataclass(value):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            # unset, or a default that says nothing
            if v is None or v is False and (type(value), f.name) not in _FALSE_SHOWN or v == "" or v == () \
                    or v is istio.SimpleLB.UNSPECIFIED or isinstance(v, re.Pattern):
                continue
            shown = _plain(v, f.name, type(value))
            if shown == {} and is_dataclass(v) and not isinstance(v, istio.StringMatch):
                continue
            out[_NAMES.get((type(value), f.name)) or _camel(f.name.rstrip("_"))] = shown
        return out
    if isinstance(value, float) and name in _DURATIONS:
        return _duration(value)
    if isinstance(value, dt.datetime):
        return _time(value)
    if isinstance(value, bytes):
        try:
            return {"string": value.decode()}
        except UnicodeDecodeError:
            return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                                  for v in value):
        if (owner, name) in _NAME_VALUE_LISTS:
            return [{"name": k, "value": _plain(v)} for k, v in value]
        return {k: _plain(v) for k, v in value}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)                # what YAML read as something else (a date) in a field kept as written


def _consistent_hash(h: istio.ConsistentHash) -> dict:
    """Istio's shape: the hash key as its own field, then the ring or Maglev table."""
    if h.key is istio.HashKey.COOKIE:
        ttl = None if h.cookie_ttl is None else _duration(h.cookie_ttl)
        cookie = {"name": h.name, "path": h.cookie_path, "ttl": ttl}
        out = {"httpCookie": {k: v for k, v in cookie.items() if v}}
    elif h.key is istio.HashKey.SOURCE_IP:
        out = {"useSourceIp": True}
    else:
        out = {h.key.value: h.name}
    if h.maglev_table_size is not None:
        out["maglev"] = {"tableSize": h.maglev_table_size}
    else:
        out["ringHash"] = {"minimumRingSize": h.ring_minimum_size}
    return out


def _condition(c: gateway.Condition) -> dict:
    return {"type": str(c.type), "status": "True" if c.status else "False", "reason": str(c.reason),
            "message": c.message}


def route(r: gateway.ResolvedRoute) -> dict:
    """An HTTPRoute or GRPCRoute with its conditions per parentRef, as istiod writes them
    in `status.parents`, and the service each backend resolved to."""
    out = {"kind": str(r.kind), **_plain(r.route)}
    if "created" in out:
        out["creationTimestamp"] = out.pop("created")
    for rule in r.rules:
        refs = out["rules"][rule.index].get("backendRefs", [])
        for ref, backend in zip(refs, rule.backends):
            if backend.service_key is not None:
                ref["service"] = backend.service_key
    out["status"] = {"parents": [{"parentRef": _plain(p.parent), "conditions": [_condition(c) for c in p.conditions]}
                                 for p in r.parents]}
    return out


def virtual_service(vs: istio.VirtualService) -> dict:
    return _plain(vs)


def destination_rule(dr: istio.DestinationRule) -> dict:
    out = _plain(dr)
    if "workloadSelector" in out:
        out["workloadSelector"] = {"matchLabels": out["workloadSelector"]}
    return out


def waypoint_traffic(state: MeshView, served, waypoint_namespace: str) -> dict:
    """What a waypoint of `waypoint_namespace` reads for the services it serves: every
    route with its conditions (a route attached nowhere says why), and the
    VirtualServices and DestinationRules that apply to a served service, each with the
    hostnames it applies to (VirtualServices in the order their routes are tried)."""
    virtual_services: dict = {}                # key -> (VirtualService, [hostname, ...]), first seen first
    rules: dict = {}                           # DestinationRule (merged: by value) -> [hostname, ...]
    for s in served:
        for vs in state.virtual_services_for(s, waypoint_namespace):
            virtual_services.setdefault(vs.key, (vs, []))[1].append(s.hostname)
        rule = state.destination_rule_for(s, waypoint_namespace)
        if rule is not None:
            rules.setdefault(rule, []).append(s.hostname)
    return {"routes": [route(r) for r in state.routes],
            "virtualServices": [{**virtual_service(vs), "services": hosts} for vs, hosts in virtual_services.values()],
            "destinationRules": [{**destination_rule(dr), "services": hosts} for dr, hosts in rules.items()]}


def _header_to_add(h: HeaderToAdd) -> dict:
    action = "ADD_IF_ABSENT" if h.if_absent else "OVERWRITE_IF_EXISTS_OR_ADD" if h.overwrite else \
        "APPEND_IF_EXISTS_OR_ADD"
    return {"header": {"key": h.name, "value": h.value}, "appendAction": action}


def rate_limit(p: RateLimitPolicy) -> dict:
    """A LocalRateLimit or the local_ratelimit filter of an EnvoyFilter, in the fields a
    LocalRateLimit writes (an EnvoyFilter's others in their lowerCamelCase names)."""
    out = {"kind": str(p.origin), "name": p.name, "namespace": p.namespace,
           "targetRefs": [{"kind": str(t.kind), "name": t.name, **({"sectionName": t.section_name}
                                                                    if t.section_name else {})} for t in p.targets],
           "tokenBucket": {"maxTokens": p.bucket.max_tokens, "tokensPerFill": p.bucket.tokens_per_fill,
                           "fillInterval": _duration(p.bucket.fill_interval)}}
    if p.origin is Origin.LOCAL_RATE_LIMIT:
        out["perSource"] = p.per_source
    else:
        out.update({"statPrefix": p.stat_prefix, "filterEnabled": p.enabled_percent,
                    "filterEnforced": p.enforced_percent, "status": p.status,
                    "enableXRatelimitHeaders": "DRAFT_VERSION_03" if p.x_ratelimit_headers else "OFF"})
        if p.response_headers:
            out["responseHeadersToAdd"] = [_header_to_add(h) for h in p.response_headers]
        if p.request_headers_when_not_enforced:
            out["requestHeadersToAddWhenNotEnforced"] = [_header_to_add(h) for h in p.request_headers_when_not_enforced]
        if p.grpc_resource_exhausted:
            out["rateLimitedAsResourceExhausted"] = True
    if p.source:
        out["source"] = p.source
    return out


def waypoint_rate_limits(state: MeshView, waypoint: tuple[str, str], served) -> list[dict]:
    """The rate limits that can apply to requests through `waypoint` (namespace, name):
    those targeting it or every waypoint, a service it serves, or a route attached to one."""
    services = {(s.namespace, s.name) for s in served}
    routes = {(str(r.kind), r.route.namespace, r.route.name) for r in state.routes
              if any(p.accepted and p.parent.is_service and (p.parent.namespace, p.parent.name) in services
                     for p in r.parents)}
    return [rate_limit(p) for p in state.rate_limits
            if attached(p, waypoint=waypoint, services=services, routes=routes)]
