"""What an idle `meshcore node` has imported: what serves traffic, not what serves rare
work. cryptography only signs or parses certificates (a helper process signs for the
node), PyYAML only reads YAML, grpc and protobuf only talk to istiod, prometheus_client
only backs the waypoint's histograms, and the other commands' modules stay out.

The real command runs with `-X importtime`, which lists every module the process
imported, at start or later, until it is stopped."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshcore
from meshcore.localmesh import LocalMesh

# top-level packages (or modules) an idle node must not have imported
NOT_IMPORTED = ("cryptography", "yaml", "grpc", "google", "prometheus_client", "httptools", "meshcore.waypoint",
                "meshcore.l7", "meshcore.xds.client", "meshcore.xds.ca", "meshcore.policy.cli",
                "meshcore.identity.cli", "meshcore.identity.ca", "ctypes.util", "email", "http.server",
                # the route parsers: only when a configuration holds routes
                "meshcore.traffic.gateway_api", "meshcore.traffic.virtualservice")


def imported_by_node(tmp_path: Path, config: str, name: str, *extra: str) -> set[str]:
    """Every module a `meshcore node` with `config` imported by the time it was ready and
    had served a readiness probe, a metrics scrape and a config dump."""
    net = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}"
    address = f"{net}.1"
    (tmp_path / name).write_text(config.replace("LOCAL_IP", f"{net}.2"))     # its inbound listener binds there
    env = {k: v for k, v in os.environ.items() if k not in ("XDS_ADDRESS", "CA_ADDRESS", "KUBERNETES_SERVICE_HOST")}
    env["PYTHONPATH"] = str(Path(meshcore.__file__).parent.parent)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "meshcore", "node", "--config", name, "--node-name", "node-a",
         "--address", address, "--listen", f"admin={address}:15000", "--listen", "outbound=off", "--listen", "socks5=off",
         "--log-level", "warn", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while LocalMesh.http_get(address, 15021, "/healthz/ready", timeout=1)[0] != 200:
            assert proc.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-3000:]
            time.sleep(0.05)
        assert LocalMesh.http_get(address, 15020, "/metrics", timeout=5)[0] == 200
        status, body = LocalMesh.http_get(address, 15000, "/config_dump", timeout=5)
        certificates = json.loads(body)["certificates"]
        assert status == 200 and certificates and all(c["certChain"] and c["rootCerts"] for c in certificates)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    err = (tmp_path / "node.log").read_text()
    modules = set()
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    assert "meshcore.node.proxy" in modules, err[-2000:]
    return modules


def offending(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_IMPORTED))


LOCAL_CONFIG = {
    "workloads": [{"uid": "a", "name": "a", "namespace": "shop", "serviceAccount": "web", "node": "node-a",
                   "workloadIps": ["LOCAL_IP"], "protocol": "HBONE",
                   "services": {"shop/web.shop.svc.cluster.local": {"80": 8080}}},
                  {"uid": "b", "name": "b", "namespace": "shop", "serviceAccount": "api", "node": "node-b",
                   "workloadIps": ["10.77.0.2"], "protocol": "HBONE"}],
    "services": [{"name": "web", "namespace": "shop", "hostname": "web.shop.svc.cluster.local",
                  "vips": ["/10.96.0.1"], "ports": {"80": 8080}}],
    "policies": [{"name": "p", "namespace": "shop", "scope": "Namespace", "action": "Allow",
                  "rules": [[[{"principals": [{"Exact": "cluster.local/ns/shop/sa/api"}]}]]]}],
}


def test_a_node_with_a_json_config_and_the_built_in_ca_loads_nothing_it_does_not_serve_with(tmp_path):
    modules = imported_by_node(tmp_path, json.dumps(LOCAL_CONFIG), "mesh.json")
    assert offending(modules) == []
    assert "meshcore.identity.helper" in modules           # the CA signs in its helper process


def test_yaml_is_loaded_for_a_yaml_config_only(tmp_path):
    """The check above sees imports: the same node reading YAML has PyYAML."""
    modules = imported_by_node(tmp_path, "# YAML\n" + json.dumps(LOCAL_CONFIG), "mesh.yaml")
    assert "yaml" in modules
    assert offending(modules) == ["yaml"] + sorted(m for m in modules if m.startswith("yaml."))


def test_a_node_with_a_ca_directory_loads_no_cryptography(tmp_path):
    from meshcore.identity import CertificateAuthority
    CertificateAuthority.create("cluster.local").save(tmp_path / "ca")
    modules = imported_by_node(tmp_path, json.dumps(LOCAL_CONFIG), "mesh.json", "--ca-dir", str(tmp_path / "ca"))
    assert offending(modules) == []


@pytest.mark.parametrize("module", ["meshcore", "meshcore.node.proxy", "meshcore.identity",
                                   "meshcore.aio", "meshcore.mesh"])
def test_importing_meshcore_loads_no_cryptography_and_no_yaml(module):
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'yaml', 'grpc', 'google',"
            " 'prometheus_client')))")
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[]"
