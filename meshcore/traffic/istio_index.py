"""The VirtualServices and DestinationRules in force, by namespace and host, and what a
waypoint asks of them for each request, each answer worked out once:

    index = update_istio(previous, virtual_services, destination_rules, changed_vs, changed_dr)
    index.virtual_services_for(hostname, service_namespace, waypoint_namespace)   # (VirtualService, ...)
    index.destination_rule_for(hostname, service_namespace, waypoint_namespace, root_namespace)

What a waypoint applies to a service depends only on the resources written in the
service's namespace and the waypoint's (and, for DestinationRules, the root
namespace) whose hosts match the service's hostname. So resources are kept by
namespace and host, an answer is worked out from those alone and remembered under
(hostname, service namespace, waypoint namespace), and a change forgets only the
answers for a hostname its resources match in a namespace it changed. An index is
shared by every view until a VirtualService or DestinationRule changes: a change of
workloads or services keeps its answers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshcore.traffic.destinationrule import destination_rule_for
from meshcore.traffic.istio_fields import host_matches
from meshcore.traffic.istio_model import DestinationRule, VirtualService
from meshcore.traffic.virtualservice_select import VirtualServices, waypoint_virtual_services

_NONE = object()            # a remembered "no DestinationRule"


def _hosts(resource) -> tuple[str, ...]:
    return resource.hosts if isinstance(resource, VirtualService) else (resource.host,)


class _Namespace:
    """The resources of one kind in one namespace: by key, by exact host, and those with
    a wildcard host. Never changed once built."""

    __slots__ = ("by_key", "exact", "wildcard")

    def __init__(self, by_key: dict):
        self.by_key = by_key
        self.exact: dict[str, list] = {}
        self.wildcard: list = []
        for r in by_key.values():
            hosts = _hosts(r)
            for h in dict.fromkeys(hosts):
                if not h.startswith("*"):
                    self.exact.setdefault(h, []).append(r)
            if any(h.startswith("*") for h in hosts):
                self.wildcard.append(r)

    def matching(self, hostname: str) -> list:
        """The resources with a host that may match `hostname` (the decision functions
        match hosts again)."""
        if hostname.startswith("*"):
            return list(self.by_key.values())
        found = self.exact.get(hostname, [])
        if not self.wildcard:
            return found
        seen = {r.key for r in found}
        return found + [r for r in self.wildcard if r.key not in seen]


class IstioIndex:
    """Never changed once built, but for the answers it remembers: those hold for every
    view sharing the index, whichever view asked first."""

    __slots__ = ("virtual_services", "destination_rules", "_vs_answers", "_dr_answers")

    def __init__(self, virtual_services: dict | None = None, destination_rules: dict | None = None,
                 vs_answers: dict | None = None, dr_answers: dict | None = None):
        self.virtual_services: dict = virtual_services or {}     # namespace -> _Namespace
        self.destination_rules: dict = destination_rules or {}   # namespace -> _Namespace
        self._vs_answers: dict = {} if vs_answers is None else vs_answers
        self._dr_answers: dict = {} if dr_answers is None else dr_answers

    def virtual_services_for(self, hostname: str, service_namespace: str,
                             waypoint_namespace: str) -> tuple[VirtualService, ...]:
        """The VirtualServices a waypoint of `waypoint_namespace` applies to the service
        `hostname` of `service_namespace`, in the order istiod concatenates their routes
        (virtualservice_select.waypoint_virtual_services)."""
        if not self.virtual_services:
            return ()
        key = (hostname, service_namespace, waypoint_namespace)
        found = self._vs_answers.get(key)
        if found is None:
            candidates = _matching(self.virtual_services, (service_namespace, waypoint_namespace), hostname)
            found = self._vs_answers[key] = VirtualServices(waypoint_virtual_services(
                candidates, hostname=hostname, service_namespace=service_namespace,
                waypoint_namespace=waypoint_namespace))
        return found

    def destination_rule_for(self, hostname: str, service_namespace: str, waypoint_namespace: str,
                             root_namespace: str) -> DestinationRule | None:
        """The DestinationRule (merged, when several name the host) a waypoint of
        `waypoint_namespace` applies to `hostname` (destinationrule.destination_rule_for)."""
        if not self.destination_rules:
            return None
        key = (hostname, service_namespace, waypoint_namespace, root_namespace)
        found = self._dr_answers.get(key)
        if found is None:
            candidates = _matching(self.destination_rules, (waypoint_namespace, service_namespace, root_namespace),
                                   hostname)
            rule = destination_rule_for(candidates, hostname, waypoint_namespace=waypoint_namespace,
                                        service_namespace=service_namespace, root_namespace=root_namespace)
            found = self._dr_answers[key] = _NONE if rule is None else rule
        return None if found is _NONE else found


EMPTY_ISTIO = IstioIndex()


def _matching(by_namespace: dict, namespaces: Iterable[str], hostname: str) -> list:
    out = []
    for ns in dict.fromkeys(namespaces):
        group = by_namespace.get(ns)
        if group is not None:
            out += group.matching(hostname)
    return out


def _namespace(key: str) -> str:
    return key.partition("/")[0]           # keys are namespace/name


def _regroup(previous: dict, by_key: Mapping, changed: set[str]) -> tuple[dict, dict]:
    """`previous` (namespace -> _Namespace) with the changed keys put or removed, the
    other namespaces shared; and the hosts the change touched (before and after) by
    namespace."""
    out = dict(previous)
    touched: dict[str, set] = {}
    edited: dict[str, dict] = {}
    for key in changed:
        ns = _namespace(key)
        if ns not in edited:
            edited[ns] = dict(out[ns].by_key) if ns in out else {}
        hosts = touched.setdefault(ns, set())
        old, new = edited[ns].pop(key, None), by_key.get(key)
        for r in (old, new):
            if r is not None:
                hosts.update(_hosts(r))
        if new is not None:
            edited[ns][key] = new
    for ns, group in edited.items():
        if group:
            out[ns] = _Namespace(group)
        else:
            out.pop(ns, None)
    return out, touched


def _kept(answers: dict, touched: dict[str, set], namespaces_of) -> dict:
    """The answers no change touched: for none of the namespaces an answer read did the
    change put or remove a resource with a host matching the answer's hostname."""
    def stale(key) -> bool:
        hostname = key[0]
        return any(host_matches(h, hostname) for ns in namespaces_of(key) for h in touched.get(ns, ()))
    # copied first: another thread's view may be adding an answer meanwhile
    return {k: v for k, v in dict(answers).items() if not stale(k)}


def update_istio(previous: IstioIndex, virtual_services: Mapping, destination_rules: Mapping,
                 changed_vs: Iterable[str], changed_dr: Iterable[str]) -> IstioIndex:
    """The index after a change: `virtual_services`, `destination_rules` are every one
    in force by namespace/name; `changed_vs`, `changed_dr` the keys the change put or
    removed."""
    changed_vs, changed_dr = set(changed_vs), set(changed_dr)
    if not changed_vs and not changed_dr:
        return previous
    fresh = previous is EMPTY_ISTIO            # its answer dictionaries are every empty store's: never shared
    vs, vs_answers = previous.virtual_services, {} if fresh else previous._vs_answers
    if changed_vs:
        vs, touched = _regroup(vs, virtual_services, changed_vs)
        vs_answers = _kept(vs_answers, touched, lambda k: k[1:3])
    dr, dr_answers = previous.destination_rules, {} if fresh else previous._dr_answers
    if changed_dr:
        dr, touched = _regroup(dr, destination_rules, changed_dr)
        dr_answers = _kept(dr_answers, touched, lambda k: k[1:4])
    if not vs and not dr:
        return EMPTY_ISTIO
    return IstioIndex(vs, dr, vs_answers, dr_answers)
