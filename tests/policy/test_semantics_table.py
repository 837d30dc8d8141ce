"""docs/policy.md rule by rule, written as users write policies (YAML), plus ztunnel's
compiled form for the edge cases only it can express."""
import yaml

from meshcore._core.policy import PolicyEngine
from meshcore.policy import PolicyTarget, load_authorization_policies, ztunnel_policy

FRONTEND = "cluster.local/ns/shop/sa/frontend"
BATCH = "cluster.local/ns/jobs/sa/batch"
CHECKOUT = PolicyTarget.of("shop", {"app": "checkout"})


def engine(text, layer="l4"):
    return PolicyEngine(load_authorization_policies(text, "t.yaml"), layer=layer)


def ap(name, spec, namespace="shop"):
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec}) + "---\n"


def allowed(e, principal=FRONTEND, src="10.1.0.5", dst="10.1.0.9", port=8080, workload=CHECKOUT, **l7):
    return e.evaluate(workload, principal, src, dst, port, **l7).allowed


def test_no_policy_allows():
    assert allowed(engine(""))


def test_allow_nothing():
    e = engine(ap("allow-nothing", {}))
    d = e.evaluate(CHECKOUT, FRONTEND, "10.1.0.5", "10.1.0.9", 8080)
    assert not d.allowed and d.policy is None and "no ALLOW policy matched" in d.reason


def test_allow_all_with_one_empty_rule():
    assert allowed(engine(ap("allow-all", {"rules": [{}]})), principal=None)


def test_deny_all_with_one_empty_rule_beats_allow_all():
    e = engine(ap("allow-all", {"rules": [{}]}) + ap("deny-all", {"action": "DENY", "rules": [{}]}))
    d = e.evaluate(CHECKOUT, FRONTEND, "10.1.0.5", "10.1.0.9", 8080)
    assert not d.allowed and d.policy == "shop/deny-all" and d.action == "DENY"


def test_from_to_when_are_anded():
    e = engine(ap("p", {"rules": [{"from": [{"source": {"principals": [FRONTEND]}}],
                                   "to": [{"operation": {"ports": ["8080"]}}],
                                   "when": [{"key": "destination.ip", "values": ["10.1.0.9"]}]}]}))
    assert allowed(e)
    assert not allowed(e, principal=BATCH)
    assert not allowed(e, port=9090)
    assert not allowed(e, dst="10.1.0.10")


def test_sources_are_ored_fields_anded_values_ored():
    e = engine(ap("p", {"rules": [{"from": [
        {"source": {"principals": [FRONTEND, "cluster.local/ns/shop/sa/web"], "ipBlocks": ["10.1.0.0/16"]}},
        {"source": {"namespaces": ["jobs"]}}]}]}))
    assert allowed(e)                                          # first source
    assert allowed(e, principal="cluster.local/ns/shop/sa/web")
    assert not allowed(e, src="10.2.0.5")                      # fields AND'ed
    assert allowed(e, principal=BATCH, src="192.168.0.1")      # second source


def test_not_fields_pass_when_none_match():
    e = engine(ap("p", {"rules": [{"from": [{"source": {"notNamespaces": ["jobs"]}}],
                                   "to": [{"operation": {"notPorts": ["9999"]}}]}]}))
    assert allowed(e)
    assert not allowed(e, principal=BATCH)
    assert not allowed(e, port=9999)
    assert allowed(e, principal=None)       # no identity: no namespace, so "not jobs" holds


def test_string_forms():
    e = engine(ap("p", {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/*"]}}]},
                                  {"from": [{"source": {"principals": ["*/sa/batch"]}}]}]}))
    assert allowed(e) and allowed(e, principal=BATCH)
    assert not allowed(e, principal="cluster.local/ns/ops/sa/admin")


def test_presence_needs_an_identity():
    e = engine(ap("p", {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}))
    assert allowed(e) and not allowed(e, principal=None)


def test_ip_blocks_v4_v6_and_single_addresses():
    e = engine(ap("p", {"rules": [{"from": [{"source": {"ipBlocks": ["10.1.0.0/16", "fd00::/64", "192.168.1.1"]}}]}]}))
    assert allowed(e, src="10.1.255.255") and allowed(e, src="fd00::abcd") and allowed(e, src="192.168.1.1")
    assert not allowed(e, src="10.2.0.0") and not allowed(e, src="fd01::1") and not allowed(e, src="192.168.1.2")


def test_selector_namespace_and_root_scopes():
    text = (ap("sel", {"selector": {"matchLabels": {"app": "checkout"}}, "rules": []})
            + ap("ns-wide", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["jobs"]}}]}]}, "payments")
            + ap("mesh", {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["6.6.6.0/24"]}}]}]}, "istio-system")
            + ap("mesh-sel", {"action": "DENY", "selector": {"matchLabels": {"tier": "db"}},
                              "rules": [{"to": [{"operation": {"ports": ["5432"]}}]}]}, "istio-system"))
    e = engine(text)
    assert not allowed(e)                                        # checkout: allow-nothing selects it
    web = PolicyTarget.of("shop", {"app": "web"})
    assert allowed(e, workload=web)                              # selector does not match web
    pay = PolicyTarget.of("payments", {"app": "pay"})
    assert not allowed(e, workload=pay, principal=BATCH)         # namespace-wide DENY
    assert allowed(e, workload=pay)
    assert not allowed(e, workload=web, src="6.6.6.6")           # mesh-wide from root namespace
    db = PolicyTarget.of("data", {"tier": "db"})
    assert not allowed(e, workload=db, port=5432) and allowed(e, workload=db, port=80)
    assert e.for_workload(web).policies == ["istio-system/mesh"]


def test_audit_and_dry_run_only_report():
    text = (ap("audit", {"action": "AUDIT", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})
            + yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                              "metadata": {"name": "would-deny", "namespace": "shop",
                                           "annotations": {"istio.io/dry-run": "true"}},
                              "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}}))
    d = engine(text).evaluate(CHECKOUT, FRONTEND, "10.1.0.5", "10.1.0.9", 8080)
    assert d.allowed and d.audit == ("shop/audit",) and d.dry_run == ("shop/would-deny",)
    assert d.shadow_allowed is False


def test_l4_fails_closed_on_l7_allow():
    e = engine(ap("p", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert not allowed(e)                         # the ALLOW can never match at L4
    assert allowed(engine(ap("p", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}), "l7"), method="GET")


def test_l4_deny_with_l7_denies_what_it_names_at_l4():
    e = engine(ap("p", {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"], "methods": ["DELETE"]}}]}]}))
    assert not allowed(e, port=8080)              # method unknown at L4: deny the port
    assert allowed(e, port=80)
    l7 = engine(ap("p", {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"], "methods": ["DELETE"]}}]}]}), "l7")
    assert allowed(l7, port=8080, method="GET") and not allowed(l7, port=8080, method="DELETE")


def test_l4_deny_with_only_l7_denies_everything():
    e = engine(ap("p", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]},
                                                    ]}))
    assert not allowed(e) and not allowed(e, port=1, principal=None)


def test_l4_deny_when_header_condition_is_assumed_true():
    e = engine(ap("p", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["jobs"]}}],
                                                      "when": [{"key": "request.headers[x-debug]", "values": ["1"]}]}]}))
    assert not allowed(e, principal=BATCH) and allowed(e)


def test_l7_fields():
    e = engine(ap("p", {"rules": [{"to": [{"operation": {"methods": ["POST"], "paths": ["/charge*"],
                                                          "hosts": ["Shop.Example"]}}],
                                   "when": [{"key": "request.headers[x-tenant]", "values": ["gold"]}]}]}), "l7")
    ok = dict(method="POST", path="/charge/1", host="shop.example", headers={"x-tenant": "gold"})
    assert allowed(e, **ok)
    assert allowed(e, **dict(ok, host="SHOP.example"))               # hosts compare case-insensitively
    assert not allowed(e, **dict(ok, host="shop.example:8080"))      # ...and whole: a port is not stripped
    assert not allowed(e, **dict(ok, method="GET"))
    assert not allowed(e, **dict(ok, path="/refund"))
    assert not allowed(e, **dict(ok, host="other.example"))
    assert not allowed(e, **dict(ok, headers={"x-tenant": "silver"}))
    assert not allowed(e, **dict(ok, headers=None))


# ztunnel's compiled form: the edge cases of docs/policy.md, "ztunnel's compiled form"
def zt(rules, action="Allow"):
    return PolicyEngine([ztunnel_policy({"name": "z", "namespace": "shop", "scope": "Namespace",
                                         "action": action, "rules": rules}, "policies[0]")])


def test_compiled_all_empty_match_never_matches():
    assert not allowed(zt([[[{}]]]))


def test_compiled_empty_clause_matches():
    assert allowed(zt([[[]]]))


def test_compiled_rule_without_clauses_matches():
    assert allowed(zt([[]]))


def test_compiled_no_rules_never_matches():
    assert not allowed(zt([]))


def test_config_md_deny_9999_example():
    e = zt([[[{"notDestinationPorts": [9999]}]]])
    assert allowed(e, port=8080) and not allowed(e, port=9999)


def test_ztunnel_string_match_forms():
    e = zt([[[{"principals": [{"Prefix": "cluster.local/ns/shop/"}]}],
             [{"namespaces": [{"Exact": "shop"}]}],
             [{"serviceAccounts": [{"namespace": "shop", "serviceAccount": "frontend"}]}]]])
    assert allowed(e) and not allowed(e, principal=BATCH)


def test_decision_names_the_policy():
    d = engine(ap("deny-jobs", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["jobs"]}}]}]})
               ).evaluate(CHECKOUT, BATCH, "10.0.0.1", "10.0.0.2", 80)
    assert (d.allowed, d.policy, d.action) == (False, "shop/deny-jobs", "DENY")
    assert "shop/deny-jobs" in d.reason


def test_update_recompiles_only_changes():
    base = load_authorization_policies(ap("a", {"rules": [{}]}) + ap("b", {"action": "DENY", "rules": [
        {"from": [{"source": {"namespaces": ["jobs"]}}]}]}), "t")
    e = PolicyEngine(base)
    assert not allowed(e, principal=BATCH)
    e.update(base[:1])
    assert allowed(e, principal=BATCH)


def test_replicas_share_one_table_and_the_cache_is_bounded(monkeypatch):
    from meshcore._core import policy as compiled
    e = engine(ap("all", {"rules": [{}]}))
    first, second = (PolicyTarget.of("shop", {"app": "checkout"}, name=n) for n in ("checkout-0", "checkout-1"))
    assert e.for_workload(first) is e.for_workload(second)       # selection never reads the name
    monkeypatch.setattr(compiled, "TABLE_CACHE_LIMIT", 4)
    for i in range(10):
        e.for_workload(PolicyTarget.of("shop", {"app": "checkout", "pod-template-hash": str(i)}))
    assert len(e._tables) <= 4
