"""What resolution against the mesh's services records for each route, as istiod would
write it in the route's status, and whether the route attaches."""
from __future__ import annotations

import ipaddress
import itertools
import textwrap

import pytest
import yaml

from meshcore.state.model import GatewayAddress, Service
from meshcore.traffic.gateway_api import grpc_route, http_route, reference_grant
from meshcore.traffic.model import ConditionType, Reason
from meshcore.traffic.resolve import resolve_routes
from meshcore.traffic.select import choose_backend

_VIPS = itertools.count(1)


def svc(name: str, ns: str = "shop", *, waypoint: bool = True) -> Service:
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local",
                   vips=(("", ipaddress.ip_address(f"10.96.0.{next(_VIPS)}")),), ports=((80, 8080),),
                   waypoint=GatewayAddress(address=("", ipaddress.ip_address("10.0.0.9"))) if waypoint else None)


SERVICES = [svc("echo"), svc("v1"), svc("v2"), svc("other", "back"), svc("bare", waypoint=False)]


def route(rules: str, parent: str = '{group: "", kind: Service, name: echo}', kind: str = "HTTPRoute",
          ns: str = "shop"):
    text = (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: {ns}}}\n"
            f"spec:\n  parentRefs: [{parent}]\n  rules:\n" + textwrap.indent(textwrap.dedent(rules).strip(), "  "))
    return (grpc_route if kind == "GRPCRoute" else http_route)(yaml.safe_load(text))


def grant(from_kind: str = "HTTPRoute", from_ns: str = "shop", to_name: str | None = None, ns: str = "back"):
    name = f", name: {to_name}" if to_name else ""
    return reference_grant(yaml.safe_load(
        f"apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {ns}}}\n"
        f"spec:\n  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]\n"
        f"  to: [{{group: '', kind: Service{name}}}]\n"))


def conditions(resolved, parent: int = 0) -> dict:
    return {c.type: c for c in resolved.parents[parent].conditions}


def resolve(r, grants=(), **kw):
    index = resolve_routes([r], grants, SERVICES, **kw)
    return index, index.routes[0]


STATUS = [
    # (description, rules, parent, accepted reason, resolved-refs reason, attached)
    ("valid", "- backendRefs: [{name: v1, port: 80}]", None, Reason.ACCEPTED, Reason.RESOLVED_REFS, True),
    ("parent service unknown", "- backendRefs: [{name: v1, port: 80}]", '{group: "", kind: Service, name: nope}',
     Reason.NO_MATCHING_PARENT, Reason.RESOLVED_REFS, False),
    ("parent kind Gateway (a waypoint itself): not supported", "- backendRefs: [{name: v1, port: 80}]",
     "{name: waypoint}", Reason.NO_MATCHING_PARENT, Reason.RESOLVED_REFS, False),
    ("parent kind ServiceEntry: not supported", "- backendRefs: [{name: v1, port: 80}]",
     "{group: networking.istio.io, kind: ServiceEntry, name: echo}", Reason.NO_MATCHING_PARENT,
     Reason.RESOLVED_REFS, False),
    ("parent group core", "- backendRefs: [{name: v1, port: 80}]", "{group: core, kind: Service, name: echo}",
     Reason.ACCEPTED, Reason.RESOLVED_REFS, True),
    ("backend service unknown: kept, 500 for its share", "- backendRefs: [{name: nope, port: 80}]", None,
     Reason.ACCEPTED, Reason.BACKEND_NOT_FOUND, True),
    ("backend of another kind", "- backendRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: v1, "
     "port: 80}]", None, Reason.ACCEPTED, Reason.INVALID_KIND, True),
    ("backend named by hostname: not converted", "- backendRefs: [{name: v1.shop.svc.cluster.local, port: 80}]",
     None, Reason.ACCEPTED, Reason.INVALID_DESTINATION, False),
    ("ExtensionRef: not converted", "- filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, "
     "name: f}}]\n  backendRefs: [{name: v1, port: 80}]", None, Reason.ACCEPTED, Reason.INVALID_FILTER, False),
    ("a mirror on a backend: not converted", "- backendRefs: [{name: v1, port: 80, filters: [{type: RequestMirror, "
     "requestMirror: {backendRef: {name: v2, port: 80}}}]}]", None, Reason.ACCEPTED, Reason.INVALID_FILTER, False),
    ("a header value with a control character: not converted", "- filters: [{type: RequestHeaderModifier, "
     "requestHeaderModifier: {set: [{name: a, value: \"x\\x01\"}]}}]\n  backendRefs: [{name: v1, port: 80}]",
     None, Reason.ACCEPTED, Reason.INVALID_FILTER, False),
    ("weight 0 to an unknown backend is not checked", "- backendRefs: [{name: v1, port: 80}, {name: nope, port: 80, "
     "weight: 0}]", None, Reason.ACCEPTED, Reason.RESOLVED_REFS, True),
    ("mirror to an unknown service: not mirrored", "- filters: [{type: RequestMirror, requestMirror: {backendRef: "
     "{name: nope, port: 80}}}]\n  backendRefs: [{name: v1, port: 80}]", None, Reason.ACCEPTED,
     Reason.BACKEND_NOT_FOUND, True),
]


@pytest.mark.parametrize("rules,parent,accepted,refs,attached", [row[1:] for row in STATUS],
                         ids=[row[0] for row in STATUS])
def test_status_rows(rules, parent, accepted, refs, attached):
    index, resolved = resolve(route(rules, parent) if parent else route(rules))
    got = conditions(resolved)
    assert got[ConditionType.ACCEPTED].reason is accepted
    assert got[ConditionType.ACCEPTED].status is (accepted is Reason.ACCEPTED)
    assert got[ConditionType.RESOLVED_REFS].reason is refs
    assert got[ConditionType.RESOLVED_REFS].status is (refs is Reason.RESOLVED_REFS)
    assert (index.table("shop/echo.shop.svc.cluster.local", 80) is not None) is attached


def test_an_invalid_backend_takes_its_share_and_is_answered_500():
    index, resolved = resolve(route("- backendRefs: [{name: v1, port: 80}, {name: nope, port: 80}]"))
    backends = resolved.rules[0].backends
    assert [b.valid for b in backends] == [True, False]
    assert backends[0].service_key == "shop/v1.shop.svc.cluster.local"
    assert choose_backend(backends, 0.25).valid and not choose_backend(backends, 0.75).valid
    assert "backend(nope.shop) not found" in conditions(resolved)[ConditionType.RESOLVED_REFS].message


@pytest.mark.parametrize("rules,answers_500", [
    ("- backendRefs: [{name: v1, port: 80, weight: 0}, {name: v2, port: 80, weight: 0}]", True),
    ("- matches: [{path: {value: /a}}]", True),
    ("- filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]", True),
    ("- filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com}}]", False),
    ("- backendRefs: [{name: v1, port: 80, weight: 0}, {name: v2, port: 80}]", False),
])
def test_a_rule_without_weighted_backends_stays_accepted_and_answers_500(rules, answers_500):
    index, resolved = resolve(route(rules))
    assert conditions(resolved)[ConditionType.ACCEPTED].status
    assert resolved.rules[0].answers_500 is answers_500
    assert index.table("shop/echo.shop.svc.cluster.local", 80) is not None


def test_a_grpc_mirror_to_an_unknown_service_is_not_converted_as_istiod_does():
    index, resolved = resolve(route("- filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, "
                                    "port: 80}}}]\n  backendRefs: [{name: v1, port: 80}]", kind="GRPCRoute"))
    assert conditions(resolved)[ConditionType.RESOLVED_REFS].reason is Reason.BACKEND_NOT_FOUND
    assert resolved.rules == () and index.tables == {}


def test_a_resolved_mirror_names_its_service():
    _, resolved = resolve(route("- filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, "
                                "percent: 10}}]\n  backendRefs: [{name: v1, port: 80}]"))
    (mirror, key), = resolved.rules[0].mirrors
    assert key == "shop/v2.shop.svc.cluster.local" and mirror.percent == 10.0


CROSS = "- backendRefs: [{name: other, namespace: back, port: 80}]"


@pytest.mark.parametrize("grants,enforce,reason", [
    ((), False, Reason.RESOLVED_REFS),                  # istiod: no grant check on a Service-parented route
    ((), True, Reason.REF_NOT_PERMITTED),
    ((grant(),), True, Reason.RESOLVED_REFS),
    ((grant(to_name="other"),), True, Reason.RESOLVED_REFS),
    ((grant(to_name="else"),), True, Reason.REF_NOT_PERMITTED),
    ((grant(from_kind="GRPCRoute"),), True, Reason.REF_NOT_PERMITTED),
    ((grant(from_ns="front"),), True, Reason.REF_NOT_PERMITTED),
    ((grant(ns="shop"),), True, Reason.REF_NOT_PERMITTED),   # a grant counts in the backend's namespace only
], ids=["istiod-default", "enforced-no-grant", "grant", "grant-by-name", "grant-other-name", "grant-other-kind",
        "grant-other-namespace", "grant-in-wrong-namespace"])
def test_reference_grants(grants, enforce, reason):
    _, resolved = resolve(route(CROSS), grants, enforce_grants=enforce)
    assert conditions(resolved)[ConditionType.RESOLVED_REFS].reason is reason


def test_a_parent_without_a_waypoint_is_noted():
    _, resolved = resolve(route("- backendRefs: [{name: v1, port: 80}]", '{group: "", kind: Service, name: bare}'))
    got = conditions(resolved)
    assert got[ConditionType.ACCEPTED].status
    assert "has no waypoint" in got[ConditionType.RESOLVED_WAYPOINTS].message
    _, resolved = resolve(route("- backendRefs: [{name: v1, port: 80}]"))
    assert ConditionType.RESOLVED_WAYPOINTS not in conditions(resolved)


def test_conditions_are_per_parent():
    r = route("- backendRefs: [{name: v1, port: 80}]", '{group: "", kind: Service, name: echo}, '
                                                        '{group: "", kind: Service, name: nope}')
    index, resolved = resolve(r)
    assert [p.accepted for p in resolved.parents] == [True, False]
    assert index.table("shop/echo.shop.svc.cluster.local", 80) is not None


def test_a_consumer_route_applies_in_a_waypoint_of_its_namespace_only():
    r = route("- backendRefs: [{name: other, namespace: back, port: 80}]",
              '{group: "", kind: Service, name: other, namespace: back}', ns="shop")
    index, resolved = resolve(r)
    assert "consumer route of namespace shop" in conditions(resolved)[ConditionType.ACCEPTED].message
    assert index.table("back/other.back.svc.cluster.local", 80) is None
    assert index.table("back/other.back.svc.cluster.local", 80, "elsewhere") is None
    assert index.table("back/other.back.svc.cluster.local", 80, "shop").http[0].route is resolved


def test_a_rule_whose_backends_are_all_invalid_stays_accepted_and_answers_500_for_every_request():
    index, resolved = resolve(route("- backendRefs: [{name: nope, port: 80}, {name: gone, port: 80, weight: 3}]"))
    got = conditions(resolved)
    assert got[ConditionType.ACCEPTED].status and got[ConditionType.RESOLVED_REFS].reason is Reason.BACKEND_NOT_FOUND
    assert "nope" in got[ConditionType.RESOLVED_REFS].message and "gone" in got[ConditionType.RESOLVED_REFS].message
    rule = resolved.rules[0]
    assert not rule.answers_500              # backends carry weight: each request goes to one, and is answered 500
    assert all(not choose_backend(rule.backends, i / 10).valid for i in range(10))


def test_hostnames_play_no_part_for_a_service_parent():
    text = ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: h, namespace: shop}\n"
            "spec:\n  parentRefs: [{group: '', kind: Service, name: echo}]\n  hostnames: [elsewhere.example.com]\n"
            "  rules: [{backendRefs: [{name: v1, port: 80}]}]\n")
    hosted = http_route(yaml.safe_load(text))
    assert hosted.hostnames == ("elsewhere.example.com",)
    index, resolved = resolve(hosted)
    assert conditions(resolved)[ConditionType.ACCEPTED].status
    assert index.table("shop/echo.shop.svc.cluster.local", 80).http[0].route is resolved
