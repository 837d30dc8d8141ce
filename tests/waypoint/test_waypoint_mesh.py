"""A waypoint between two node proxies, as processes: node-a sends a service's traffic to
the waypoint (the service names it), the waypoint sends it on to the endpoint through
node-b with its own identity. HTTP/1.1 goes request by request under the waypoint's
policies (curl); traffic that is not HTTP crosses it as a whole connection."""
import asyncio
import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(WaypointMesh(tmp_path_factory.mktemp("waypoint"))) as m:
        yield m


async def _echo(mesh, size):
    # a NUL first: random bytes that happened to begin like a request line ("GET " is as
    # likely as any) would be read as HTTP, as Envoy would read them
    payload = b"\0" + os.urandom(size - 1)
    reader, writer = await mesh.socks5(mesh.vip, 9000)
    writer.write(payload)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_tcp_crosses_the_waypoint_whole_and_the_destination_sees_the_waypoints_identity(mesh):
    assert asyncio.run(_echo(mesh, 3 << 20))
    # node-a sent it to the waypoint, the waypoint to node-b with its own identity
    deadline = time.monotonic() + 5
    while not re.search(r'src.identity="spiffe://cluster.local/ns/shop/sa/waypoint".*dst.workload="web"',
                        mesh.log("node-b")):
        assert time.monotonic() < deadline, mesh.log("node-b")[-2000:]
        time.sleep(0.05)
    assert re.search(rf"dst.hbone_addr={re.escape(mesh.vip)}:9000", mesh.log("node-a"))
    status, body = LocalMesh.http_get(mesh.waypoint, 15000, "/config_dump")
    dump = json.loads(body)
    assert dump["waypoint"]["identity"] == "spiffe://cluster.local/ns/shop/sa/waypoint"
    assert [s["hostname"] for s in dump["services"]] == ["web.shop.svc.cluster.local"]


def test_concurrent_tunnels_through_the_waypoint(mesh):
    async def many():
        return await asyncio.gather(*(_echo(mesh, size) for size in [1, 1000, 65536, 1 << 20] * 4))
    assert all(asyncio.run(many()))


def curl(mesh, *args, timeout=10):
    return subprocess.run(["curl", "-sS", "-m", str(timeout), "--interface", mesh.client, "--socks5",
                           f"{mesh.node['node-a']}:15080", *args], capture_output=True, text=True)


@pytest.mark.needs_tool("curl")
def test_http_requests_cross_the_waypoint_under_its_policies(mesh):
    ok = curl(mesh, "-i", f"http://{mesh.vip}/hello", f"http://{mesh.vip}/again")     # one kept-alive tunnel
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("HTTP/1.1 200") == 2 and "hello from web: GET /hello" in ok.stdout, ok.stdout
    # the backend saw the headers a mesh proxy adds
    denied = curl(mesh, "-i", f"http://{mesh.vip}/admin/users")
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.startswith("HTTP/1.1 403") and denied.stdout.endswith("RBAC: access denied"), denied.stdout
    # a method the policy does not name passes
    put = curl(mesh, "-i", "-X", "PUT", "--data-binary", "x" * 100000, f"http://{mesh.vip}/admin/upload")
    assert put.stdout.startswith("HTTP/1.1 "), put.stdout
    assert not put.stdout.startswith("HTTP/1.1 403"), put.stdout
    status, metrics = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")
    assert re.search(r'istio_requests_total\{[^}]*reporter="waypoint"[^}]*response_code="403"[^}]*\} 1\.0', metrics)
    assert re.search(r'istio_requests_total\{[^}]*destination_workload="web"[^}]*response_code="200"', metrics)
    log = mesh.log("waypoint")
    assert re.search(r'request complete.*http.method="GET" http.path="/hello".*http.status=200', log), log[-2000:]
    assert re.search(r'http.path="/admin/users".*http.status=403.*error="denied:', log), log[-2000:]

    async def close_after_one():
        reader, writer = await mesh.socks5(mesh.vip, 80)
        writer.write(b"GET /once HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer
    assert asyncio.run(close_after_one()).startswith(b"HTTP/1.1 200")
    # the tunnels ended cleanly on node-a's side too (the waypoint half-closes and lets the
    # client end its side, rather than cancelling the tunnel under it)
    lines = [line for line in mesh.log("node-a").splitlines() if f"dst.hbone_addr={mesh.vip}:80" in line]
    assert lines and not [line for line in lines if "abnormally" in line], lines
    # node-b knows the waypoint by its address: it dials from its own workload address
    assert re.search(r'src.workload="waypoint".*src.identity="spiffe://cluster.local/ns/shop/sa/waypoint"',
                     mesh.log("node-b"))
