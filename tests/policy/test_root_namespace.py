"""The root namespace (Istio's meshConfig.rootNamespace) is an option of whoever selects
policies, not of the file: a selector-less AuthorizationPolicy there is mesh-wide, and
`istio-system` is an ordinary namespace once another one is the root."""
from meshcore._core.policy import PolicyEngine
from meshcore.cli import build_parser
from meshcore.node.cli import options_from
from meshcore.node.dump import config_dump
from meshcore.node.proxy import NodeProxy
from meshcore.policy import PolicyTarget, load_authorization_policies

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jobs, namespace: mesh-root}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [jobs]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
"""
PEER_AUTHENTICATION = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-root}
spec: {mtls: {mode: STRICT}}
"""
JOBS, LEGACY = "cluster.local/ns/jobs/sa/batch", "cluster.local/ns/legacy/sa/old"
SHOP, ISTIO = PolicyTarget.of("shop", {"app": "web"}), PolicyTarget.of("istio-system", {"app": "gw"})


def denied(engine, workload, principal):
    return not engine.evaluate(workload, principal, "10.0.0.1", "10.0.0.2", 8080).allowed


def test_the_engines_root_namespace_decides_which_policy_is_mesh_wide():
    policies = load_authorization_policies(POLICIES, "p.yaml")
    default = PolicyEngine(policies)
    assert denied(default, SHOP, LEGACY) and not denied(default, SHOP, JOBS)
    rooted = PolicyEngine(policies, root_namespace="mesh-root")
    assert denied(rooted, SHOP, JOBS) and not denied(rooted, SHOP, LEGACY)
    # istio-system is now a namespace like another: its policy applies to its own workloads
    assert denied(rooted, ISTIO, LEGACY) and denied(rooted, ISTIO, JOBS)
    # one Policy object, two meanings: nothing was decided when the file was read
    assert default.policies[0] is rooted.policies[0]


def test_meshcore_node_root_namespace_reaches_the_policies_in_force(tmp_path):
    (tmp_path / "mesh.yaml").write_text("workloads:\n- {name: web, namespace: shop, workloadIps: [10.0.0.2], "
                                        "labels: {app: web}}\n---\n" + POLICIES + PEER_AUTHENTICATION)
    args = build_parser().parse_args(["node", "--config", str(tmp_path / "mesh.yaml"), "--state-dir",
                                      str(tmp_path / "state"), "--root-namespace", "mesh-root"])
    proxy = NodeProxy(options_from(args))
    proxy.files.load()
    engine = proxy.store.view.engine
    assert denied(engine, SHOP, JOBS) and not denied(engine, SHOP, LEGACY)
    scopes = {p["name"]: p["scope"] for p in config_dump(proxy)["policies"]}
    assert scopes == {"deny-jobs": "Global", "deny-legacy": "Namespace"}      # as istiod would send them
    # a PeerAuthentication in the root namespace is the mesh-wide default; istio-system's is not
    web, = proxy.store.view.workloads
    assert proxy.store.view.mtls_mode(web, 8080) == "STRICT"

    args = build_parser().parse_args(["node", "--config", str(tmp_path / "mesh.yaml"), "--state-dir",
                                      str(tmp_path / "state")])
    assert options_from(args).root_namespace == "istio-system"
    proxy = NodeProxy(options_from(args))
    proxy.files.load()
    assert proxy.store.view.mtls_mode(web, 8080) == "PERMISSIVE"
