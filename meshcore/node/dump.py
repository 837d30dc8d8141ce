"""`/config_dump`: the node's state as JSON in ztunnel's shapes (camelCase, its
top-level keys), so scripts written against ztunnel's dump read meshcore's."""
from __future__ import annotations

import base64
import datetime as dt
import ssl
from dataclasses import fields

from meshcore.identity.der import certificate_fields, pem_certificates
from meshcore.state.model import GatewayAddress, Service, Workload
from meshcore.state.view import MeshView
from meshcore.policy.model import Match, Policy, StringMatch, resolved_scope

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
