"""examples/node-proxy: the sample configuration loads, the launcher runs a node proxy
that curl reaches the sample service through, and the Kubernetes manifests hold what a
per-node deployment needs."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meshcore.localmesh import LocalMesh
from meshcore.sources.config import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-proxy"


def test_sample_configuration_loads():
    state = load([str(EXAMPLE / "mesh.yaml"), str(EXAMPLE / "policy.yaml")])
    assert {w.name for w in state.local_workloads("node-a")} == {"frontend-0", "checkout-0", "billing-0"}
    assert state.mtls_mode(state.by_uid["example//v1/Pod/shop/checkout-0"], 8080) == "STRICT"


def test_configmap_is_a_loadable_configuration(tmp_path):
    cm = yaml.safe_load((EXAMPLE / "kubernetes" / "configmap.yaml").read_text())
    paths = []
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    load(paths)


def test_daemonset_has_ports_probes_and_resources():
    docs = list(yaml.safe_load_all((EXAMPLE / "kubernetes" / "daemonset.yaml").read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    c, = pod["containers"]
    assert {p["containerPort"] for p in c["ports"]} == {15001, 15006, 15008, 15020, 15021}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert c["resources"]["requests"]["memory"] and c["args"][0] == "node"
    from meshcore.cli import build_parser
    args = build_parser().parse_args([a.replace("$(NODE_NAME)", "n").replace("$(NODE_IP)", "10.0.0.1")
                                      for a in c["args"]])
    assert args.node_name == "n"
    # configured by its ConfigMap: inside the cluster it must not dial istiod
    from meshcore.node.cli import control_plane
    env = {e["name"]: e.get("value") for e in c["env"] if "value" in e}
    plane = control_plane(args, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", **env})
    assert plane.xds_address is None and plane.ca_address is None


@pytest.mark.needs_tool("curl")
def test_launcher_runs_and_serves_the_sample_mesh(tmp_path):
    address = "127.0.10.254"
    checkout = subprocess.Popen([sys.executable, "-m", "meshcore.localworkload", "--name", "checkout",
                                 "--http", "127.0.10.2:8080"], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MESHCORE_STATE_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    node = subprocess.Popen([sys.executable, str(EXAMPLE / "launch.py"), "--address", address,
                             "--listen", f"socks5={address}:15080", "--listen", f"admin={address}:15000"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while LocalMesh.http_get(address, 15021, "/healthz/ready", timeout=1)[0] != 200:
            assert node.poll() is None and time.monotonic() < deadline, node.stdout.read() if node.poll() else ""
            time.sleep(0.05)
        got = subprocess.run(["curl", "-sS", "-m", "10", "--interface", "127.0.10.1", "--socks5-hostname",
                              f"{address}:15080", "http://checkout.shop.svc.cluster.local/"],
                             capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        assert got.stdout.startswith("hello from checkout: GET / HTTP/1.1 from 127.0.10.1:")
        # the built-in CA, created on first start in the state directory, not where the node started
        assert (tmp_path / "state" / "meshcore" / "ca" / "ca-cert.pem").exists()
        assert not (tmp_path / ".meshcore-state").exists()
    finally:
        for proc in (node, checkout):
            proc.terminate()
            proc.wait(10)
    assert node.returncode == 0


def test_dockerfile_builds_the_image_the_daemonset_runs():
    """docker cannot run here: the Dockerfile is read for what the DaemonSet relies on."""
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    stages = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in dockerfile
    assert 'ENTRYPOINT ["meshcore"]' in dockerfile                  # the DaemonSet's args start with `node`
    ds = next(d for d in yaml.safe_load_all((EXAMPLE / "kubernetes" / "daemonset.yaml").read_text())
              if d["kind"] == "DaemonSet")
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    build = f"docker build -f examples/node-proxy/Dockerfile -t {image} ."
    assert build in dockerfile and build in (EXAMPLE / "README.md").read_text()
    ignored = (EXAMPLE / "Dockerfile.dockerignore").read_text().split()
    assert {"**/*.so", ".git", "build", ".meshcore-state"} <= set(ignored)   # no local build or key in the image


def test_readme_policy_command_runs_from_the_clone_root():
    import re
    import shlex
    text = (EXAMPLE / "README.md").read_text().replace("\\\n", " ")
    command, = re.findall(r"^meshcore policy explain .*$", text, re.M)
    got = subprocess.run([sys.executable, "-m", "meshcore", *shlex.split(command)[1:]], cwd=EXAMPLE.parents[1],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 1 and got.stdout.startswith("DENY: denied: no ALLOW policy matched"), got
