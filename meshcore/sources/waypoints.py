"""Waypoints in configuration files: Gateway API Gateways of class istio-waypoint,
Namespaces, and the `istio.io/use-waypoint` labels that enrol services and workloads.

    gateway(doc) -> Waypoint              # one `kind: Gateway` document
    namespace(doc) -> Namespace           # one `kind: Namespace` document
    resolve(waypoints, namespaces, workloads, services) -> (workloads, services)

resolve() turns the labels into the `waypoint` GatewayAddress that ztunnel's local
config and istiod's xDS carry, so everything past the file source (store, routing,
inbound) works from addresses alone. Istio's precedence: a service's or workload's own
label, then its namespace's; `none` opts out; a namespace label enrols services only
if the waypoint takes service traffic (`istio.io/waypoint-for`), workloads only if it
takes workload traffic. A reference that cannot be resolved refuses the whole
configuration, naming the label that made it (istiod would only mark the resource's
status and send it without a waypoint: traffic the user meant to pass through L7
policy would silently go around it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshcore.config import fields as F
from meshcore.errors import ConfigError
from meshcore.state.model import HBONE_PORT, GatewayAddress, Service, Waypoint, WaypointFor, Workload

USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
WAYPOINT_CLASS = "istio-waypoint"
_GATEWAY_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
# what Kubernetes adds to objects it returns (kubectl get -o yaml): accepted and ignored
_METADATA = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
             "creationTimestamp", "managedFields", "ownerReferences", "finalizers")


@dataclass(frozen=True)
class Where:
    """Where a resource was written, to name it in a refusal."""
    source: str
    document: int | None
    path: str                  # the resource's own path in its document ("" for a whole document)

    def error(self, field: str, reason: str) -> ConfigError:
        path = f"{self.path}.{field}" if self.path and field else (field or self.path)
        return ConfigError(reason, source=self.source, document=self.document, path=path)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


def _metadata(doc: dict) -> tuple[str, str, dict]:
    meta = F.mapping(doc["metadata"], "metadata", allowed=_METADATA, required=("name",))
    labels = F.mapping(meta.get("labels") or {}, "metadata.labels")
    for k, v in labels.items():
        F.string(k, "metadata.labels")
        F.string(v, f"metadata.labels.{k}", empty_ok=True)
    return (F.string(meta["name"], "metadata.name"),
            F.string(meta.get("namespace", "default"), "metadata.namespace"), labels)


def gateway(doc: dict) -> Waypoint:
    """A Gateway API Gateway naming a waypoint, as `istioctl waypoint generate` writes it."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata", "spec"))
    if doc["apiVersion"] not in _GATEWAY_VERSIONS:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not {' or '.join(_GATEWAY_VERSIONS)}")
    name, namespace, labels = _metadata(doc)
    spec = F.mapping(doc["spec"], "spec", allowed=("gatewayClassName", "listeners", "addresses", "infrastructure"),
                     required=("gatewayClassName", "listeners"))
    cls = F.string(spec["gatewayClassName"], "spec.gatewayClassName")
    if cls != WAYPOINT_CLASS:
        # an ingress or egress gateway is a proxy of its own, not something a node proxy routes through
        raise F.fail("spec.gatewayClassName", f"{cls!r} is not {WAYPOINT_CLASS!r}: the only Gateways meshcore "
                                              "reads are waypoints")
    try:
        waypoint_for = WaypointFor(labels.get(WAYPOINT_FOR, "service"))
    except ValueError:
        raise F.fail(f"metadata.labels.{WAYPOINT_FOR}", f"{labels[WAYPOINT_FOR]!r} is not one of "
                                                        f"{', '.join(WaypointFor)}") from None
    hbone = None
    listeners = F.sequence(spec["listeners"], "spec.listeners")
    for i, listener in enumerate(listeners):
        p = f"spec.listeners[{i}]"
        F.mapping(listener, p, allowed=("name", "port", "protocol", "allowedRoutes", "hostname", "tls"),
                  required=("name", "port", "protocol"))
        F.string(listener["name"], f"{p}.name")
        protocol = F.string(listener["protocol"], f"{p}.protocol")
        if protocol != "HBONE":
            raise F.fail(f"{p}.protocol", f"{protocol!r}: a waypoint is reached through HBONE only")
        port = F.port(listener["port"], f"{p}.port")
        if port != HBONE_PORT:
            # node proxies dial a waypoint on 15008 (the local config's hboneMtlsPort can say otherwise)
            raise F.fail(f"{p}.port", f"{port}: a waypoint's HBONE listener is on {HBONE_PORT}")
        if hbone is not None:
            raise F.fail(p, "a second HBONE listener (a waypoint has one)")
        hbone = (p, listener)
    if hbone is None:
        raise F.fail("spec.listeners", f"a waypoint needs its HBONE listener (port {HBONE_PORT}, protocol HBONE)")
    p, listener = hbone
    allowed_from, selector = "Same", ()
    routes = F.mapping(listener.get("allowedRoutes") or {}, f"{p}.allowedRoutes", allowed=("namespaces", "kinds"))
    spaces = F.mapping(routes.get("namespaces") or {}, f"{p}.allowedRoutes.namespaces", allowed=("from", "selector"))
    allowed_from = F.string(spaces.get("from", "Same"), f"{p}.allowedRoutes.namespaces.from")
    if allowed_from not in ("Same", "All", "Selector"):
        raise F.fail(f"{p}.allowedRoutes.namespaces.from", f"{allowed_from!r} is not one of Same, All, Selector")
    if allowed_from == "Selector":
        sp = f"{p}.allowedRoutes.namespaces.selector"
        sel = F.mapping(spaces.get("selector"), sp, allowed=("matchLabels", "matchExpressions"))
        if sel.get("matchExpressions"):
            raise F.fail(f"{sp}.matchExpressions", "not supported: select namespaces with matchLabels")
        match = F.mapping(sel.get("matchLabels") or {}, f"{sp}.matchLabels")
        selector = tuple(sorted((F.string(k, f"{sp}.matchLabels"), F.string(str(v), f"{sp}.matchLabels.{k}",
                                                                             empty_ok=True))
                                for k, v in match.items()))
    elif "selector" in spaces:
        raise F.fail(f"{p}.allowedRoutes.namespaces.selector", f"only read with from: Selector (not {allowed_from})")
    return Waypoint(name, namespace, waypoint_for, allowed_from, selector)


def namespace(doc: dict) -> Namespace:
    """A Kubernetes Namespace: only its labels are read."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata"))
    if doc["apiVersion"] != "v1":
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not v1")
    meta = F.mapping(doc["metadata"], "metadata")
    if "namespace" in meta:
        raise F.fail("metadata.namespace", "a Namespace is not in a namespace")
    name, _, labels = _metadata(doc)
    return Namespace(name, tuple(sorted(labels.items())))


# -- resolution --------------------------------------------------------------------------

def _gateway_address(wp: Waypoint, workloads: list[Workload], services: list[Service]) -> GatewayAddress | str:
    """The address node proxies dial for `wp`, or why there is none. Istio runs a
    waypoint's pods under the Gateway's name (service account, and the gateway-name
    label on each pod) in the Gateway's namespace."""
    mine = [w for w in workloads if w.namespace == wp.namespace and w.ips
            and (dict(w.labels).get(GATEWAY_NAME) == wp.name or w.service_account == wp.name)]
    if len(mine) == 1:
        w = mine[0]
        return GatewayAddress(address=(w.network, w.ips[0]), hbone_mtls_port=wp.hbone_port)
    svc = next((s for s in services if s.namespace == wp.namespace and s.name == wp.name and s.vips), None)
    if mine and svc is not None:
        # several replicas: through the waypoint's own service, as istiod addresses it
        return GatewayAddress(hostname=(svc.namespace, svc.hostname), hbone_mtls_port=wp.hbone_port)
    if mine:
        return (f"waypoint {wp.key} runs as {len(mine)} workloads and there is no service {wp.name} in "
                f"{wp.namespace} to reach them by")
    return (f"waypoint {wp.key} has no workload (one in namespace {wp.namespace} with service account "
            f"{wp.name}, or labelled {GATEWAY_NAME}: {wp.name})")


class _Resolver:
    def __init__(self, waypoints, namespaces, workloads, services):
        self.waypoints: dict[str, tuple[Waypoint, Where]] = waypoints
        self.ns_labels = {n.name: dict(n.labels) for n, _ in namespaces.values()}
        self.all_workloads = [w for w, _ in workloads]
        self.all_services = [s for s, _ in services]
        self._addresses: dict[str, GatewayAddress | str] = {}
        # a waypoint's own workloads are never enrolled by their namespace's label:
        # their traffic would loop through themselves
        self.waypoint_uids: set[str] = set()
        self.waypoint_services: set[str] = set()
        for wp, _ in waypoints.values():
            self.waypoint_uids |= {w.uid for w in self.all_workloads if w.namespace == wp.namespace and (
                dict(w.labels).get(GATEWAY_NAME) == wp.name or w.service_account == wp.name)}
            self.waypoint_services |= {s.key for s in self.all_services
                                       if s.namespace == wp.namespace and s.name == wp.name}

    def address(self, wp: Waypoint) -> GatewayAddress | str:
        if wp.key not in self._addresses:
            self._addresses[wp.key] = _gateway_address(wp, self.all_workloads, self.all_services)
        return self._addresses[wp.key]

    def reference(self, labels: dict, namespace: str, where: Where, field: str,
                  traffic: str) -> GatewayAddress | None:
        """The address `labels` enrol into (None: `none`), or ConfigError at `where`."""
        name = labels[USE_WAYPOINT]
        if name == "none":
            return None
        target_ns = labels.get(USE_WAYPOINT_NAMESPACE) or namespace
        label = f"{field}.{USE_WAYPOINT}"
        found = self.waypoints.get(f"{target_ns}/{name}")
        if found is None:
            raise where.error(label, f"waypoint {target_ns}/{name} is not defined (no Gateway of class "
                                     f"{WAYPOINT_CLASS} named {name} in namespace {target_ns})")
        wp = found[0]
        if not wp.admits(namespace, self.ns_labels.get(namespace, {})):
            raise where.error(label, f"waypoint {wp.key} does not admit namespace {namespace} (its HBONE "
                                     f"listener's allowedRoutes.namespaces.from is {wp.allowed_from})")
        if traffic == "workload" and not wp.waypoint_for.workloads or \
                traffic == "service" and not wp.waypoint_for.services:
            raise where.error(label, f"waypoint {wp.key} does not take {traffic} traffic "
                                     f"({WAYPOINT_FOR}: {wp.waypoint_for})")
        address = self.address(wp)
        if isinstance(address, str):
            raise where.error(label, address)
        return address

    def check_namespaces(self, namespaces) -> dict[str, tuple[dict, Where]]:
        """Every namespace label must name a waypoint that exists and admits it, whether
        or not anything in the namespace takes it today."""
        out = {}
        for ns, where in namespaces.values():
            labels = dict(ns.labels)
            _pairing(labels, where, "metadata.labels")
            if USE_WAYPOINT in labels:
                name = labels[USE_WAYPOINT]
                if name != "none":
                    wp = self.waypoints.get(f"{labels.get(USE_WAYPOINT_NAMESPACE) or ns.name}/{name}")
                    # a namespace label takes whichever traffic its waypoint is for
                    traffic = "service" if wp is None or wp[0].waypoint_for.services else "workload"
                    self.reference(labels, ns.name, where, "metadata.labels", traffic)
                out[ns.name] = (labels, where)
        return out


def _pairing(labels: dict, where: Where, field: str) -> None:
    if USE_WAYPOINT_NAMESPACE in labels and USE_WAYPOINT not in labels:
        raise where.error(f"{field}.{USE_WAYPOINT_NAMESPACE}", f"names a namespace but no waypoint ({USE_WAYPOINT} "
                                                               "is missing)")


def resolve(waypoints: dict, namespaces: dict, workloads: list, services: list) -> tuple[list, list]:
    """`waypoints`: key -> (Waypoint, Where); `namespaces`: name -> (Namespace, Where);
    `workloads`, `services`: [(resource, Where)]. The resources with their waypoint
    resolved (in the same order), or ConfigError naming the label at fault."""
    r = _Resolver(waypoints, namespaces, workloads, services)
    ns_refs = r.check_namespaces(namespaces)
    out_w = [(_enrol(r, w, where, ns_refs, "workload"), where) for w, where in workloads]
    out_s = [(_enrol(r, s, where, ns_refs, "service"), where) for s, where in services]
    return out_w, out_s


def _enrol(r: _Resolver, resource, where: Where, ns_refs: dict, traffic: str):
    labels = dict(resource.labels)
    _pairing(labels, where, "labels")
    if USE_WAYPOINT in labels:
        if resource.waypoint is not None:
            raise where.error(f"labels.{USE_WAYPOINT}", "the waypoint field names a waypoint already: use one "
                                                        "or the other")
        address = r.reference(labels, resource.namespace, where, "labels", traffic)
        return dataclasses.replace(resource, waypoint=address) if address is not None else resource
    if resource.waypoint is not None:
        return resource                       # ztunnel's own field, written out: as it is
    if resource.key in (r.waypoint_uids if traffic == "workload" else r.waypoint_services):
        return resource
    found = ns_refs.get(resource.namespace)
    if found is None or found[0][USE_WAYPOINT] == "none":
        return resource
    labels, ns_where = found
    wp = r.waypoints[f"{labels.get(USE_WAYPOINT_NAMESPACE) or resource.namespace}/{labels[USE_WAYPOINT]}"][0]
    if not (wp.waypoint_for.workloads if traffic == "workload" else wp.waypoint_for.services):
        return resource                       # Istio: the namespace's waypoint is not for this traffic
    address = r.address(wp)
    if isinstance(address, str):
        raise ns_where.error(f"metadata.labels.{USE_WAYPOINT}", address)
    return dataclasses.replace(resource, waypoint=address)
