"""Two `meshcore node`s and a `meshcore waypoint` as processes, for the waypoint's
process tests: node-a sends the web service's traffic to the waypoint (the service
names it), the waypoint sends it on to the endpoint through node-b with its own
identity. The web workload's address serves HTTP/1.1 on 8080 and a TCP echo on 9000
(meshcore.localworkload); 8081 and 50051 are the service's ports for backends a test
runs itself (HTTP/2, gRPC). The service's ports 80, 81, 9000 and 50051 declare no
protocol; 82 (to 8081) declares http2, 83 (to 8080) http and 9001 (to 9000) tcp."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshcore.localmesh import LocalMesh

MESH = """\
workloads:
- {{uid: c/client, name: client, namespace: shop, serviceAccount: client, workloadIps: ["{client}"],
   protocol: HBONE, node: node-a}}
- {{uid: c/web, name: web, namespace: shop, serviceAccount: web, workloadIps: ["{web}"], protocol: HBONE,
   node: node-b, labels: {{app: web}}, services: {{"shop/web.shop.svc.cluster.local": {{9000: 9000, 80: 8080, 81: 8081, 50051: 50051, 82: 8081, 83: 8080, 9001: 9000}}}}}}
- {{uid: c/waypoint, name: waypoint, namespace: shop, serviceAccount: waypoint, workloadIps: ["{waypoint}"],
   protocol: HBONE, node: ""}}
services:
- {{name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/{vip}"], ports: {{9000: 9000, 80: 8080, 81: 8081, 50051: 50051, 82: 8081, 83: 8080, 9001: 9000}},
   appProtocols: {{82: http2, 83: http, 9001: tcp}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/waypoint"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*", "/meshcore.test.Echo/Forbidden"], methods: ["GET", "POST"],
                        notPorts: ["9000", "9001"]}}}}]
"""
# notPorts: a tunnel that is not HTTP is decided on the rule's L4 part (Envoy's network
# RBAC), which without it would deny every one, the TCP echo's included


class WaypointMesh:
    def __init__(self, directory):
        self.dir = directory
        n = LocalMesh._pick_octet()
        self.node = {"node-a": f"127.{n}.0.1", "node-b": f"127.{n}.0.2"}
        self.client, self.web, self.waypoint, self.vip = f"127.{n}.1.1", f"127.{n}.2.1", f"127.{n}.4.1", f"127.{n}.10.1"
        self.config = directory / "mesh.yaml"
        self.config.write_text(MESH.format(client=self.client, web=self.web, waypoint=self.waypoint, vip=self.vip))
        self.processes = {}

    def start(self):
        ca = subprocess.run([sys.executable, "-m", "meshcore", "ca", "init", "--trust-domain", "cluster.local", "--dir", str(self.dir / "ca"), "--force"],
                            capture_output=True, text=True)
        assert ca.returncode == 0, ca.stderr
        self._spawn("web", ["-m", "meshcore.localworkload", "--name", "web", "--http", f"{self.web}:8080",
                            "--echo", f"{self.web}:9000"])
        for name, ip in self.node.items():
            self._spawn(name, ["-m", "meshcore", "node", "--config", str(self.config), "--node-name", name,
                               "--address", ip, "--ca-dir", str(self.dir / "ca"), "--listen", f"socks5={ip}:15080",
                               "--listen", f"admin={ip}:15000", "--drain-deadline", "2"])
        self._spawn("waypoint", ["-m", "meshcore", "waypoint", "--name", "waypoint", "--namespace", "shop",
                                 "--config", str(self.config), "--ca-dir", str(self.dir / "ca"),
                                 "--address", self.waypoint, "--listen", f"admin={self.waypoint}:15000",
                                 "--drain-deadline", "2"])
        deadline = time.monotonic() + 30
        for name, ip in (*self.node.items(), ("waypoint", self.waypoint)):
            while LocalMesh.http_get(ip, 15021, "/healthz/ready")[0] != 200:
                assert self.processes[name].poll() is None, self.log(name)[-3000:]
                assert time.monotonic() < deadline, (name, LocalMesh.http_get(ip, 15021, "/healthz/ready"),
                                                     self.log(name)[-3000:])
                time.sleep(0.05)

    def _spawn(self, name, args):
        with open(self.dir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                                    cwd=self.dir, start_new_session=True)

    def log(self, name):
        return (self.dir / f"{name}.log").read_text(errors="replace")

    async def socks5(self, host, port):
        mesh = LocalMesh.__new__(LocalMesh)
        mesh.node = self.node
        return await LocalMesh.socks5(mesh, self.client, host, port)

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
        return codes


ECHO_BACKENDS = Path(__file__).resolve().parent / "echo_backends.py"


@contextlib.contextmanager
def running(mesh, backends=()):
    """A mesh of processes, started (stopped again if it cannot start), and stopped at
    the end with every process having exited cleanly. `backends`: arguments of
    echo_backends.py, started first; the mesh starts once they answer."""
    try:
        if backends:
            mesh._spawn("backends", [str(ECHO_BACKENDS), *backends])
        mesh.start()
        deadline = time.monotonic() + 15
        while backends and "ready" not in mesh.log("backends"):
            assert mesh.processes["backends"].poll() is None and time.monotonic() < deadline, mesh.log("backends")
            time.sleep(0.05)
    except BaseException:
        mesh.stop()
        raise
    yield mesh
    codes = mesh.stop()
    assert all(code == 0 for code in codes.values()), (codes, mesh.log("waypoint")[-3000:])
