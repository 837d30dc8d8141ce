"""VirtualServices and DestinationRules in the mesh store: put, replaced and removed like
every kind, and what a waypoint applies to a service, in istiod's order, worked out once
per change of the namespaces it reads."""
from __future__ import annotations

import ipaddress
import textwrap

from hypothesis import given, settings, strategies as st

from meshcore.sources.config import load
from meshcore.state import Kind, MeshStore, Remove, Service, Upsert, Workload
from meshcore.traffic.destinationrule import destination_rule, destination_rule_for
from meshcore.traffic.istio_index import EMPTY_ISTIO
from meshcore.traffic.virtualservice import virtual_service
from meshcore.traffic.virtualservice_select import waypoint_virtual_services

HOST = "reviews.shop.svc.cluster.local"


def svc(name: str, vip: str, namespace: str = "shop") -> Service:
    return Service(name=name, namespace=namespace, hostname=f"{name}.{namespace}.svc.cluster.local",
                   vips=(("", ipaddress.ip_address(vip)),), ports=((80, 8080),))


REVIEWS, RATINGS = svc("reviews", "10.96.0.1"), svc("ratings", "10.96.0.2")


def vs(name: str, namespace: str = "shop", *, hosts=(HOST,), created: str = "", version: str = "v1", **spec):
    meta = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return virtual_service({"apiVersion": f"networking.istio.io/{version}", "kind": "VirtualService",
                            "metadata": meta, "spec": {"hosts": list(hosts),
                                                       "http": [{"route": [{"destination": {"host": hosts[0]}}]}],
                                                       **spec}})


def dr(name: str, namespace: str = "shop", *, host: str = HOST, created: str = "", **spec):
    meta = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return destination_rule({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                             "metadata": meta, "spec": {"host": host, **spec}})


def names(resources) -> list[str]:
    return [r.key for r in resources]


# -- put, replace, remove -----------------------------------------------------------------------

def test_upsert_replace_and_remove_like_every_kind():
    store = MeshStore()
    a, rule = vs("a"), dr("a")
    applied = store.apply("files", [Upsert(REVIEWS), Upsert(a), Upsert(rule)])
    assert applied.keys(Kind.VIRTUAL_SERVICE) == {"shop/a"} and applied.keys(Kind.DESTINATION_RULE) == {"shop/a"}
    assert store.view.virtual_services == (a,) and store.view.destination_rules == (rule,)
    assert store.view.virtual_services_for(REVIEWS, "shop") == (a,)
    assert store.view.destination_rule_for(REVIEWS, "shop") == rule

    assert not store.apply("files", [Upsert(vs("a"))])            # the same again: nothing changes
    before = store.view
    changed = vs("a", http=[{"timeout": "1s", "route": [{"destination": {"host": HOST}}]}])
    store.apply("files", [Upsert(changed)])
    assert store.view.virtual_services_for(REVIEWS, "shop") == (changed,)
    assert before.virtual_services_for(REVIEWS, "shop") == (a,)      # a view handed out never changes

    applied = store.apply("files", [Remove(Kind.VIRTUAL_SERVICE, "shop/a"), Remove(Kind.DESTINATION_RULE, "shop/a")])
    assert applied.keys(Kind.VIRTUAL_SERVICE) == {"shop/a"}
    assert store.view.virtual_services == () and store.view.destination_rules == ()
    assert store.view.virtual_services_for(REVIEWS, "shop") == ()
    assert store.view.destination_rule_for(REVIEWS, "shop") is None
    assert store.view.istio is EMPTY_ISTIO


def test_replace_diffs_them_and_an_edit_of_what_the_waypoint_keeps_unapplied_is_an_edit():
    store = MeshStore()
    heard = []
    store.subscribe(lambda change: heard.append(dict(change.changed)), (Kind.VIRTUAL_SERVICE, Kind.DESTINATION_RULE))
    def tcp(port):
        return [{"route": [{"destination": {"host": HOST, "port": {"number": port}}}]}]
    first = vs("a", tcp=tcp(9000))
    store.replace("files", [REVIEWS, first, dr("a")], atomic=True)
    assert heard == [{Kind.SERVICE: {REVIEWS.key}, Kind.VIRTUAL_SERVICE: {"shop/a"},
                      Kind.DESTINATION_RULE: {"shop/a"}}]
    # only the tcp routes differ (kept as written, not applied): still a change, shown as written
    edited = vs("a", tcp=tcp(9001))
    store.replace("files", [REVIEWS, edited, dr("a")], atomic=True)
    assert heard[-1] == {Kind.VIRTUAL_SERVICE: {"shop/a"}}
    assert store.view.virtual_services == (edited,)
    store.replace("files", [REVIEWS], atomic=True)
    assert heard[-1] == {Kind.VIRTUAL_SERVICE: {"shop/a"}, Kind.DESTINATION_RULE: {"shop/a"}}


def test_another_source_cannot_replace_them():
    store = MeshStore()
    store.apply("files", [Upsert(vs("a")), Upsert(dr("a"))])
    applied = store.apply("xds", [Upsert(vs("a")), Upsert(dr("a"))])
    assert sorted(map(str, applied.rejected)) == ["DestinationRule shop/a: owned by source files",
                                                  "VirtualService shop/a: owned by source files"]


# -- which VirtualServices, in which order --------------------------------------------------------

ORDERED = [
    vs("private", exportTo=["."]),                               # shop only
    vs("mesh-private", "mesh", exportTo=["."]),                  # a waypoint in mesh only
    vs("to-mesh", exportTo=["mesh"]),                            # exported to mesh by name, not visible in shop
    vs("public-new", created="2020-01-01T00:00:00Z"),
    vs("public-old", created="2019-01-01T00:00:00Z"),
    vs("wildcard", hosts=("*.shop.svc.cluster.local",), created="2021-01-01T00:00:00Z"),
    vs("elsewhere", "other"),                                    # neither the service's namespace nor the waypoint's
    vs("gateway-only", gateways=["istio-system/edge"]),          # not bound to the mesh gateway
    vs("ratings", hosts=("ratings.shop.svc.cluster.local",)),    # another host
]


def test_virtual_services_for_a_waypoint_in_istiods_order():
    store = MeshStore()
    store.apply("files", [Upsert(REVIEWS), Upsert(RATINGS), *map(Upsert, ORDERED)])
    view = store.view
    # private to the waypoint's namespace, exported to it by name, public (each oldest first)
    assert names(view.virtual_services_for(REVIEWS, "shop")) == [
        "shop/private", "shop/public-old", "shop/public-new", "shop/wildcard"]
    assert names(view.virtual_services_for(REVIEWS, "mesh")) == [
        "mesh/mesh-private", "shop/to-mesh", "shop/public-old", "shop/public-new", "shop/wildcard"]
    assert names(view.virtual_services_for(RATINGS, "shop")) == ["shop/ratings", "shop/wildcard"]
    assert view.virtual_services_for(REVIEWS, "faraway") == tuple(
        r for r in view.virtual_services_for(REVIEWS, "shop") if r.export_to != (".",))
    assert len(view.virtual_services) == len(ORDERED)


def test_an_answer_is_worked_out_once_and_kept_until_its_namespaces_change():
    store = MeshStore()
    store.apply("files", [Upsert(REVIEWS), *map(Upsert, ORDERED)])
    first = store.view.virtual_services_for(REVIEWS, "shop")
    assert store.view.virtual_services_for(REVIEWS, "shop") is first
    in_mesh = store.view.virtual_services_for(REVIEWS, "mesh")

    index = store.view.istio
    workload = Workload(uid="w", name="w", namespace="shop", ips=(ipaddress.ip_address("10.0.0.5"),))
    store.apply("files", [Upsert(workload), Upsert(RATINGS)])      # neither a VirtualService nor a DestinationRule
    assert store.view.istio is index
    assert store.view.virtual_services_for(REVIEWS, "shop") is first

    store.apply("files", [Upsert(vs("other-host", hosts=("ratings.shop.svc.cluster.local",)))])  # another host
    assert store.view.virtual_services_for(REVIEWS, "shop") is first
    store.apply("files", [Upsert(vs("late", "mesh", exportTo=["."]))])  # in the waypoint namespace mesh only
    assert store.view.virtual_services_for(REVIEWS, "shop") is first
    assert names(store.view.virtual_services_for(REVIEWS, "mesh")) == ["mesh/late", *names(in_mesh)]

    store.apply("files", [Remove(Kind.VIRTUAL_SERVICE, "shop/public-old")])
    assert names(store.view.virtual_services_for(REVIEWS, "shop")) == [
        "shop/private", "shop/public-new", "shop/wildcard"]


# -- which DestinationRule ---------------------------------------------------------------------

RULES = [
    dr("shop-private", exportTo=["."]),
    dr("mesh-own", "mesh"),
    dr("root-wildcard", "istio-system", host="*.shop.svc.cluster.local"),
    dr("ratings-new", host="ratings.shop.svc.cluster.local", created="2020-01-01T00:00:00Z",
       subsets=[{"name": "v1", "labels": {"version": "v1"}}]),
    dr("ratings-old", host="ratings.shop.svc.cluster.local", created="2019-01-01T00:00:00Z",
       subsets=[{"name": "v2", "labels": {"version": "v2"}}]),
    dr("selects-pods", "mesh", workloadSelector={"matchLabels": {"app": "x"}}, exportTo=["."]),
]


def test_destination_rule_for_a_waypoint_in_istiods_lookup_order():
    store = MeshStore()
    store.apply("files", [Upsert(REVIEWS), Upsert(RATINGS), *map(Upsert, RULES)])
    view = store.view
    assert view.destination_rule_for(REVIEWS, "shop").key == "shop/shop-private"      # the waypoint's namespace
    assert view.destination_rule_for(REVIEWS, "mesh").key == "mesh/mesh-own"
    # the service's namespace keeps its rule to itself: the root namespace's applies
    assert view.destination_rule_for(REVIEWS, "other").key == "istio-system/root-wildcard"
    # two rules for one host: merged, the oldest first
    merged = view.destination_rule_for(RATINGS, "other")
    assert merged.name == "ratings-old" and [s.name for s in merged.subsets] == ["v2", "v1"]
    assert view.destination_rule_for(RATINGS, "other") is merged               # remembered


def test_the_root_namespace_is_the_stores():
    rule = dr("root-wildcard", "mesh-root", host="*.shop.svc.cluster.local")
    store = MeshStore(root_namespace="mesh-root")
    store.apply("files", [Upsert(REVIEWS), Upsert(rule), Upsert(dr("old-root", "istio-system"))])
    assert store.view.destination_rule_for(REVIEWS, "other") == rule


def test_configuration_files_carry_them_into_the_view():
    view = load(inline=textwrap.dedent(f"""\
        services:
        - {{name: reviews, namespace: shop, hostname: {HOST}, vips: ["/10.96.0.1"], ports: {{80: 8080}}}}
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata: {{name: reviews, namespace: shop}}
        spec:
          hosts: [reviews]
          http: [{{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: DestinationRule
        metadata: {{name: reviews, namespace: shop}}
        spec:
          host: reviews
          subsets: [{{name: v1, labels: {{version: v1}}}}]
        """))
    (reviews,) = view.services
    (found,) = view.virtual_services_for(reviews, "shop")
    assert found.http[0].route[0].destination.host == HOST
    assert view.destination_rule_for(reviews, "shop").subset("v1").labels == (("version", "v1"),)


# -- what the store remembers agrees with asking afresh ---------------------------------------------

VS_POOL = [vs("a", exportTo=["."]), vs("a", exportTo=["mesh"]), vs("b", "mesh", exportTo=["."]),
           vs("c", created="2020-01-01T00:00:00Z"), vs("c", hosts=("*.shop.svc.cluster.local",)),
           vs("d", "other", exportTo=["shop"]), vs("d", hosts=("ratings.shop.svc.cluster.local",)),
           vs("e", "mesh", hosts=("ratings.shop.svc.cluster.local", HOST)),
           vs("e", "mesh", hosts=("ratings.shop.svc.cluster.local", "*.example.com"))]
DR_POOL = [dr("a", exportTo=["."]), dr("a"), dr("b", "mesh"), dr("c", "istio-system", host="*.shop.svc.cluster.local"),
           dr("d", created="2019-01-01T00:00:00Z", subsets=[{"name": "v9"}]),
           dr("d", host="ratings.shop.svc.cluster.local"), dr("e", "istio-system", host="ratings.shop.svc.cluster.local")]
_PUT = st.sampled_from(VS_POOL + DR_POOL).map(Upsert)
_REMOVE = st.sampled_from([Remove(Kind.VIRTUAL_SERVICE, r.key) for r in VS_POOL]
                          + [Remove(Kind.DESTINATION_RULE, r.key) for r in DR_POOL])
_STEPS = st.lists(st.lists(st.one_of(_PUT, _REMOVE), min_size=1, max_size=4), min_size=1, max_size=8)
_ASKED = [(s, ns) for s in (REVIEWS, RATINGS) for ns in ("shop", "mesh", "other")]


@settings(max_examples=100, deadline=None)
@given(_STEPS, st.lists(st.sampled_from(_ASKED), max_size=6))
def test_remembered_answers_agree_with_fresh_ones(steps, asked_between):
    store = MeshStore()
    for step in steps:
        changes = {(c.kind, c.key): c for c in step}
        store.apply("files", list(changes.values()))
        view = store.view
        for service, ns in asked_between:                      # answers remembered on the way
            view.virtual_services_for(service, ns)
            view.destination_rule_for(service, ns)
        for service, ns in _ASKED:
            assert view.virtual_services_for(service, ns) == tuple(waypoint_virtual_services(
                view.virtual_services, hostname=service.hostname, service_namespace=service.namespace,
                waypoint_namespace=ns))
            assert view.destination_rule_for(service, ns) == destination_rule_for(
                view.destination_rules, service.hostname, waypoint_namespace=ns,
                service_namespace=service.namespace)
