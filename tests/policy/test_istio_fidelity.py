"""Decisions that must be Istio's and ztunnel's own, each case citing where its
behaviour is specified. Policies load from YAML as users write them."""
import textwrap

import pytest

from meshcore._core.policy import PolicyEngine
from meshcore.errors import ConfigError
from meshcore.policy import PolicyTarget, load_authorization_policies, ztunnel_policy
from meshcore.policy.paths import normalize, template_regex

SHOP = PolicyTarget.of("shop", {"app": "web"})
CLIENT = "cluster.local/ns/shop/sa/client"


def engine(yaml_text, layer="l7"):
    return PolicyEngine(load_authorization_policies(textwrap.dedent(yaml_text), "test.yaml"), layer=layer)


def allowed(e, workload=SHOP, principal=CLIENT, **l7):
    return bool(e.evaluate(workload, principal, "10.0.0.1", "10.0.0.2", 8080, **l7))


def ap(spec, name="p", namespace="shop", annotations=""):
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}{annotations}}}\nspec: {spec}\n")


# -- hosts: the whole :authority, case-insensitively --------------------------------------
# Istio (since 1.6, "Required update for authorization policies"): an exact host matches
# only the exact string; `example.com:*` is how a policy matches any port.
@pytest.mark.parametrize("hosts, authority, expected", [
    (["example.com"], "example.com", True),
    (["example.com"], "EXAMPLE.com", True),
    (["example.com"], "example.com:8080", False),
    (["example.com:*"], "example.com:8080", True),
    (["example.com", "example.com:*"], "example.com:80", True),
    (["*.example.com"], "api.example.com", True),
])
def test_hosts_are_matched_whole(hosts, authority, expected):
    e = engine(ap(f"{{rules: [{{to: [{{operation: {{hosts: {hosts}}}}}]}}]}}"))
    assert allowed(e, host=authority) is expected


# -- paths: without the query string --------------------------------------------------------
# Istio's security best practices ("Understand path normalization in authorization
# policy"): policies match the path, never the query string.
def test_deny_path_is_not_escaped_by_a_query():
    e = engine(ap('{action: DENY, rules: [{to: [{operation: {paths: ["/admin"]}}]}]}'))
    assert not allowed(e, path="/admin?debug=1")
    assert not allowed(e, path="/admin#top")
    assert allowed(e, path="/admins")


def test_allow_not_paths_does_not_admit_a_query_variant():
    e = engine(ap('{rules: [{to: [{operation: {notPaths: ["/admin"]}}]}]}'))
    assert not allowed(e, path="/admin?x=1")
    assert allowed(e, path="/public?x=1")


# -- path templates ------------------------------------------------------------------------
# Istio AuthorizationPolicy Operation.paths: `{*}` and `{**}` make the path an Envoy URI
# template (envoy extensions.path.match.uri_template.v3): `*` one path segment up to the
# next `/`, `**` zero or more segments and the last operator.
@pytest.mark.parametrize("template, path, expected", [
    ("/foo/{*}", "/foo/bar", True),
    ("/foo/{*}", "/foo/bar/baz", False),
    ("/foo/{*}", "/foo/", False),
    ("/foo/{*}/baz", "/foo/bar/baz", True),
    ("/foo/{*}/baz", "/foo/a/b/baz", False),
    ("/foo/{**}", "/foo/a/b/c", True),
    ("/foo/{**}", "/foo/", True),
    ("/foo/{**}", "/bar/a", False),
    ("/foo/{**}/bar", "/foo/a/b/bar", True),
    ("/foo/{**}/bar", "/foo/bar", False),
    ("/{*}/x/{**}", "/a/x/b/c", True),
    ("/{*}/x/{**}", "/a/y/b", False),
])
def test_path_templates(template, path, expected):
    e = engine(ap(f'{{action: DENY, rules: [{{to: [{{operation: {{paths: ["{template}"]}}}}]}}]}}'))
    assert allowed(e, path=path) is (not expected)
    assert (template_regex(template).fullmatch(path) is not None) is expected


@pytest.mark.parametrize("template, reason", [
    ("/foo/{bar}", "{bar} is not an operator"),
    ("/foo{*}", "an operator must be a whole segment"),
    ("/{**}/{*}", "{**} must be the last operator"),
    ("/foo/{*}*", "an operator must be a whole segment"),
    ("foo/{*}", "must start with /"),
    ("/foo/{*", "unbalanced brace"),
])
def test_bad_path_templates_are_refused(template, reason):
    with pytest.raises(ConfigError) as err:
        engine(ap(f'{{rules: [{{to: [{{operation: {{paths: ["{template}"]}}}}]}}]}}'))
    assert "spec.rules[0].to[0].operation.paths[0]" in str(err.value) and reason in str(err.value)


# -- header names are case-insensitive (RFC 9110 5.1) ----------------------------------------
@pytest.mark.parametrize("policy_name, request_name", [
    ("x-tenant", "X-Tenant"), ("X-Tenant", "x-tenant"), ("X-TENANT", "x-TeNaNt")])
def test_header_names_ignore_case(policy_name, request_name):
    e = engine(ap(f'{{rules: [{{when: [{{key: "request.headers[{policy_name}]", values: [gold]}}]}}]}}'))
    assert allowed(e, headers={request_name: "gold"})
    assert not allowed(e, headers={request_name: "silver"})


# -- serviceAccounts -------------------------------------------------------------------------
# Istio Source.serviceAccounts: `<namespace>/<name>`, or `<name>` for the policy's own
# namespace; no wildcards.
def test_bare_service_account_is_the_policys_namespace():
    e = engine(ap('{rules: [{from: [{source: {serviceAccounts: ["client"]}}]}]}'), "l4")
    assert allowed(e, principal="cluster.local/ns/shop/sa/client")
    assert not allowed(e, principal="cluster.local/ns/jobs/sa/client")


@pytest.mark.parametrize("value", ["shop/*", "*", "client*"])
def test_service_account_wildcards_are_refused(value):
    with pytest.raises(ConfigError, match="wildcards are not supported in serviceAccounts"):
        engine(ap(f'{{rules: [{{from: [{{source: {{serviceAccounts: ["{value}"]}}}}]}}]}}'))


# -- policies that would load and silently do nothing: refused like istiod refuses them ------
@pytest.mark.parametrize("spec, where, reason", [
    ("{rules: [{from: []}]}", "spec.rules[0].from", "`from` must not be empty"),
    ("{rules: [{to: []}]}", "spec.rules[0].to", "`to` must not be empty"),
    ('{selector: {matchLabels: {app: "*"}}, rules: [{}]}', "spec.selector.matchLabels.app",
     "wildcards are not supported in selector labels"),
])
def test_noop_policies_are_refused(spec, where, reason):
    with pytest.raises(ConfigError) as err:
        engine(ap(spec))
    assert where in str(err.value) and reason in str(err.value)


# the istio.io/dry-run annotation is read with Go's strconv.ParseBool
@pytest.mark.parametrize("value, dry", [("1", True), ("t", True), ("True", True), ("TRUE", True),
                                        ("0", False), ("F", False), ("false", False)])
def test_dry_run_annotation_takes_go_booleans(value, dry):
    p, = load_authorization_policies(ap("{rules: [{}]}", annotations=f', annotations: {{istio.io/dry-run: "{value}"}}'))
    assert p.dry_run is dry


def test_dry_run_annotation_that_go_refuses_is_refused():
    with pytest.raises(ConfigError, match="'yes' is not a boolean"):
        load_authorization_policies(ap("{rules: [{}]}", annotations=', annotations: {istio.io/dry-run: "yes"}'))


# -- ztunnel's policy scopes (ztunnel src/state/policy.rs: policies indexed by scope) --------
def zt(scope, namespace, action="Deny"):
    return ztunnel_policy({"name": "z", "namespace": namespace, "scope": scope, "action": action,
                           "dryRun": False, "rules": [[[{"destinationPorts": [8080]}]]]}, "policies[0]")


@pytest.mark.parametrize("scope, namespace, workload, applies", [
    ("Namespace", "istio-system", PolicyTarget.of("istio-system"), True),
    ("Namespace", "istio-system", PolicyTarget.of("shop"), False),     # not mesh-wide
    ("Namespace", "shop", PolicyTarget.of("shop"), True),
    ("Global", "shop", PolicyTarget.of("jobs"), True),                 # mesh-wide wherever it lives
    ("Global", "istio-system", PolicyTarget.of("jobs"), True),
    ("WorkloadSelector", "shop", PolicyTarget.of("shop"), False),      # only where attached
    ("WorkloadSelector", "shop", PolicyTarget.of("shop", attached=["shop/z"]), True),
])
def test_ztunnel_scopes(scope, namespace, workload, applies):
    e = PolicyEngine([zt(scope, namespace)])
    assert (not e.evaluate(workload, CLIENT, "10.0.0.1", "10.0.0.2", 8080)) is applies


# -- path normalization, for the L7 side (Istio meshConfig pathNormalization) ------------------
@pytest.mark.parametrize("path, mode, expected", [
    ("/a/b?x=1", "NONE", "/a/b"),
    ("/a/./b/../c", "BASE", "/a/c"),
    ("/a\\b", "BASE", "/a/b"),
    ("/a//b", "BASE", "/a//b"),
    ("/a//b", "MERGE_SLASHES", "/a/b"),
    ("/a%2Fb%2f..%5Cc", "DECODE_AND_MERGE_SLASHES", "/a/c"),
    ("/../../etc", "BASE", "/etc"),
    ("/a/b/..", "BASE", "/a/"),
])
def test_path_normalization(path, mode, expected):
    assert normalize(path, mode) == expected


# -- a denial at L4 because a rule needed L7 says so ------------------------------------------
def test_l4_denial_names_the_dropped_rule_and_why():
    from meshcore.policy import PolicyEngine as public_engine          # the public import path
    assert public_engine is PolicyEngine
    e = engine(ap('{rules: [{to: [{operation: {methods: [GET], paths: ["/api*"]}}]}]}', name="api"), "l4")
    d = e.evaluate(SHOP, CLIENT, "10.0.0.1", "10.0.0.2", 8080)
    assert not d
    assert d.reason == ("denied: no ALLOW policy matched (shop/api rule 0 needs methods, paths, which a node "
                        "proxy cannot see: it never matches here (route the traffic through a waypoint to "
                        "enforce it))")


def test_node_logs_each_l4_reduction_once(caplog, tmp_path):
    from meshcore.sources.config import parse
    from meshcore.state import MeshStore
    path = tmp_path / "p.yaml"
    path.write_text(ap('{action: DENY, rules: [{from: [{source: {namespaces: [jobs]}}], '
                       'to: [{operation: {paths: ["/admin"]}}]}]}', name="no-admin"))
    store = MeshStore()
    with caplog.at_level("WARNING", logger="meshcore.state"):
        store.replace("files", parse([str(path)]).resources)
        store.replace("files", parse([str(path)]).resources)   # a reload of the same policy: no second line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"shop/no-admin rule 0 denies on its L4 part only: paths cannot be seen without a waypoint "
                     f"and are taken to match ({path})"]
