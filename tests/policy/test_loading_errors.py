"""A bad policy file is refused as a whole, naming file, document, field path and reason."""
import pytest

from meshcore.errors import ConfigError
from meshcore.policy import load_authorization_policies, ztunnel_policy

GOOD = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/b"]}}]
"""


def bad(spec_yaml):
    return GOOD + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n" \
        "metadata: {name: bad, namespace: shop}\nspec:\n" + spec_yaml


@pytest.mark.parametrize("spec,path,reason", [
    ("  action: MAYBE\n", "spec.action", "not ALLOW, DENY, AUDIT or CUSTOM"),
    ("  action: CUSTOM\n", "spec.action", "not supported"),
    ("  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.300/8\"]}}]\n",
     "spec.rules[0].from[0].source.ipBlocks[0]", "not an IP address or CIDR"),
    ("  rules:\n  - to: [{operation: {ports: [\"http\"]}}]\n", "spec.rules[0].to[0].operation.ports[0]", "not a port"),
    ("  rules:\n  - from: [{source: {}}]\n", "spec.rules[0].from[0].source", "at least one field"),
    ("  rules:\n  - to: [{operation: {verbs: [GET]}}]\n", "spec.rules[0].to[0].operation.verbs", "unknown field"),
    ("  rules:\n  - when: [{key: \"request.auth.claims[iss]\", values: [x]}]\n", "spec.rules[0].when[0].key",
     "unsupported condition key"),
    ("  rules:\n  - when: [{key: source.ip}]\n", "spec.rules[0].when[0]", "values or notValues"),
    ("  rules:\n  - from: [{source: {principals: \"cluster.local/ns/a/sa/b\"}}]\n",
     "spec.rules[0].from[0].source.principals", "expected a list"),
    ("  selector: {matchLabels: [a]}\n", "spec.selector.matchLabels", "expected a mapping"),
    ("  rules:\n  - from: [{source: {serviceAccounts: [\"a/b/c\"]}}]\n",
     "spec.rules[0].from[0].source.serviceAccounts[0]", "<namespace>/<service account>"),
    # a Gateway without its group is a core Gateway, which nothing is: istiod refuses it too
    ("  targetRefs: [{kind: Gateway, name: waypoint}]\n", "spec.targetRefs[0]", "core/Gateway cannot be a target"),
])
def test_bad_documents(spec, path, reason):
    with pytest.raises(ConfigError) as info:
        load_authorization_policies(bad(spec), "policies.yaml")
    err = info.value
    assert (err.source, err.document, err.path) == ("policies.yaml", 2, path), str(err)
    assert reason in err.reason
    assert str(err).startswith(f"policies.yaml, document 2, at {path}: ")


def test_ztunnel_audit_in_a_node_config_names_file_document_and_path(tmp_path):
    from meshcore.sources.config import load
    (tmp_path / "mesh.yaml").write_text("workloads: []\n---\npolicies:\n- {name: a, namespace: shop, action: Audit}\n")
    with pytest.raises(ConfigError) as info:
        load([str(tmp_path / "mesh.yaml")])
    assert str(info.value).startswith(f"{tmp_path / 'mesh.yaml'}, document 2, at policies[0].action: 'Audit' "
                                      "is not Allow or Deny")


def test_syntax_error_names_line():
    with pytest.raises(ConfigError, match=r"policies.yaml: not valid YAML .* line 3"):
        load_authorization_policies("a: 1\nb: [\nc: }", "policies.yaml")


def test_duplicate_policy_is_refused():
    with pytest.raises(ConfigError, match="shop/ok is defined twice"):
        load_authorization_policies(GOOD + "---\n" + GOOD, "p.yaml")


def test_missing_name():
    with pytest.raises(ConfigError) as info:
        load_authorization_policies("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {}\n", "p")
    assert info.value.path == "metadata.name" and "required" in info.value.reason


@pytest.mark.parametrize("entry,path,reason", [
    ({"name": "x", "namespace": "a", "scope": "Cluster"}, "policies[3].scope", "not Global"),
    ({"name": "x", "namespace": "a", "action": "ALLOW"}, "policies[3].action", "not Allow or Deny"),
    # ztunnel's RbacAction is Allow or Deny: istiod never sends it an AUDIT policy
    ({"name": "x", "namespace": "a", "action": "Audit"}, "policies[3].action", "not Allow or Deny"),
    ({"name": "x", "namespace": "a", "scope": "RootOrNamespace"}, "policies[3].scope", "not Global"),
    ({"name": "x", "namespace": "a", "rules": [[[{"destinationPorts": [70000]}]]]},
     "policies[3].rules[0][0][0].destinationPorts[0]", "not a port"),
    ({"name": "x", "namespace": "a", "rules": [[[{"principals": [{"Regex": ".*"}]}]]]},
     "policies[3].rules[0][0][0].principals[0].Regex", "unknown field"),
    ({"name": "x", "namespace": "a", "extra": 1}, "policies[3].extra", "unknown field"),
])
def test_bad_ztunnel_entries(entry, path, reason):
    with pytest.raises(ConfigError) as info:
        ztunnel_policy(entry, "policies[3]")
    assert info.value.path == path and reason in info.value.reason
