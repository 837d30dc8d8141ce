"""A whole mesh on one machine, from separate processes: the built-in CA (`meshcore ca
init`), two node proxies (`meshcore node`) on their own loopback addresses, a waypoint
(`meshcore waypoint`) for the web-l7 service, and workloads behind them. `meshcore
demo` drives one; so do the end-to-end tests.

Addresses live in 127.<n>.0.0/16 (the whole 127/8 is local on Linux):

    127.n.0.1   node-a          127.n.1.1  client (shop/client)   127.n.1.2  batch (jobs/batch)
    127.n.0.2   node-b          127.n.2.1  web (shop/web): HTTP :8080, echo :9000
    127.n.3.1   outside the mesh: HTTP :8080      127.n.10.1  VIP of web.shop.svc.cluster.local
    127.n.4.1   the waypoint (shop/waypoint)      127.n.10.2  VIP of web-l7.shop..., through the waypoint
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [{principals}]}}
"""

# the waypoint reaches web for web-l7's requests with its own identity; what those
# requests may do is the waypoint's policy (attached to its Gateway by targetRefs)
WAYPOINT_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/waypoint"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
"""

DENY_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-jobs, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - from:
    - source: {{namespaces: [{denied}]}}
"""

MESH = """\
# ztunnel's local config: the workloads and services of the whole mesh
workloads:
- uid: local//v1/Pod/shop/client
  name: client
  namespace: shop
  serviceAccount: client
  workloadIps: ["{client}"]
  protocol: HBONE
  node: node-a
  canonicalName: client
  services: {{}}
- uid: local//v1/Pod/jobs/batch
  name: batch
  namespace: jobs
  serviceAccount: batch
  workloadIps: ["{batch}"]
  protocol: HBONE
  node: node-a
  canonicalName: batch
  services: {{}}
- uid: local//v1/Pod/shop/web
  name: web
  namespace: shop
  serviceAccount: web
  workloadIps: ["{web}"]
  protocol: HBONE
  node: node-b
  canonicalName: web
  canonicalRevision: v1
  labels: {{app: web}}
  services: {{"shop/web.shop.svc.cluster.local": {{80: 8080, 9000: 9000}},
             "shop/web-l7.shop.svc.cluster.local": {{80: 8080}}}}
- uid: local//v1/Pod/shop/waypoint
  name: waypoint
  namespace: shop
  serviceAccount: waypoint
  workloadIps: ["{waypoint}"]
  protocol: HBONE
  node: ""
  services: {{}}
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  vips: ["/{vip}"]
  ports: {{80: 8080, 9000: 9000}}
- name: web-l7
  namespace: shop
  hostname: web-l7.shop.svc.cluster.local
  vips: ["/{vip_l7}"]
  ports: {{80: 8080}}
  waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}
"""

NODE_NAMES = ("node-a", "node-b")
PROXIES = (*NODE_NAMES, "waypoint")


def _free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


class LocalMesh:
    def __init__(self, directory: str | os.PathLike, *, octet: int | None = None,
                 allowed=("cluster.local/ns/shop/sa/client",), log_format: str = "text"):
        self.dir = Path(directory)
        self.octet = octet or self._pick_octet()
        n = self.octet
        self.node = {"node-a": f"127.{n}.0.1", "node-b": f"127.{n}.0.2"}
        self.client, self.batch, self.web = f"127.{n}.1.1", f"127.{n}.1.2", f"127.{n}.2.1"
        self.outside, self.vip = f"127.{n}.3.1", f"127.{n}.10.1"
        self.waypoint, self.vip_l7 = f"127.{n}.4.1", f"127.{n}.10.2"
        self.allowed = list(allowed)
        self.log_format = log_format
        self.processes: dict[str, subprocess.Popen] = {}
        self.config_path = self.dir / "mesh.yaml"
        self.policy_path = self.dir / "policy.yaml"

    @staticmethod
    def _pick_octet() -> int:
        for _ in range(50):
            n = random.randint(100, 250)
            if _free(f"127.{n}.0.1", 15080) and _free(f"127.{n}.2.1", 8080):
                return n
        raise RuntimeError("no free 127.n.0.0/16 block for a local mesh")

    # -- files ----------------------------------------------------------------------
    def mesh_text(self) -> str:
        return MESH.format(client=self.client, batch=self.batch, web=self.web, vip=self.vip,
                           waypoint=self.waypoint, vip_l7=self.vip_l7)

    def policy_text(self, allowed=None, denied_namespaces=("jobs",)) -> str:
        allowed = self.allowed if allowed is None else allowed
        text = POLICY.format(principals=", ".join(f'"{p}"' for p in allowed)) + "---\n" + WAYPOINT_POLICY
        if denied_namespaces:
            text += "---\n" + DENY_POLICY.format(denied=", ".join(f'"{n}"' for n in denied_namespaces))
        return text

    def write_policy(self, text: str) -> None:
        """Replace the policy file the way an editor or a ConfigMap update does (atomically)."""
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.dir, start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def node_args(self, name: str) -> list[str]:
        ip = self.node[name]
        return ["-m", "meshcore", "node", "--config", str(self.config_path), "--config", str(self.policy_path),
                "--node-name", name, "--address", ip, "--ca-dir", str(self.dir / "ca"),
                "--listen", f"socks5={ip}:15080", "--listen", f"admin={ip}:15000",
                "--log-format", self.log_format, "--drain-deadline", "5"]

    def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ca = subprocess.run([sys.executable, "-m", "meshcore", "ca", "init", "--trust-domain", "cluster.local",
                             "--dir", str(self.dir / "ca"), "--force"], capture_output=True, text=True, cwd=self.dir)
        if ca.returncode != 0:
            raise RuntimeError(f"meshcore ca init failed: {ca.stderr.strip()}")
        self.config_path.write_text(self.mesh_text())
        self.write_policy(self.policy_text())
        workload = ["-m", "meshcore.localworkload"]
        self._spawn("web", [*workload, "--name", "web", "--http", f"{self.web}:8080", "--echo", f"{self.web}:9000"])
        self._spawn("outside", [*workload, "--name", "outside", "--http", f"{self.outside}:8080"])
        for name in NODE_NAMES:
            self._spawn(name, self.node_args(name))
        self._spawn("waypoint", self.waypoint_args())
        self.wait_ready(timeout)

    def waypoint_args(self) -> list[str]:
        ip = self.waypoint
        return ["-m", "meshcore", "waypoint", "--name", "waypoint", "--namespace", "shop",
                "--config", str(self.config_path), "--config", str(self.policy_path), "--ca-dir", str(self.dir / "ca"),
                "--address", ip, "--listen", f"admin={ip}:15000", "--log-format", self.log_format,
                "--drain-deadline", "5"]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {*PROXIES, "web", "outside"}
        while pending:
            for name in list(pending):
                proc = self.processes[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-2000:]}")
                if name in PROXIES:
                    status, _ = self.http_get(self.proxy_address(name), 15021, "/healthz/ready")
                    ok = status == 200
                else:
                    ok = not _free(self.web if name == "web" else self.outside, 8080)
                if ok:
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(sorted(pending))}")
            time.sleep(0.05)

    def proxy_address(self, name: str) -> str:
        return self.waypoint if name == "waypoint" else self.node[name]

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM everything (node proxies drain), then SIGKILL what is left; exit codes."""
        codes = {}
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        return codes

    def __enter__(self) -> "LocalMesh":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- talking to it ---------------------------------------------------------------------
    @staticmethod
    def http_get(host: str, port: int, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of a plain HTTP request to an admin endpoint; (0, why) if none."""
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError as exc:
            return 0, str(exc)
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body.decode(errors="replace")
        except (IndexError, ValueError):
            return 0, data[:200].decode(errors="replace")

    async def socks5(self, source: str, host: str, port: int, node: str = "node-a"):
        """An asyncio connection from `source` through a node's SOCKS5 listener: (reader,
        writer), or ConnectionRefusedError carrying the SOCKS5 reply code."""
        reader, writer = await asyncio.open_connection(self.node[node], 15080, local_addr=(source, 0))
        try:
            writer.write(b"\x05\x01\x00")
            if await reader.readexactly(2) != b"\x05\x00":
                raise ConnectionRefusedError("SOCKS5: no acceptable method")
            name = host.encode()
            writer.write(b"\x05\x01\x00\x03" + bytes((len(name),)) + name + struct.pack("!H", port))
            head = await reader.readexactly(4)
            await reader.readexactly({1: 4, 4: 16}.get(head[3], 0) + 2)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            raise ConnectionRefusedError(f"SOCKS5 connection closed during the handshake: {exc}") from None
        if head[1] != 0:
            writer.close()
            err = ConnectionRefusedError(f"SOCKS5 reply {head[1]}")
            err.reply = head[1]
            raise err
        return reader, writer
