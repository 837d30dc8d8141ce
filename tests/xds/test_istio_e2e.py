"""Two `meshcore node` processes joined to a test istiod, configured only by ztunnel's
environment: workloads, services and policies exist only in xDS, certificates come from
the Istio CA. Traffic goes through SOCKS5 with curl; a policy push denies it, a removal
makes the workload unreachable."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ca_server import IstioCa
from istiod_tls import IstiodTls, start_grpc_server
from xds_server import Istiod, service, workload

from meshcore.localmesh import LocalMesh
from meshcore.xds.proto import authorization_pb2 as apb

pytestmark = [pytest.mark.timeout(180), pytest.mark.needs_tool("curl")]

TOKEN = "node-token"
WEB = "Kubernetes//Pod/shop/web-0"
CLIENT = "Kubernetes//Pod/shop/client-0"
HOST = "web.shop.svc.cluster.local"


class CaThread:
    """The test CA on a grpc.aio server, on an event loop of its own thread."""

    def __init__(self, tls):
        self.ca = IstioCa(tls.ca, token=TOKEN)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(
            start_grpc_server(tls, [self.ca.handler()]), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def deny_client(namespace="shop"):
    match = apb.Match(principals=[apb.StringMatch(exact="cluster.local/ns/shop/sa/client")])
    return apb.Authorization(name="deny-client", namespace=namespace, scope=apb.NAMESPACE, action=apb.DENY,
                             rules=[apb.Rule(clauses=[apb.Clause(matches=[match])])])


class Cluster:
    def __init__(self, directory):
        self.dir = directory
        n = LocalMesh._pick_octet()
        self.node = {"node-a": f"127.{n}.0.1", "node-b": f"127.{n}.0.2"}
        self.client, self.web, self.vip = f"127.{n}.1.1", f"127.{n}.2.1", f"127.{n}.10.1"
        self.tls = IstiodTls.create(directory / "istio")
        self.istiod = Istiod(self.tls)
        self.istiod.ads.set(
            workload(CLIENT, self.client, namespace="shop", service_account="client", node="node-a"),
            workload(WEB, self.web, namespace="shop", service_account="web", node="node-b",
                     services={f"shop/{HOST}": [(80, 8080)]}),
            service("web", "shop", self.vip, ports=((80, 8080),)))
        self.processes = {}

    def start(self):
        self.istiod.start()
        self.ca = CaThread(self.tls)
        self._spawn("web", ["-m", "meshcore.localworkload", "--name", "web", "--http", f"{self.web}:8080"], {})
        for name, ip in self.node.items():
            env = {"XDS_ADDRESS": self.istiod.address, "CA_ADDRESS": f"127.0.0.1:{self.ca.port}",
                   "XDS_ROOT_CA": str(self.tls.root_path), "CA_ROOT_CA": str(self.tls.root_path),
                   "AUTH_TOKEN": TOKEN, "NODE_NAME": name, "POD_NAME": f"ztunnel-{name}",
                   "POD_NAMESPACE": "istio-system", "INSTANCE_IP": ip, "ISTIO_META_CLUSTER_ID": "Kubernetes"}
            self._spawn(name, ["-m", "meshcore", "node", "--address", ip, "--listen", f"socks5={ip}:15080",
                               "--listen", f"admin={ip}:15000", "--drain-deadline", "2"], env)
        deadline = time.monotonic() + 60
        for name, ip in self.node.items():
            while LocalMesh.http_get(ip, 15021, "/healthz/ready")[0] != 200:
                assert self.processes[name].poll() is None, self.log(name)[-3000:]
                assert time.monotonic() < deadline, (LocalMesh.http_get(ip, 15021, "/healthz/ready"),
                                                     self.log(name)[-3000:])
                time.sleep(0.05)

    def _spawn(self, name, args, env):
        log = open(self.dir / f"{name}.log", "ab")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO_META", "KUBERNETES_"))
                 and k not in ("XDS_ADDRESS", "CA_ADDRESS", "LOCAL_XDS", "LOCAL_XDS_PATH", "MESHCORE_LOCAL_XDS")}
        self.processes[name] = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                                cwd=self.dir, env={**clean, **env}, start_new_session=True)
        log.close()

    def log(self, name):
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def curl(self, url, timeout=5):
        return subprocess.run(["curl", "-sS", "-m", str(timeout), "--interface", self.client, "--socks5-hostname",
                               f"{self.node['node-a']}:15080", url], capture_output=True, text=True)

    def stop(self):
        codes = {}
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        self.istiod.stop()
        self.ca.stop()
        return codes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("istio"))
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    yield c
    codes = c.stop()
    assert codes == {"web": 0, "node-a": 0, "node-b": 0}, (c.log("node-a")[-3000:], c.log("node-b")[-3000:])


def test_nodes_are_ready_with_xds_state_and_ca_certificates(cluster):
    status, body = LocalMesh.http_get(cluster.node["node-b"], 15000, "/config_dump")
    dump = json.loads(body)
    assert {w["uid"] for w in dump["workloads"]} == {WEB, CLIENT}
    assert [s["hostname"] for s in dump["services"]] == [HOST]
    certs = {c["identity"]: c["state"] for c in dump["certificates"]}
    assert certs == {"spiffe://cluster.local/ns/shop/sa/web": "Available"}
    # node-b asked the CA for web's certificate on web's behalf, with its token and cluster
    asked = [s for s in cluster.ca.ca.seen if s.impersonated == "spiffe://cluster.local/ns/shop/sa/web"]
    assert asked and asked[0].authorization == f"Bearer {TOKEN}" and asked[0].clusterid == "Kubernetes"
    assert dump["xds"] and dump["config"]["xdsAddress"] == cluster.istiod.address
    status, metrics = LocalMesh.http_get(cluster.node["node-b"], 15020, "/metrics")
    assert 'istio_xds_message_total{url="type.googleapis.com/istio.workload.Address"}' in metrics
    assert 'istio_xds_message_bytes_total{url="type.googleapis.com/istio.security.Authorization"}' in metrics
    # both types acknowledged by both nodes
    acked = {(r.stream, r.type_url) for r in cluster.istiod.ads.acks()}
    assert len({t for _, t in acked}) == 2


def test_traffic_then_a_pushed_policy_denies_it_within_a_second_then_a_removal(cluster):
    ok = cluster.curl(f"http://{HOST}/")
    assert ok.returncode == 0 and ok.stdout.startswith("hello from web"), (ok.stderr, cluster.log("node-a")[-2000:])

    pushed = time.monotonic()
    cluster.istiod.ads.push(deny_client())
    denied_after = None
    while time.monotonic() - pushed < 5:
        if cluster.curl(f"http://{HOST}/").returncode == 97:       # SOCKS5 refused: node-b's 401
            denied_after = time.monotonic() - pushed
            break
        time.sleep(0.02)
    assert denied_after is not None and denied_after < 1.0, (denied_after, cluster.log("node-b")[-2000:])
    assert "denied by DENY policy shop/deny-client" in cluster.log("node-b")

    cluster.istiod.ads.push(removed=["shop/deny-client"], type_url="type.googleapis.com/istio.security.Authorization")
    deadline = time.monotonic() + 5
    while cluster.curl(f"http://{HOST}/").returncode != 0:
        assert time.monotonic() < deadline, "the policy's removal did not allow traffic again"
        time.sleep(0.05)

    cluster.istiod.ads.push(removed=[WEB])
    deadline = time.monotonic() + 5
    while (proc := cluster.curl(f"http://{HOST}/")).returncode == 0:
        assert time.monotonic() < deadline, "the removed workload is still reachable"
        time.sleep(0.05)
    assert proc.returncode == 97, proc.stderr
    status, body = LocalMesh.http_get(cluster.node["node-b"], 15000, "/config_dump")
    assert WEB not in {w["uid"] for w in json.loads(body)["workloads"]}
