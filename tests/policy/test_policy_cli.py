"""`meshcore policy check | explain` as an operator runs them: real files, the command
in a subprocess, its output and exit status."""
import os
import subprocess
import sys
from pathlib import Path

import meshcore

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
  - to: [{operation: {methods: [GET], paths: ["/public/{**}"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jobs, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [jobs]}}]}]
"""
MESH = "workloads:\n- {name: web, namespace: shop, workloadIps: [10.0.0.2], labels: {app: web}}\n"


def meshcore_cmd(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    return subprocess.run([sys.executable, "-m", "meshcore", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def files(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "mesh.yaml").write_text(MESH)
    return ["policy.yaml", "mesh.yaml"]


def test_check_prints_the_compiled_view(tmp_path):
    got = meshcore_cmd(tmp_path, "policy", "check", *files(tmp_path))
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("valid: 2 authorization policies, 0 PeerAuthentications, 1 workloads")
    assert "shop/web-callers  ALLOW  selector app=web  [policy.yaml]" in got.stdout
    assert "  rule 1: methods [GET] and paths [/public/{**}]" in got.stdout
    assert ("  at L4 (node proxy): rule 1 needs methods, paths, which a node proxy cannot see: it never "
            "matches here") in got.stdout
    assert "shop/deny-jobs  DENY  namespace shop" in got.stdout


def test_check_refuses_a_bad_file_with_where_and_why(tmp_path):
    (tmp_path / "bad.yaml").write_text(POLICY.replace("principals:", "principal:"))
    got = meshcore_cmd(tmp_path, "policy", "check", "bad.yaml")
    assert got.returncode == 2
    assert got.stderr.strip() == ("meshcore policy check: error: bad.yaml, document 1, at "
                                  "spec.rules[0].from[0].source.principal: unknown field (allowed: ipBlocks, "
                                  "namespaces, notIpBlocks, notNamespaces, notPrincipals, notRemoteIpBlocks, "
                                  "notRequestPrincipals, notServiceAccounts, principals, remoteIpBlocks, "
                                  "requestPrincipals, serviceAccounts)")


def test_explain_names_the_deciding_policy_and_rule(tmp_path):
    names = files(tmp_path)
    denied = meshcore_cmd(tmp_path, "policy", "explain", "--from", "cluster.local/ns/jobs/sa/batch",
                          "--to", "shop/web", *names)
    assert denied.returncode == 1
    assert denied.stdout.splitlines()[0] == "DENY: denied by DENY policy shop/deny-jobs"
    assert "  shop/deny-jobs  DENY  namespace shop: matched rule 0\n    rule 0: namespaces [jobs]" in denied.stdout

    l4 = meshcore_cmd(tmp_path, "policy", "explain", "--from", "spiffe://cluster.local/ns/shop/sa/other",
                      "--to", "shop/web", "--method", "GET", "--path", "/public/a/b", *names)
    assert l4.returncode == 1 and "rule 1 needs methods, paths" in l4.stdout.splitlines()[0]

    l7 = meshcore_cmd(tmp_path, "policy", "explain", "--from", "spiffe://cluster.local/ns/shop/sa/other",
                      "--to", "shop/web", "--layer", "l7", "--method", "GET", "--path", "/public/a/b?x=1", *names)
    assert l7.returncode == 0, l7.stdout
    assert l7.stdout.splitlines()[0] == "ALLOW: allowed by ALLOW policy shop/web-callers"
    assert "matched rule 1" in l7.stdout
