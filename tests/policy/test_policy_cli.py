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
MESH = ("workloads:\n- {name: web, namespace: shop, workloadIps: [10.0.0.2], protocol: HBONE, labels: {app: web}}\n"
        "- {name: batch-0, namespace: jobs, serviceAccount: batch, workloadIps: [10.0.3.7], protocol: HBONE}\n")


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
    assert got.stdout.startswith("valid: 2 authorization policies, 0 PeerAuthentications, 2 workloads")
    assert "shop/web-callers  ALLOW  selector app=web  [policy.yaml]" in got.stdout
    assert "  rule 1: methods [GET] and paths [/public/{**}]" in got.stdout
    assert ("  at L4 (node proxy): rule 1 needs methods, paths, which a node proxy cannot see: it never "
            "matches here") in got.stdout
    assert "shop/deny-jobs  DENY  namespace shop" in got.stdout
    assert got.stderr == ""            # the L4 reductions are in the output, not logged beside it


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
    # the addresses are the workloads' own: batch-0's, the only workload of that identity, and web's
    assert denied.stdout.splitlines()[1] == ("request: from cluster.local/ns/jobs/sa/batch at 10.0.3.7 to "
                                             "shop/web (app=web) at 10.0.0.2:8080, layer l4")
    assert "  shop/deny-jobs  DENY  namespace shop: matched rule 0\n    rule 0: namespaces [jobs]" in denied.stdout

    l4 = meshcore_cmd(tmp_path, "policy", "explain", "--from", "spiffe://cluster.local/ns/shop/sa/other",
                      "--source-ip", "10.0.0.1", "--to", "shop/web", "--method", "GET", "--path", "/public/a/b", *names)
    assert l4.returncode == 1 and "rule 1 needs methods, paths" in l4.stdout.splitlines()[0]
    # which part of each rule the request failed; the L7 part is the "at L4" line's to explain
    assert ("  shop/web-callers  ALLOW  selector app=web: no rule matched\n"
            "    rule 0 did not match: principals [cluster.local/ns/shop/sa/client]\n"
            "    at L4: rule 1 needs methods, paths") in l4.stdout, l4.stdout

    l7 = meshcore_cmd(tmp_path, "policy", "explain", "--from", "spiffe://cluster.local/ns/shop/sa/other",
                      "--source-ip", "10.0.0.1", "--to", "shop/web", "--layer", "l7", "--method", "GET", "--path", "/public/a/b?x=1", *names)
    assert l7.returncode == 0, l7.stdout
    assert l7.stdout.splitlines()[0] == "ALLOW: allowed by ALLOW policy shop/web-callers"
    assert "matched rule 1" in l7.stdout


def test_explain_refuses_what_it_cannot_answer_for(tmp_path):
    """An unknown destination is not "allowed by default", a malformed identity is not
    a plaintext caller, and an address nobody gave is not made up."""
    names = files(tmp_path)
    cases = [
        (["--to", "shop/webb"], "--to shop/webb: no such workload in policy.yaml, mesh.yaml "
                                "(workloads there: jobs/batch-0, shop/web)"),
        (["--to", "web"], "--to web: expected NAMESPACE/NAME, a workload of the files"),
        (["--from", "client", "--to", "shop/web"], "--from client: not an identity: SPIFFE id 'spiffe://client' "
                                                   "has 1 segments; expected <trust-domain>/ns/<ns>/sa/<sa>"),
        (["--from", "cluster.local/ns/shop/sa/other", "--to", "shop/web"],
         "--from cluster.local/ns/shop/sa/other: no workload in policy.yaml, mesh.yaml has this identity: give "
         "the caller's address with --source-ip"),
        (["--to", "shop/web"], "--source-ip: a plaintext caller (no --from) has no workload to take an address "
                               "from: give it with --source-ip"),
    ]
    for args, message in cases:
        got = meshcore_cmd(tmp_path, "policy", "explain", *args, *names)
        assert got.returncode == 2 and got.stdout == "", (args, got.stdout)
        assert got.stderr.startswith(f"meshcore policy explain: error: {message}"), got.stderr


def test_explain_refuses_malformed_addresses_and_ports(tmp_path):
    names = files(tmp_path)
    for args, message in [(["--source-ip", "10.0.0.300"], "argument --source-ip: --source-ip '10.0.0.300' is "
                                                          "not an IP address"),
                          (["--destination-ip", "web"], "argument --destination-ip: --destination-ip 'web' is not "
                                                        "an IP address"),
                          (["--port", "70000"], "argument --port: --port '70000' is not a port (1-65535)")]:
        got = meshcore_cmd(tmp_path, "policy", "explain", "--to", "shop/web", *args, *names)
        assert got.returncode == 2 and got.stderr.rstrip().endswith(message), got.stderr


def test_root_namespace_option_makes_its_selectorless_policies_mesh_wide(tmp_path):
    names = files(tmp_path)
    (tmp_path / "root.yaml").write_text(POLICY.split("---")[1].replace("namespace: shop", "namespace: mesh-root")
                                        .replace("deny-jobs", "deny-jobs-everywhere"))
    args = ["--from", "cluster.local/ns/jobs/sa/batch", "--to", "shop/web", "root.yaml", "mesh.yaml"]
    default = meshcore_cmd(tmp_path, "policy", "explain", *args)
    assert default.returncode == 0 and "no policy applies to this workload" in default.stdout, default.stdout
    rooted = meshcore_cmd(tmp_path, "policy", "explain", "--root-namespace", "mesh-root", *args)
    assert rooted.returncode == 1
    assert rooted.stdout.splitlines()[0] == "DENY: denied by DENY policy mesh-root/deny-jobs-everywhere"
    assert "  mesh-root/deny-jobs-everywhere  DENY  mesh-wide: matched rule 0" in rooted.stdout
    check = meshcore_cmd(tmp_path, "policy", "check", "--root-namespace", "mesh-root", "root.yaml", *names)
    assert "mesh-root/deny-jobs-everywhere  DENY  mesh-wide  [root.yaml]" in check.stdout, check.stdout
