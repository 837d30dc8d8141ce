"""`meshcore demo`: a real local mesh of separate processes, and what it did.

A built-in CA (`meshcore ca init`), two node proxies (`meshcore node`) on their own
loopback addresses, a waypoint (`meshcore waypoint`), an HTTP/echo workload behind
node-b and a process outside the mesh. The client (this process, bound to the client
workload's address) goes through node-a's SOCKS5 listener: an allowed request, a
megabytes echo checked by SHA-256, a request denied by an AuthorizationPolicy, two
requests through the waypoint (one path allowed, one denied with 403), and a non-mesh
destination passed through.
Then the report: what each node saw, the metrics that counted it, the access log.
`--keep` leaves the mesh running until Ctrl-C.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import time

from meshcore.localmesh import LocalMesh

SOCKS_REPLIES = {1: "general failure", 2: "not allowed by the mesh", 3: "network unreachable",
                 4: "host unreachable", 5: "connection refused"}


def _fields(line: str) -> dict:
    return dict((k, v.strip('"')) for k, v in re.findall(r'(\S+?)=("[^"]*"|\S+)', line))


def _access_lines(mesh: LocalMesh, node: str) -> list[str]:
    return [line for line in mesh.log(node).splitlines() if "\taccess\t" in line]


async def _http_via_socks(mesh: LocalMesh, source: str, host: str, port: int, path: str = "/") -> str:
    reader, writer = await mesh.socks5(source, host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    body = answer.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    return f"{status.split(' ', 1)[1] if ' ' in status else status}  {body!r}"


async def _echo_via_socks(mesh: LocalMesh, size: int) -> tuple[bool, float]:
    payload = os.urandom(size)
    started = time.perf_counter()
    reader, writer = await mesh.socks5(mesh.client, "web.shop.svc.cluster.local", 9000)

    async def send():
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
    sender = asyncio.ensure_future(send())
    digest, got = hashlib.sha256(), 0
    while chunk := await reader.read(1 << 16):
        digest.update(chunk)
        got += len(chunk)
    await sender
    writer.close()
    return got == size and digest.digest() == hashlib.sha256(payload).digest(), time.perf_counter() - started


async def exercise(mesh: LocalMesh, out=print) -> bool:
    ok = True
    out("allowed   client -> web.shop.svc.cluster.local:80 (node-a SOCKS5 -> HBONE mTLS -> node-b -> web)")
    out(f"          {await _http_via_socks(mesh, mesh.client, 'web.shop.svc.cluster.local', 80)}")
    same, seconds = await _echo_via_socks(mesh, 8 << 20)
    ok = ok and same
    out(f"allowed   client -> web:9000 echo, 8 MiB there and back in {seconds * 1000:.0f} ms, "
        f"sha256 {'match' if same else 'MISMATCH'}")
    try:
        await mesh.socks5(mesh.batch, mesh.vip, 80)
        ok = False
        out("UNEXPECTED batch -> web was allowed")
    except ConnectionRefusedError as exc:
        reply = getattr(exc, "reply", None)
        ok = ok and reply == 2
        out(f"denied    batch  -> {mesh.vip}:80 (the VIP): SOCKS5 reply {reply} "
            f"({SOCKS_REPLIES.get(reply, exc)})")
    out("L7        client -> web-l7.shop.svc.cluster.local:80: node-a sends it to the waypoint, which decides "
        "per request")
    allowed = await _http_via_socks(mesh, mesh.client, "web-l7.shop.svc.cluster.local", 80, "/orders")
    denied = await _http_via_socks(mesh, mesh.client, "web-l7.shop.svc.cluster.local", 80, "/admin/users")
    out(f"          GET /orders       {allowed}")
    out(f"          GET /admin/users  {denied}   (shop/no-admin, attached to the waypoint)")
    ok = ok and allowed.startswith("200") and denied.startswith("403") and "RBAC: access denied" in denied
    out(f"outside   client -> {mesh.outside}:8080, not a mesh address: plain TCP")
    out(f"          {await _http_via_socks(mesh, mesh.client, mesh.outside, 8080)}")
    return ok


def report(mesh: LocalMesh, out=print) -> bool:
    ok = True
    await_lines = time.monotonic() + 3
    while time.monotonic() < await_lines and len(_access_lines(mesh, "node-b")) < 3:
        time.sleep(0.05)
    out("\nwhat node-b (the destination's node) saw, from its access log:")
    for line in _access_lines(mesh, "node-b"):
        f = _fields(line)
        verdict = f.get("error") or "connection complete"
        out(f"  {f.get('src.workload', '?'):>6} {f.get('src.identity', '-')}  ->  {f.get('dst.workload', '?')} "
            f"{f.get('dst.addr', '')}  {f.get('bytes_recv', 0)}/{f.get('bytes_sent', 0)} bytes in/out  {verdict}")
    denied = [line for line in _access_lines(mesh, "node-b") if "denied by DENY policy shop/deny-jobs" in line]
    ok = ok and len(denied) == 1
    out("\nwhat node-a (the client's node) logged:")
    for line in _access_lines(mesh, "node-a"):
        f = _fields(line)
        via = f"HBONE {f['dst.hbone_addr']} as {f.get('src.identity')}" if "dst.hbone_addr" in f else "plain TCP"
        out(f"  {f.get('src.workload', '?'):>6} -> {f.get('dst.addr')} via {via}: "
            f"{f.get('error') or 'connection complete'}")
    out("\nwhat the waypoint decided, from its access log (one line per request):")
    requests = [line for line in _access_lines(mesh, "waypoint") if "http.method" in line]
    for line in requests:
        f = _fields(line)
        out(f"  {f.get('src.identity', '-')} {f.get('http.method')} {f.get('http.path')} -> "
            f"{f.get('http.status')} {f.get('dst.workload', '') or ''} {f.get('error', '')}".rstrip())
    ok = ok and any('http.status=403' in line for line in requests) and any('http.status=200' in line
                                                                            for line in requests)
    status, text = mesh.http_get(mesh.node["node-b"], 15020, "/metrics")
    out(f"\nmetrics   node-b http://{mesh.node['node-b']}:15020/metrics (status {status}):")
    for line in text.splitlines():
        if line.startswith(("istio_tcp_connections_opened_total", "istio_tcp_connections_failed_total")):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out(f"  {line.split('{')[0]}  source_workload={labels['source_workload']} "
                f"source_principal={labels['source_principal']} response_flags={labels['response_flags']}"
                f"  {line.rsplit(' ', 1)[1]}")
    status, text = mesh.http_get(mesh.node["node-b"], 15000, "/config_dump")
    dump = json.loads(text) if status == 200 else {}
    certs = [c["identity"] for c in dump.get("certificates", [])]
    out(f"admin     node-b /config_dump: {len(dump.get('workloads', []))} workloads, "
        f"{len(dump.get('policies', []))} policies, certificates for {', '.join(certs) or 'none'}")
    ok = ok and certs == ["spiffe://cluster.local/ns/shop/sa/web"]
    return ok


def next_steps(mesh: LocalMesh) -> str:
    a, b = mesh.node["node-a"], mesh.node["node-b"]
    return f"""
try it yourself, while the mesh runs:
  curl --interface {mesh.client} --socks5-hostname {a}:15080 http://web.shop.svc.cluster.local/
  curl --interface {mesh.batch} --socks5-hostname {a}:15080 http://web.shop.svc.cluster.local/   # denied
  curl --interface {mesh.client} --socks5-hostname {a}:15080 http://web-l7.shop.svc.cluster.local/admin/users   # 403 at the waypoint
  curl http://{b}:15000/config_dump          curl http://{b}:15020/metrics
  curl http://{mesh.waypoint}:15000/config_dump   curl http://{mesh.waypoint}:15020/metrics   # the waypoint's
  meshcore policy explain --from cluster.local/ns/jobs/sa/batch --to shop/web {mesh.config_path} {mesh.policy_path}
  meshcore policy explain --waypoint shop/waypoint --service shop/web-l7 --from cluster.local/ns/shop/sa/client --method GET --path /admin/users {mesh.config_path} {mesh.policy_path}
  curl -X POST "http://{a}:15000/logging?level=debug"
  edit {mesh.policy_path} and watch the nodes reload it (a broken edit is refused, the old policy stays)
  the logs: node-a.log, node-b.log and waypoint.log in {mesh.dir}"""


def run_demo(directory: str, keep: bool = False, out=print) -> bool:
    mesh = LocalMesh(directory)
    started = time.perf_counter()
    mesh.start()
    out(f"meshcore demo: a local mesh of separate processes, up in {time.perf_counter() - started:.1f} s\n")
    out(f"CA        meshcore ca init -> {mesh.dir / 'ca'} (trust domain cluster.local)")
    out(f"node-a    meshcore node on {mesh.node['node-a']} (pid {mesh.processes['node-a'].pid}): "
        f"client {mesh.client}, batch {mesh.batch}")
    out(f"node-b    meshcore node on {mesh.node['node-b']} (pid {mesh.processes['node-b'].pid}): "
        f"web {mesh.web} (HTTP :8080, echo :9000)")
    out(f"service   web.shop.svc.cluster.local VIP {mesh.vip} (80 -> 8080, 9000 -> 9000)")
    out(f"waypoint  meshcore waypoint on {mesh.waypoint} (pid {mesh.processes['waypoint'].pid}) for "
        f"web-l7.shop.svc.cluster.local VIP {mesh.vip_l7}")
    out("policy    shop/web-callers ALLOW from cluster.local/ns/shop/sa/client; shop/deny-jobs DENY from "
        "namespace jobs; shop/no-admin DENY /admin* at the waypoint\n")
    try:
        ok = asyncio.run(exercise(mesh, out))
        ok = report(mesh, out) and ok
        if keep:
            out(next_steps(mesh))
            out("\nthe mesh is running; Ctrl-C stops it")
            try:
                while all(p.poll() is None for p in mesh.processes.values()):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        codes = mesh.stop()
    drained = all(code == 0 for code in codes.values())
    out(f"\nstopped   every process exited ({', '.join(f'{k} {v}' for k, v in codes.items())})")
    if not keep:
        # commands for processes that are gone would not work: say how to get them
        out("          `meshcore demo --keep` leaves the mesh running, with commands to try it yourself")
    ok = ok and drained
    out("all as expected" if ok else "UNEXPECTED RESULTS (see the logs above)")
    return ok


def main(keep: bool = False, directory: str | None = None) -> int:
    if directory:
        return 0 if run_demo(directory, keep) else 1
    with tempfile.TemporaryDirectory(prefix="meshcore-demo-") as tmp:
        return 0 if run_demo(tmp, keep) else 1


if __name__ == "__main__":
    sys.exit(main())
