"""`meshcore node` from a user's shell: the built-in CA's key lives in the user's state
directory (never in the directory the node starts in, a checkout say), a configuration
with a mistake is refused before anything is created, a port taken by another node is
named as such, and the last line of a node that stopped says so."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshcore
from meshcore.localmesh import LocalMesh
from meshcore.identity.issuers import default_state_dir
from meshcore.node.proxy import DEFAULT_LISTEN, NodeOptions, NodeProxy

ROOT = Path(__file__).resolve().parents[2]
MESH = "workloads:\n- {name: web, namespace: shop, workloadIps: [10.0.0.2], node: elsewhere}\n"


def node_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MESHCORE_STATE_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(Path(meshcore.__file__).parent.parent)
    return env


def test_the_built_in_ca_goes_to_the_state_directory_not_the_working_one(tmp_path, monkeypatch):
    (tmp_path / "mesh.yaml").write_text(MESH)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MESHCORE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    NodeProxy(NodeOptions(config_paths=("mesh.yaml",)))
    assert (tmp_path / "xdg" / "meshcore" / "ca" / "ca-key.pem").exists()
    assert not (tmp_path / ".meshcore-state").exists()
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "meshcore"


@pytest.mark.needs_tool("git")
def test_a_state_directory_in_a_checkout_is_ignored_by_git():
    """For state directories given by hand inside a clone (--state-dir .meshcore-state)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    got = subprocess.run(["git", "check-ignore", "-q", ".meshcore-state/ca/ca-key.pem"], cwd=ROOT)
    assert got.returncode == 0


def test_a_config_mistake_is_refused_before_a_ca_is_created(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH.replace("workloadIps", "workloadIPs"))
    got = subprocess.run([sys.executable, "-m", "meshcore", "node", "--config", "mesh.yaml"], cwd=tmp_path,
                         env=node_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert got.returncode == 2
    assert got.stderr.startswith("meshcore node: error: mesh.yaml, document 1, at workloads[0].workloadIPs: "
                                 "unknown field"), got.stderr
    assert "created a built-in CA" not in got.stderr
    assert not (tmp_path / "xdg").exists() and not (tmp_path / ".meshcore-state").exists()


def _node(tmp_path, address: str, *extra):
    # a node of its own name: the configuration's one workload is another node's
    return subprocess.Popen([sys.executable, "-m", "meshcore", "node", "--config", "mesh.yaml", "--address", address,
                             "--node-name", "here",
                             "--listen", f"socks5={address}:15080", "--listen", f"admin={address}:15000",
                             # ports other tests may hold on every address (0.0.0.0) stay closed
                             "--listen", "inbound-plaintext=off", "--listen", "metrics=off",
                             "--drain-deadline", "1", *extra],
                            cwd=tmp_path, env=node_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_port_in_use_is_named_and_a_stopped_node_says_so(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH)
    address = f"127.0.{os.getpid() % 200 + 20}.{os.getpid() % 250 + 1}"
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind((address, 15001))
    taken.listen()
    try:
        refused = _node(tmp_path, address)
        out, _ = refused.communicate(timeout=60)
    finally:
        taken.close()
    assert refused.returncode != 0
    assert (f"cannot listen for outbound on {address}:15001: Address already in use (is another meshcore node "
            "or ztunnel running?)") in out, out
    assert "draining" not in out, out

    node = _node(tmp_path, address)
    try:
        deadline = time.monotonic() + 20
        while LocalMesh.http_get(address, 15021, "/healthz/ready", timeout=1)[0] != 200:
            assert node.poll() is None and time.monotonic() < deadline, node.stdout.read() if node.poll() else ""
            time.sleep(0.05)
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
    assert node.returncode == 0
    assert out.splitlines()[-1].endswith("node here stopped"), out


def test_ztunnel_environment_sets_the_defaults_and_flags_win(tmp_path, monkeypatch):
    from meshcore.cli import build_parser
    from meshcore.node.cli import options_from
    (tmp_path / "mesh.yaml").write_text(MESH)
    for name, value in (("NODE_NAME", "elsewhere"), ("LOCAL_XDS_PATH", str(tmp_path / "mesh.yaml")),
                        ("TRUST_DOMAIN", "example.org"), ("NETWORK", "net1")):
        monkeypatch.setenv(name, value)
    options = options_from(build_parser().parse_args(["node"]))
    assert (options.node_name, options.config_paths, options.trust_domain, options.network) == (
        "elsewhere", (str(tmp_path / "mesh.yaml"),), "example.org", "net1")
    options = options_from(build_parser().parse_args(["node", "--node-name", "here", "--network", ""]))
    assert (options.node_name, options.network) == ("here", "")


def test_without_a_node_name_every_workload_is_local():
    from meshcore.sources.config import load
    view = load(inline="workloads:\n- {uid: a, namespace: shop, workloadIps: [10.0.0.1], node: n1}\n"
                       "- {uid: b, namespace: shop, workloadIps: [10.0.0.2]}\n")
    assert sorted(w.uid for w in view.local_workloads("")) == ["a", "b"]
    assert [w.uid for w in view.local_workloads("n1")] == ["a"]


def test_in_its_pod_the_proxy_holds_its_own_identity(tmp_path, monkeypatch):
    import asyncio
    from meshcore.cli import build_parser
    from meshcore.identity import SpiffeId
    from meshcore.node.cli import options_from
    from meshcore.node.dump import config_dump
    (tmp_path / "mesh.yaml").write_text(MESH)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MESHCORE_STATE_DIR", raising=False)
    for name, value in (("POD_NAME", "ztunnel-x1"), ("POD_NAMESPACE", "istio-system"),
                        ("SERVICE_ACCOUNT", "ztunnel"), ("NODE_NAME", "here")):
        monkeypatch.setenv(name, value)
    options = options_from(build_parser().parse_args(["node", "--config", str(tmp_path / "mesh.yaml")]))
    address = f"127.0.{os.getpid() % 200 + 20}.{os.getpid() % 250 + 2}"
    options.address, options.listen = address, {n: None for n in DEFAULT_LISTEN}
    options.freeze_startup = False

    async def scenario():
        proxy = await NodeProxy(options).start()
        try:
            return proxy.certs.identities, [c["identity"] for c in config_dump(proxy)["certificates"]]
        finally:
            await proxy.drain()
    identities, dumped = asyncio.run(scenario())
    own = SpiffeId("cluster.local", "istio-system", "ztunnel")
    assert identities == [own] and dumped == [own.uri]
