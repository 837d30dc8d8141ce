"""The VirtualServices and DestinationRules in force, by namespace, and what a waypoint
asks of them for each request, each answer worked out once:

    index = update_istio(previous, virtual_services, destination_rules, changed_vs, changed_dr)
    index.virtual_services_for(hostname, service_namespace, waypoint_namespace)   # (VirtualService, ...)
    index.destination_rule_for(hostname, service_namespace, waypoint_namespace, root_namespace)

What a waypoint applies to a service depends only on the resources written in the
service's namespace and the waypoint's (and, for DestinationRules, the root
namespace): resources are kept by namespace, an answer is remembered under (hostname,
service namespace, waypoint namespace), and a change forgets only the answers that
read a namespace it changed. An index is shared by every view until a VirtualService
or DestinationRule changes, so a change of workloads or services keeps its answers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshcore.traffic.destinationrule import destination_rule_for
from meshcore.traffic.istio_model import DestinationRule, VirtualService
from meshcore.traffic.virtualservice_select import waypoint_virtual_services

_NONE = object()            # a remembered "no DestinationRule"


class IstioIndex:
    """Never changed once built, but for the answers it remembers: those hold for every
    view sharing the index, whichever view asked first."""

    __slots__ = ("virtual_services", "destination_rules", "_vs_answers", "_dr_answers")

    def __init__(self, virtual_services: dict | None = None, destination_rules: dict | None = None,
                 vs_answers: dict | None = None, dr_answers: dict | None = None):
        self.virtual_services: dict = virtual_services or {}     # namespace -> {key: VirtualService}
        self.destination_rules: dict = destination_rules or {}   # namespace -> {key: DestinationRule}
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
            candidates = _in(self.virtual_services, (service_namespace, waypoint_namespace))
            found = self._vs_answers[key] = tuple(waypoint_virtual_services(
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
            candidates = _in(self.destination_rules, (waypoint_namespace, service_namespace, root_namespace))
            rule = destination_rule_for(candidates, hostname, waypoint_namespace=waypoint_namespace,
                                        service_namespace=service_namespace, root_namespace=root_namespace)
            found = self._dr_answers[key] = _NONE if rule is None else rule
        return None if found is _NONE else found


EMPTY_ISTIO = IstioIndex()


def _in(by_namespace: dict, namespaces: Iterable[str]) -> list:
    out = []
    for ns in dict.fromkeys(namespaces):
        out += by_namespace.get(ns, {}).values()
    return out


def _namespace(key: str) -> str:
    return key.partition("/")[0]           # keys are namespace/name


def _regroup(previous: dict, by_key: Mapping, changed: Iterable[str]) -> dict:
    """`previous` (namespace -> {key: resource}) with the changed keys put or removed;
    the groups of the other namespaces shared."""
    out, copied = dict(previous), set()
    for key in changed:
        ns = _namespace(key)
        if ns not in copied:
            out[ns] = dict(out.get(ns, {}))
            copied.add(ns)
        resource = by_key.get(key)
        if resource is None:
            out[ns].pop(key, None)
        else:
            out[ns][key] = resource
    for ns in copied:
        if not out[ns]:
            del out[ns]
    return out


def _kept(answers: dict, namespaces: set[str], read: slice) -> dict:
    """The answers that read none of `namespaces` (key[read]: the namespaces an answer read)."""
    # copied first: another thread's view may be adding an answer meanwhile
    return {k: v for k, v in dict(answers).items() if namespaces.isdisjoint(k[read])}


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
        vs = _regroup(vs, virtual_services, changed_vs)
        vs_answers = _kept(vs_answers, {_namespace(k) for k in changed_vs}, slice(1, 3))
    dr, dr_answers = previous.destination_rules, {} if fresh else previous._dr_answers
    if changed_dr:
        dr = _regroup(dr, destination_rules, changed_dr)
        dr_answers = _kept(dr_answers, {_namespace(k) for k in changed_dr}, slice(1, 4))
    if not vs and not dr:
        return EMPTY_ISTIO
    return IstioIndex(vs, dr, vs_answers, dr_answers)
