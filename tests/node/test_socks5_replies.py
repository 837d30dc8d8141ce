"""A SOCKS5 request gets exactly one reply (RFC 1928), sent once the outcome of the
dial is known, on stock asyncio and uvloop: 0x00 and the destination's bytes after
it, 0x05 when the destination refuses, 0x04 when it cannot be reached, 0x02 when
policy denies. One in-process node serves a client and a web workload; a server
outside the mesh is passed through in plain TCP."""
import asyncio
import random
import struct

import pytest

from meshcore.node.proxy import NodeOptions, NodeProxy

MESH = """
workloads:
- {{uid: c, name: client, namespace: shop, serviceAccount: client, workloadIps: ["{p}.1.1"], protocol: HBONE, node: n1}}
- {{uid: b, name: batch, namespace: jobs, serviceAccount: batch, workloadIps: ["{p}.1.3"], protocol: HBONE, node: n1}}
- {{uid: w, name: web, namespace: shop, serviceAccount: web, workloadIps: ["{p}.1.2"], protocol: HBONE, node: n1,
    labels: {{app: web}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-jobs, namespace: shop}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{namespaces: [jobs]}}}}]}}]
"""


@pytest.fixture
def node(tmp_path):
    p = f"127.{random.randint(100, 250)}"
    (tmp_path / "mesh.yaml").write_text(MESH.format(p=p))
    off = dict.fromkeys(("outbound", "inbound-plaintext", "admin", "metrics", "readiness"))
    options = NodeOptions(node_name="n1", config_paths=(str(tmp_path / "mesh.yaml"),), address=f"{p}.0.1",
                          state_dir=str(tmp_path / "state"), connect_timeout=3,
                          listen={**off, "socks5": (f"{p}.0.1", 15080)})
    return p, options


async def socks5_exchange(node_address: str, source: str, host: str, port: int, send: bytes = b"") -> bytes:
    """Everything the node writes back to one SOCKS5 CONNECT, until it closes."""
    reader, writer = await asyncio.open_connection(node_address, 15080, local_addr=(source, 0))
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01" + bytes(map(int, host.split("."))) + struct.pack("!H", port))
    head = await reader.readexactly(10)
    if head[1] == 0 and send:
        writer.write(send)
        writer.write_eof()
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        rest = b"<reset>"
    writer.close()
    return head + rest


def _scenario(node, target):
    p, options = node

    async def scenario():
        proxy = await NodeProxy(options).start()
        try:
            return await target(p, proxy)
        finally:
            await proxy.drain()
    return scenario()


@pytest.mark.parametrize("where", ["3.1", "1.2"])      # outside the mesh (plain TCP); web (HBONE)
def test_success_is_answered_once_before_the_destination_speaks(run, node, where):
    async def target(p, proxy):
        async def banner(reader, writer):       # speaks first, as an SSH or SMTP server does
            writer.write(b"banner\n")
            writer.write(await reader.read())
            writer.close()
        server = await asyncio.start_server(banner, f"{p}.{where}", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await socks5_exchange(f"{p}.0.1", f"{p}.1.1", f"{p}.{where}", port, send=b"ping")
        finally:
            server.close()
    got = run(_scenario(node, target))
    assert got[:2] == b"\x05\x00" and got[10:] == b"banner\nping"


@pytest.mark.parametrize("case, code", [
    ("refused", 0x05),          # plain TCP to a port where nothing listens
    ("unreachable", 0x04),      # a mesh workload's port where nothing listens: the peer answers 503
    ("denied", 0x02),           # the destination's policy denies the source: the peer answers 401
])
def test_a_failure_is_the_only_reply(run, node, case, code):
    async def target(p, proxy):
        source, host = {"refused": (f"{p}.1.1", f"{p}.3.1"), "unreachable": (f"{p}.1.1", f"{p}.1.2"),
                        "denied": (f"{p}.1.3", f"{p}.1.2")}[case]
        return await socks5_exchange(f"{p}.0.1", source, host, 1 if case != "denied" else 8080)
    got = run(_scenario(node, target))
    assert got[:2] == bytes((5, code)), got
    assert len(got) == 10, f"more than one reply: {got.hex(' ')}"


@pytest.mark.needs_tool("curl")
def test_curl_reports_the_refusal(node):
    """curl reads a success reply followed by a failure as the start of an HTTP/0.9
    answer: with one reply, it reports the refusal and its code."""
    import subprocess

    async def target(p, proxy):
        return await asyncio.to_thread(subprocess.run, [
            "curl", "-sS", "-m", "5", "--interface", f"{p}.1.1", "--socks5", f"{p}.0.1:15080",
            f"http://{p}.3.1:1/"], capture_output=True, text=True)
    from loops import loop_runner
    proc = loop_runner("uvloop")(_scenario(node, target))
    assert proc.returncode == 97, proc.stderr          # curl: could not connect through the proxy
    assert proc.stderr.rstrip().endswith("(5)"), proc.stderr   # the reply code: connection refused
