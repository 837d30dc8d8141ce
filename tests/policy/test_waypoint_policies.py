"""Policies attached to waypoints by targetRefs: parsing and refusals, which waypoint
(and never which node) enforces them, and their evaluation through the compiled L7 set."""
import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meshcore._core.policy import PolicyEngine
from meshcore.errors import ConfigError
from meshcore.policy import load_authorization_policies
from meshcore.policy.model import Action, Policy, PolicyTarget, Scope, StringMatch, TargetRef, applies_to, \
    waypoint_policies
from meshcore.policy.waypoint import denied_response, evaluate_request

from reference import Request, policy_holds
from test_engine_vs_reference import matches, requests

GW = "gateway.networking.k8s.io"
WAYPOINT = ("shop", "waypoint")
WEB = ("shop", "web")
CLIENT = "cluster.local/ns/shop/sa/client"


def ap(name, namespace, spec):
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n")


def one(spec, namespace="shop"):
    policy, = load_authorization_policies(ap("p", namespace, spec), "p.yaml")
    return policy


# -- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec, refs", [
    ("{targetRefs: [{kind: Gateway, group: %s, name: waypoint}]}" % GW, (TargetRef("Gateway", GW, "waypoint"),)),
    ("{targetRef: {kind: Gateway, group: %s, name: waypoint}}" % GW, (TargetRef("Gateway", GW, "waypoint"),)),
    ('{targetRefs: [{kind: Service, group: "", name: web}]}', (TargetRef("Service", "core", "web"),)),
    ("{targetRefs: [{kind: Service, name: web}]}", (TargetRef("Service", "core", "web"),)),
    ("{targetRefs: [{kind: Service, group: core, name: web, namespace: shop}]}",
     (TargetRef("Service", "core", "web"),)),
    ("{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}]}",
     (TargetRef("ServiceEntry", "networking.istio.io", "ext"),)),
    ("{targetRefs: [{kind: Service, name: a}, {kind: Service, name: b}, {kind: Service, name: a}]}",
     (TargetRef("Service", "core", "a"), TargetRef("Service", "core", "b"))),
])
def test_target_refs_parse(spec, refs):
    policy = one(spec)
    assert policy.target_refs == refs
    assert policy.scope is Scope.TARGET_REFS and policy.selector is None


def test_gateway_class_parses_in_any_namespace_but_the_engine_takes_it_from_the_root_only():
    spec = "{targetRefs: [{kind: GatewayClass, group: %s, name: istio-waypoint}]}" % GW
    root = one(spec, "istio-system")
    assert root.target_refs == (TargetRef("GatewayClass", GW, "istio-waypoint"),)
    PolicyEngine([root], layer="l7")
    PolicyEngine([one(spec, "mesh-root")], layer="l7", root_namespace="mesh-root")
    with pytest.raises(ValueError) as err:
        PolicyEngine([one(spec, "shop")], layer="l7")
    assert str(err.value).startswith("spec.targetRefs[0]: a GatewayClass istio-waypoint attachment")
    assert "root namespace istio-system only, not from shop" in str(err.value)


def test_a_gateway_class_outside_the_root_namespace_refuses_the_file(tmp_path):
    from meshcore.sources.config import load
    (tmp_path / "p.yaml").write_text(
        ap("all", "shop", "{targetRefs: [{kind: GatewayClass, group: %s, name: istio-waypoint}]}" % GW))
    with pytest.raises(ConfigError) as err:
        load([str(tmp_path / "p.yaml")])
    assert "spec.targetRefs[0]: a GatewayClass istio-waypoint attachment" in str(err.value)
    load([str(tmp_path / "p.yaml")], root_namespace="shop")


@pytest.mark.parametrize("spec, path, reason", [
    ("{targetRefs: [{kind: Gateway, name: waypoint}]}", "spec.targetRefs[0]", "core/Gateway cannot be a target"),
    ("{targetRefs: [{kind: Pod, name: web-0}]}", "spec.targetRefs[0]", "core/Pod cannot be a target"),
    ("{targetRefs: [{kind: HTTPRoute, group: %s, name: r}]}" % GW, "spec.targetRefs[0]",
     f"{GW}/HTTPRoute cannot be a target"),
    ("{targetRefs: [{kind: Service, group: apps, name: web}]}", "spec.targetRefs[0]", "apps/Service cannot be"),
    ("{targetRefs: [{kind: Service, name: a}, {kind: Service}]}", "spec.targetRefs[1].name",
     "required field is missing"),
    ("{targetRefs: [{name: web}]}", "spec.targetRefs[0].kind", "required field is missing"),
    ('{targetRefs: [{kind: Service, name: ""}]}', "spec.targetRefs[0].name", "must not be empty"),
    ("{targetRefs: [{kind: Service, name: web, port: 80}]}", "spec.targetRefs[0].port", "unknown field"),
    ("{targetRefs: [{kind: Service, name: web, namespace: other}]}", "spec.targetRefs[0].namespace",
     "its own namespace shop only"),
    ("{targetRefs: [{kind: GatewayClass, group: %s, name: istio}]}" % GW, "spec.targetRefs[0].name",
     "only istio-waypoint"),
    ("{targetRefs: {kind: Service, name: web}}", "spec.targetRefs", "expected a list"),
    ("{targetRef: [{kind: Service, name: web}]}", "spec.targetRef", "expected a mapping"),
    ("{targetRef: {kind: Service, name: a}, targetRefs: [{kind: Service, name: b}]}", "spec.targetRef",
     "not both"),
    ("{selector: {matchLabels: {app: web}}, targetRefs: [{kind: Service, name: web}]}", "spec.targetRefs",
     "only one of targetRefs or selector"),
    ("{selector: {matchLabels: {app: web}}, targetRef: {kind: Service, name: web}}", "spec.targetRef",
     "only one of targetRefs or selector"),
])
def test_refusals_name_path_and_reason(spec, path, reason):
    with pytest.raises(ConfigError) as err:
        load_authorization_policies(ap("bad", "shop", spec), "p.yaml")
    assert err.value.path == path, str(err.value)
    assert reason in err.value.reason, str(err.value)


# -- selection -------------------------------------------------------------------------
ALLOW_ALL = (((),),)        # one rule, one empty clause: any request


def pol(name, namespace, *refs, selector=None, scope=None, action=Action.ALLOW, rules=ALLOW_ALL, dry_run=False):
    if scope is None:
        scope = Scope.TARGET_REFS if refs else Scope.WORKLOAD_SELECTOR if selector else Scope.ROOT_OR_NAMESPACE
    return Policy(name, namespace, action, rules, scope, selector, dry_run, "", tuple(refs))


gateway = lambda name: TargetRef("Gateway", GW, name)
service = lambda name: TargetRef("Service", "core", name)
entry = lambda name: TargetRef("ServiceEntry", "networking.istio.io", name)
CLASS = TargetRef("GatewayClass", GW, "istio-waypoint")
POLICIES = [
    pol("to-waypoint", "shop", gateway("waypoint")),
    pol("to-other-waypoint", "shop", gateway("other")),
    pol("same-name-elsewhere", "billing", gateway("waypoint")),
    pol("to-web", "shop", service("web")),
    pol("to-db", "shop", service("db")),
    pol("to-web-entry", "shop", entry("web")),
    pol("every-waypoint", "istio-system", CLASS),
    pol("selector", "shop", selector=(("app", "web"),)),
    pol("namespace-wide", "shop"),
    pol("mesh-wide", "istio-system"),
    pol("ztunnel-global", "shop", scope=Scope.GLOBAL),
]


@pytest.mark.parametrize("waypoint, svc, kind, expected", [
    (WAYPOINT, WEB, "Service", ["to-waypoint", "to-web", "every-waypoint"]),
    (WAYPOINT, ("shop", "db"), "Service", ["to-waypoint", "to-db", "every-waypoint"]),
    (WAYPOINT, None, "Service", ["to-waypoint", "every-waypoint"]),
    (WAYPOINT, WEB, "ServiceEntry", ["to-waypoint", "to-web-entry", "every-waypoint"]),
    (("billing", "waypoint"), WEB, "Service", ["same-name-elsewhere", "to-web", "every-waypoint"]),
    (("billing", "waypoint"), ("billing", "web"), "Service", ["same-name-elsewhere", "every-waypoint"]),
    (("shop", "other"), None, "Service", ["to-other-waypoint", "every-waypoint"]),
])
def test_which_policies_a_waypoint_enforces(waypoint, svc, kind, expected):
    chosen = waypoint_policies(POLICIES, waypoint=waypoint, service=svc, root_namespace="istio-system",
                               service_kind=kind)
    assert [p.name for p in chosen] == expected
    engine = PolicyEngine(POLICIES, layer="l7")
    assert engine.waypoint_policy_set(waypoint, svc, kind).policies == [f"{p.namespace}/{p.name}" for p in chosen]


def test_gateway_class_is_every_waypoints_from_the_root_namespace_only():
    elsewhere = dataclasses.replace(POLICIES[6], namespace="shop")
    assert waypoint_policies([elsewhere], waypoint=WAYPOINT, service=WEB, root_namespace="istio-system") == []
    assert waypoint_policies([elsewhere], waypoint=WAYPOINT, service=WEB, root_namespace="shop") == [elsewhere]
    assert waypoint_policies([POLICIES[6]], waypoint=WAYPOINT, service=WEB, root_namespace="shop") == []


def test_target_ref_policies_are_never_a_nodes():
    web = PolicyTarget.of("shop", {"app": "web"}, "web-0", attached=("shop/to-web",))
    node = [p.name for p in POLICIES if applies_to(p, web, "istio-system")]
    assert node == ["selector", "namespace-wide", "mesh-wide", "ztunnel-global"]
    for layer in ("l4", "l7"):
        table = PolicyEngine(POLICIES, layer=layer).for_workload(web)
        assert table.policies == [f"{p.namespace}/{p.name}" for p in POLICIES if p.name in node]


def test_a_node_engine_refuses_to_decide_for_a_waypoint():
    with pytest.raises(ValueError, match="layer='l7'"):
        PolicyEngine(POLICIES, layer="l4").waypoint_policy_set(WAYPOINT, WEB)


def test_waypoint_tables_are_cached_and_dropped_when_their_policies_change():
    engine = PolicyEngine(POLICIES, layer="l7")
    table = engine.waypoint_policy_set(WAYPOINT, WEB)
    assert engine.waypoint_policy_set(WAYPOINT, WEB) is table
    other = engine.waypoint_policy_set(("billing", "waypoint"), ("billing", "web"))
    deny = pol("deny-web", "shop", service("web"), action=Action.DENY)
    changed, rejected = engine.changed([deny])
    assert not rejected
    assert changed.waypoint_policy_set(("billing", "waypoint"), ("billing", "web")) is other
    assert "shop/deny-web" in changed.waypoint_policy_set(WAYPOINT, WEB).policies
    assert "shop/deny-web" not in engine.waypoint_policy_set(WAYPOINT, WEB).policies   # the old engine stays
    gone, _ = changed.changed((), ["shop/deny-web"])
    assert "shop/deny-web" not in gone.waypoint_policy_set(WAYPOINT, WEB).policies
    root, _ = changed.changed([pol("every-2", "istio-system", CLASS)])
    assert "istio-system/every-2" in root.waypoint_policy_set(("billing", "waypoint"), ("billing", "web")).policies


# -- evaluation ------------------------------------------------------------------------
DOC = "\n---\n".join([
    ap("web-reads", "shop", """
  targetRefs: [{kind: Service, name: web}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ["/api/{*}/items", "/public/*"]}}]
  - from: [{source: {namespaces: [ops]}}]
  - to: [{operation: {methods: [POST]}}]
    when: [{key: "request.headers[X-Tenant]", values: [gold]}]"""),
    ap("no-admin", "shop", """
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]"""),
    ap("audit-posts", "shop", """
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]"""),
    ap("try-deny-head", "shop", """
  metadata: {}
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [HEAD]}}]}]""").replace("  metadata: {}\n", "").replace(
        "metadata: {name: try-deny-head, namespace: shop}",
        "metadata: {name: try-deny-head, namespace: shop, annotations: {istio.io/dry-run: 'true'}}"),
])


@pytest.fixture(scope="module")
def web_table():
    engine = PolicyEngine(load_authorization_policies(DOC, "doc.yaml"), layer="l7")
    return engine.waypoint_policy_set(WAYPOINT, WEB)


@pytest.mark.parametrize("peer, method, path, headers, allowed, policy", [
    (CLIENT, "GET", "/api/v1/items", None, True, "shop/web-reads"),
    (CLIENT, "GET", "/api/v1/items?page=2", None, True, "shop/web-reads"),
    (CLIENT, "GET", "/api/v1/x/items", None, False, None),                 # {*} is one segment
    (CLIENT, "DELETE", "/api/v1/items", None, False, None),
    (CLIENT, "GET", "/public/index.html", None, True, "shop/web-reads"),
    (CLIENT, "GET", "/public/../admin", None, False, "shop/no-admin"),     # normalized before matching
    (CLIENT, "GET", "/public/./a/../b", None, True, "shop/web-reads"),
    (CLIENT, "GET", "/public/%2e%2e/admin", None, False, "shop/no-admin"),  # unreserved decoded first
    (CLIENT, "GET", "/public/%2E%2E/admin", None, False, "shop/no-admin"),
    (CLIENT, "GET", "/%61dmin", None, False, "shop/no-admin"),
    (CLIENT, "GET", "http://web/admin", None, False, "shop/no-admin"),      # absolute-form: its path
    (CLIENT, "GET", "/public/a%00", None, False, None),                     # refused, whatever the policies
    (CLIENT, "GET", "/public/a#x", None, False, None),
    (CLIENT, "GET", "/admin", None, False, "shop/no-admin"),
    ("cluster.local/ns/ops/sa/oncall", "GET", "/admin/x", None, False, "shop/no-admin"),   # DENY first
    ("cluster.local/ns/ops/sa/oncall", "DELETE", "/anything", None, True, "shop/web-reads"),  # namespace
    ("cluster.local/ns/shop/sa/other", "GET", "/api/v1/items", None, False, None),           # principal
    (None, "GET", "/api/v1/items", None, False, None),
    (None, "POST", "/orders", {"x-tenant": "gold"}, True, "shop/web-reads"),
    (None, "POST", "/orders", {"X-TENANT": "gold"}, True, "shop/web-reads"),
    (None, "POST", "/orders", {"x-tenant": "silver"}, False, None),
    (None, "POST", "/admin", {"x-tenant": "gold"}, False, "shop/no-admin"),
])
def test_evaluation(web_table, peer, method, path, headers, allowed, policy):
    d = evaluate_request(web_table, peer=peer, source_ip="10.0.0.9", destination_ip="10.96.0.5", port=80,
                         method=method, path=path, host="web.shop.svc.cluster.local", headers=headers)
    assert (d.allowed, d.policy) == (allowed, policy), d


def test_the_peer_identity_may_be_a_spiffe_id(web_table):
    from meshcore.identity.spiffe import SpiffeId
    d = evaluate_request(web_table, peer=SpiffeId.from_principal(CLIENT), source_ip="10.0.0.9",
                         destination_ip="10.96.0.5", port=80, method="GET", path="/public/a")
    assert d.allowed and d.policy == "shop/web-reads"


def test_normalization_modes(web_table):
    args = dict(peer=CLIENT, source_ip="10.0.0.9", destination_ip="10.96.0.5", port=80, method="GET")
    assert evaluate_request(web_table, path="//admin", normalization="MERGE_SLASHES", **args).policy == "shop/no-admin"
    assert evaluate_request(web_table, path="//admin", **args).policy is None       # BASE keeps //
    # what normalization is for: unnormalized, /public/* lets /admin through
    assert evaluate_request(web_table, path="/public/../admin", normalization="NONE", **args).policy == "shop/web-reads"
    assert evaluate_request(web_table, path="/public%2F..%2Fadmin", normalization="DECODE_AND_MERGE_SLASHES",
                            **args).policy == "shop/no-admin"
    assert evaluate_request(web_table, path="/public%2F..%2Fadmin", **args).policy is None   # BASE: not decoded


def test_audit_and_dry_run_are_reported(web_table):
    d = evaluate_request(web_table, peer=None, source_ip="10.0.0.9", destination_ip="10.96.0.5", port=80,
                         method="POST", path="/orders", headers={"x-tenant": "gold"})
    assert d.allowed and d.audit == ("shop/audit-posts",) and d.dry_run == () and d.shadow_allowed is True
    d = evaluate_request(web_table, peer=CLIENT, source_ip="10.0.0.9", destination_ip="10.96.0.5", port=80,
                         method="HEAD", path="/public/a")
    assert d.allowed and d.dry_run == ("shop/try-deny-head",) and d.shadow_allowed is False


def test_a_waypoint_keeps_the_l7_rules_a_node_would_drop():
    policies = load_authorization_policies(DOC, "doc.yaml")
    table = PolicyEngine(policies, layer="l7").waypoint_policy_set(WAYPOINT, WEB)
    d = table.evaluate(CLIENT, "10.0.0.9", "10.96.0.5", 80, method="GET", path="/public/a")
    assert d.allowed


# -- the answer to a denied request ----------------------------------------------------
@pytest.mark.parametrize("headers, grpc", [
    ({}, False), ({"content-type": "application/json"}, False), ({"Content-Type": "application/grpc"}, True),
    ([(b"content-type", b"application/grpc+proto")], True), ({"content-type": "application/grpc; x=1"}, True),
    ({"content-type": "application/grpc-web"}, False), ({"content-type": "application/grpcx"}, False),
])
def test_denied_response(headers, grpc):
    r = denied_response(headers)
    if grpc:
        assert (r.status, r.body, r.trailers_only) == (200, b"", True)
        assert dict(r.headers) == {"content-type": "application/grpc", "grpc-status": "7",
                                   "grpc-message": "RBAC: access denied"}
    else:
        assert (r.status, r.body, r.trailers_only) == (403, b"RBAC: access denied", False)
        assert dict(r.headers) == {"content-type": "text/plain", "content-length": "19"}


# -- against the reference evaluator ---------------------------------------------------
def reference_decision(policies, r):
    """docs/policy.md's order, written out again for a waypoint's (all L7) policies."""
    audit = {p.key for p in policies if p.action is Action.AUDIT and policy_holds(p, r, "l7")}
    dry = {p.key for p in policies if p.dry_run and p.action is not Action.AUDIT and policy_holds(p, r, "l7")}
    enforced = [p for p in policies if not p.dry_run and p.action is not Action.AUDIT]
    if any(p.action is Action.DENY and policy_holds(p, r, "l7") for p in enforced):
        return False, audit, dry
    allows = [p for p in enforced if p.action is Action.ALLOW]
    return (not allows or any(policy_holds(p, r, "l7") for p in allows)), audit, dry


REFS = [gateway("waypoint"), gateway("other"), service("web"), service("db"), CLASS]


@st.composite
def attached_policies(draw):
    out = []
    for i in range(draw(st.integers(0, 6))):
        rules = draw(st.lists(st.lists(st.lists(matches(True), max_size=3).map(tuple), max_size=3).map(tuple),
                              max_size=3).map(tuple))
        refs = tuple(draw(st.lists(st.sampled_from(REFS), min_size=1, max_size=2, unique=True)))
        namespace = "istio-system" if CLASS in refs else draw(st.sampled_from(["shop", "billing"]))
        action = draw(st.sampled_from(list(Action)))
        out.append(pol(f"p{i}", namespace, *refs, action=action, rules=rules,
                       dry_run=action is not Action.AUDIT and draw(st.booleans())))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=attached_policies(), svc=st.sampled_from([WEB, ("shop", "db"), ("billing", "web"), None]),
       reqs=st.lists(requests, min_size=1, max_size=6))
def test_engine_against_the_reference(p, svc, reqs):
    mine = waypoint_policies(p, waypoint=WAYPOINT, service=svc, root_namespace="istio-system")
    table = PolicyEngine(p, layer="l7").waypoint_policy_set(WAYPOINT, svc)
    assert sorted(table.policies) == sorted(x.key for x in mine)
    for r in reqs:
        d = table.evaluate(r.principal, r.source_ip, r.destination_ip, r.port, r.method, r.path, r.host,
                           r.headers, r.request_principal)
        allowed, audit, dry = reference_decision(mine, r)
        assert (d.allowed, set(d.audit), set(d.dry_run)) == (allowed, audit, dry), (d, r)


# -- meshcore policy explain --waypoint ------------------------------------------------
CLI_POLICY = DOC + "\n---\n" + ap("every-waypoint", "istio-system", """
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/debug*"]}}]}]""") + "\n---\n" + ap("node-only", "shop", """
  rules: [{from: [{source: {namespaces: [shop]}}]}]""")
CLI_MESH = ("workloads:\n- {name: web-0, namespace: shop, workloadIps: [10.0.0.2], protocol: HBONE, labels: {app: web}}\n"
            "- {name: client-0, namespace: shop, serviceAccount: client, workloadIps: [10.0.0.9], protocol: HBONE}\n"
            "services:\n- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: [\"/10.96.0.5\"],"
            " ports: {\"80\": 8080}}\n")


def explain(tmp_path, *args):
    from test_policy_cli import meshcore_cmd
    (tmp_path / "policy.yaml").write_text(CLI_POLICY)
    (tmp_path / "mesh.yaml").write_text(CLI_MESH)
    return meshcore_cmd(tmp_path, "policy", "explain", "--from", CLIENT, *args, "policy.yaml", "mesh.yaml")


def test_explain_a_waypoint_allow(tmp_path):
    got = explain(tmp_path, "--waypoint", "shop/waypoint", "--service", "shop/web", "--port", "80",
                  "--method", "GET", "--path", "/public/./a")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == "ALLOW: allowed by ALLOW policy shop/web-reads"
    assert lines[1] == ("request: GET /public/./a (path as matched: /public/a) from cluster.local/ns/shop/sa/client "
                        "at 10.0.0.9 to service shop/web at 10.96.0.5:80 through waypoint shop/waypoint, layer l7")
    assert "  shop/web-reads  ALLOW  waypoints by targetRefs Service web: matched rule 0" in lines
    assert "  istio-system/every-waypoint  DENY  waypoints by targetRefs GatewayClass istio-waypoint: no rule matched" \
        in lines
    assert "  shop/no-admin  DENY  waypoints by targetRefs Gateway waypoint: no rule matched" in lines
    assert not any("node-only" in line for line in lines)          # a node's policy, not the waypoint's
    assert "dry-run policies that matched" not in got.stdout


def test_explain_a_waypoint_deny_says_what_is_answered(tmp_path):
    got = explain(tmp_path, "--waypoint", "shop/waypoint", "--service", "shop/web", "--method", "POST",
                  "--path", "/debug/x", "--header", "X-Tenant=gold", "--header", "content-type=application/grpc")
    assert got.returncode == 1, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == "DENY: denied by DENY policy istio-system/every-waypoint"
    assert "  istio-system/every-waypoint  DENY  waypoints by targetRefs GatewayClass istio-waypoint: matched " \
           "rule 0" in lines
    assert "answered: 200, grpc-status: 7, grpc-message: RBAC: access denied" in lines
    assert "audited by: shop/audit-posts" in lines


def test_explain_a_waypoint_with_nothing_attached(tmp_path):
    got = explain(tmp_path, "--waypoint", "billing/waypoint", "--destination-ip", "10.96.9.9", "--method", "GET",
                  "--path", "/debug")
    assert got.returncode == 1
    assert got.stdout.splitlines()[0] == "DENY: denied by DENY policy istio-system/every-waypoint"
    assert "answered: 403 'RBAC: access denied'" in got.stdout


def test_explain_at_the_node_leaves_waypoint_policies_out(tmp_path):
    got = explain(tmp_path, "--to", "shop/web-0")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0] == "ALLOW: allowed by ALLOW policy shop/node-only"
    assert ("not enforced here (attached to waypoints by targetRefs; see --waypoint): shop/web-reads, "
            "shop/no-admin, shop/audit-posts, shop/try-deny-head") in got.stdout


@pytest.mark.parametrize("args, message", [
    (("--waypoint", "shop"), "--waypoint shop: expected NAMESPACE/NAME"),
    (("--waypoint", "shop/waypoint", "--service", "shop/nope"), "no such service"),
    (("--waypoint", "shop/waypoint", "--to", "shop/web-0"), "give one of them"),
    (("--service", "shop/web",), "give --waypoint too"),
    (("--waypoint", "shop/waypoint"), "--destination-ip"),
])
def test_explain_waypoint_refusals(tmp_path, args, message):
    got = explain(tmp_path, *args)
    assert got.returncode == 2 and message in got.stderr, got.stderr


def test_a_request_target_that_cannot_be_decided_on_is_denied_with_the_reason(web_table):
    d = evaluate_request(web_table, peer=CLIENT, source_ip="10.0.0.9", destination_ip="10.96.0.5", port=80,
                         method="GET", path="/public/a%00")
    assert not d and d.policy is None and "%00" in d.reason


def test_a_waypoint_table_in_l4_form_is_network_rbac():
    """For a tunnel the waypoint does not read as HTTP: an ALLOW rule that needs HTTP never
    matches, a DENY rule is decided on its L4 part (one with only HTTP conditions denies all)."""
    engine = PolicyEngine(load_authorization_policies(DOC, "doc.yaml"), layer="l7")
    l4 = engine.waypoint_policy_set(WAYPOINT, WEB, layer="l4")
    assert l4 is engine.waypoint_policy_set(WAYPOINT, WEB, layer="l4")
    assert l4 is not engine.waypoint_policy_set(WAYPOINT, WEB)
    d = l4.evaluate(CLIENT, "10.0.0.9", "10.96.0.5", 80)
    assert not d and d.policy == "shop/no-admin"
    with pytest.raises(ValueError):
        engine.waypoint_policy_set(WAYPOINT, WEB, layer="l5")
