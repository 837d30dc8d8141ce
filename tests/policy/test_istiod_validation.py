"""What istiod's validation (pkg/config/validation: ValidateAuthorizationPolicy,
ValidatePeerAuthentication, validateWorkloadSelector) accepts and refuses, as a table
written from its rules, row by row; meshcore must load the first kind and refuse the
second with the field that is wrong."""
import pytest

from meshcore.errors import ConfigError
from meshcore.sources.config import load


def ap(spec: str, namespace: str = "shop") -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p, namespace: {namespace}}}\nspec: {spec}\n")


def pa(spec: str) -> str:
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}\n"


VALID = [
    # ALLOW without rules: valid (it denies everything it selects)
    ap("{}"),
    ap("{action: ALLOW}"),
    # an empty rule matches every request: "add an empty rule `{}`" is istiod's own advice
    ap("{action: DENY, rules: [{}]}"),
    ap("{action: AUDIT}"),
    ap("{action: DENY, rules: [{}]}").replace("namespace: shop}", "namespace: shop, annotations: {istio.io/dry-run: 'true'}}"),
    ap("{selector: {matchLabels: {app: web, version: v1}}, rules: [{}]}"),
    ap('{rules: [{from: [{source: {principals: ["cluster.local/ns/a/sa/b"]}}, {source: {namespaces: [a]}}]}]}'),
    ap('{rules: [{from: [{source: {serviceAccounts: ["a/b", "c"]}}]}]}'),
    ap('{rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8", "fd00::1"], notRemoteIpBlocks: ["1.2.3.4"]}}]}]}'),
    ap('{rules: [{to: [{operation: {ports: ["8080"], methods: [GET], paths: ["/a/{*}/b", "/c*"], '
       'hosts: ["x.example:*"]}}]}]}'),
    ap('{rules: [{when: [{key: "request.headers[x-a]", values: ["1"]}, {key: source.ip, notValues: ["10.0.0.1"]}]}]}'),
    pa("{mtls: {mode: STRICT}}"),
    pa("{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: DISABLE}}}"),
]

INVALID = [
    # (document, path in the error, words of the reason)
    (ap("{action: DENY}"), "spec.rules", "DENY policy without rules"),
    # checkDryRunAnnotation: the annotation, whatever its value, on ALLOW and DENY only
    (ap("{action: AUDIT, rules: [{}]}").replace("namespace: shop}", "namespace: shop, annotations: "
                                                 "{istio.io/dry-run: 'true'}}"),
     "metadata.annotations.istio.io/dry-run", "ALLOW and DENY policies only, not AUDIT"),
    (ap("{action: AUDIT}").replace("namespace: shop}", "namespace: shop, annotations: {istio.io/dry-run: 'false'}}"),
     "metadata.annotations.istio.io/dry-run", "ALLOW and DENY policies only, not AUDIT"),
    (ap("{action: DENY, rules: []}"), "spec.rules", "DENY policy without rules"),
    (ap("{provider: {name: x}, rules: [{}]}"), "spec.provider", "for action CUSTOM only"),
    (ap("{action: CUSTOM, provider: {name: ext}, rules: [{}]}"), "spec.action", "CUSTOM"),
    (ap('{selector: {matchLabels: {"": x}}}'), "spec.selector.matchLabels", "empty label key"),
    (ap('{selector: {matchLabels: {"app*": x}}}'), "spec.selector.matchLabels.app*", "wildcards"),
    (ap('{selector: {matchLabels: {app: "we*"}}}'), "spec.selector.matchLabels.app", "wildcards"),
    (ap("{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}"), "spec.targetRefs", ""),
    (ap("{rules: [null]}"), "spec.rules[0]", "expected a mapping"),
    (ap("{rules: [{from: []}]}"), "spec.rules[0].from", "`from` must not be empty"),
    (ap("{rules: [{from: [{}]}]}"), "spec.rules[0].from[0].source", "required field is missing"),
    (ap("{rules: [{from: [{source: {}}]}]}"), "spec.rules[0].from[0].source", "must set at least one field"),
    (ap('{rules: [{from: [{source: {serviceAccounts: ["a/b"], namespaces: [a]}}]}]}'),
     "spec.rules[0].from[0].source", "serviceAccounts cannot be set with namespaces or principals"),
    (ap('{rules: [{from: [{source: {notServiceAccounts: ["a/b"], principals: ["x"]}}]}]}'),
     "spec.rules[0].from[0].source", "serviceAccounts cannot be set with namespaces or principals"),
    (ap('{rules: [{from: [{source: {principals: [""]}}]}]}'),
     "spec.rules[0].from[0].source.principals[0]", "must not be empty"),
    (ap('{rules: [{from: [{source: {ipBlocks: ["10.0.0.300"]}}]}]}'),
     "spec.rules[0].from[0].source.ipBlocks[0]", "not an IP address or CIDR block"),
    (ap('{rules: [{from: [{source: {serviceAccounts: ["a/*"]}}]}]}'),
     "spec.rules[0].from[0].source.serviceAccounts[0]", "wildcards"),
    (ap("{rules: [{to: []}]}"), "spec.rules[0].to", "`to` must not be empty"),
    (ap("{rules: [{to: [{operation: {}}]}]}"), "spec.rules[0].to[0].operation", "must set at least one field"),
    (ap('{rules: [{to: [{operation: {ports: ["0"]}}]}]}'), "spec.rules[0].to[0].operation", "port 0"),
    (ap('{rules: [{to: [{operation: {ports: ["70000"]}}]}]}'), "spec.rules[0].to[0].operation.ports[0]",
     "not a port number"),
    (ap('{rules: [{to: [{operation: {methods: [""]}}]}]}'), "spec.rules[0].to[0].operation.methods[0]",
     "must not be empty"),
    (ap('{rules: [{to: [{operation: {paths: ["/a/{x}"]}}]}]}'), "spec.rules[0].to[0].operation.paths[0]",
     "not an operator"),
    (ap('{rules: [{to: [{operation: {notPaths: ["/{**}/{*}"]}}]}]}'),
     "spec.rules[0].to[0].operation.notPaths[0]", "must be the last operator"),
    (ap('{rules: [{when: [{key: "", values: [x]}]}]}'), "spec.rules[0].when[0].key", "must not be empty"),
    (ap("{rules: [{when: [{key: source.ip}]}]}"), "spec.rules[0].when[0]", "values or notValues"),
    (ap('{rules: [{when: [{key: source.ip, values: ["nope"]}]}]}'), "spec.rules[0].when[0].values[0]",
     "not an IP address"),
    (ap('{rules: [{when: [{key: request.regex.headers, values: ["x"]}]}]}'), "spec.rules[0].when[0].key",
     "unsupported condition key"),
    (pa("{portLevelMtls: {8080: {mode: STRICT}}}"), "spec.portLevelMtls", "requires spec.selector"),
    (pa("{selector: {matchLabels: {app: web}}, portLevelMtls: {}}"), "spec.portLevelMtls", "at least one port"),
    (pa("{selector: {matchLabels: {app: web}}, portLevelMtls: {0: {mode: STRICT}}}"), "spec.portLevelMtls.0",
     "1-65535"),
    (pa('{selector: {matchLabels: {app: "*"}}}'), "spec.selector.matchLabels.app", "wildcards"),
    (pa("{mtls: {mode: OPTIONAL}}"), "spec.mtls.mode", "is not one of"),
]


@pytest.mark.parametrize("document", VALID)
def test_istiod_accepts(tmp_path, document):
    (tmp_path / "ok.yaml").write_text(document)
    load([str(tmp_path / "ok.yaml")])


@pytest.mark.parametrize("document, where, reason", INVALID, ids=[f"{w}: {r}" for _, w, r in INVALID])
def test_istiod_refuses(tmp_path, document, where, reason):
    (tmp_path / "bad.yaml").write_text(document)
    with pytest.raises(ConfigError) as err:
        load([str(tmp_path / "bad.yaml")])
    message = str(err.value)
    assert f"bad.yaml, document 1, at {where}:" in message and reason in message, message
