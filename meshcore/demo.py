"""`meshcore demo`: a small real mesh on loopback.

A built-in CA issues SPIFFE certificates. An HBONE server stands in for the checkout
workload's node and enforces an Istio AuthorizationPolicy. Two in-process
workloads (frontend, batch) open mTLS HBONE tunnels through it to a TCP echo
service: frontend's tunnels carry random payloads that come back SHA-256-identical,
batch is denied (401), and a tunnel to a port nobody listens on is refused (503).
The node proxy replaces this with a whole local mesh.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from meshcore import Mesh
from meshcore._core.policy import PolicyEngine
from meshcore.aio import HboneServer
from meshcore.errors import TunnelError
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
from meshcore.policy import Workload, load_authorization_policies

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: checkout-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/frontend"]}
"""


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def run_demo(out=print, payload_sizes=(1, 1000, 1 << 20, 8 << 20)) -> bool:
    ca = CertificateAuthority.create("cluster.local")
    checkout = SpiffeId("cluster.local", "shop", "checkout")
    frontend = SpiffeId("cluster.local", "shop", "frontend")
    batch = SpiffeId("cluster.local", "jobs", "batch")
    out("CA        built-in root for trust domain cluster.local (ECDSA P-256), 24 h workload certificates")

    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    out(f"workload  checkout: tcp echo on 127.0.0.1:{echo_port}")

    table = PolicyEngine(load_authorization_policies(POLICY, "demo-policy.yaml")).for_workload(
        Workload.of("shop", {"app": "checkout"}))

    def authorize(request):
        return table.evaluate(request.peer_identity.principal, request.peer_address[0],
                              request.host, request.port)

    node_store = CertificateStore(ca)
    node = HboneServer(lambda _: node_store.server_context(checkout), "cluster.local", authorize=authorize)
    await node.start("127.0.0.1", 0)
    out(f"node      HBONE (mTLS 1.3, HTTP/2 CONNECT) on {node.address[0]}:{node.address[1]} "
        f"as {checkout}, policy shop/checkout-callers")
    ok = True
    async with Mesh(frontend, CertificateStore(ca)) as front, Mesh(batch, CertificateStore(ca)) as jobs:

        async def round_trip(size: int) -> None:
            nonlocal ok
            payload = os.urandom(size)
            started = time.perf_counter()
            reader, writer = await front.open_tunnel("127.0.0.1", echo_port, checkout, via=node.address)

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
            same = got == size and digest.digest() == hashlib.sha256(payload).digest()
            ok = ok and same
            ms = (time.perf_counter() - started) * 1000
            out(f"allowed   frontend -> checkout:{echo_port}  200  {size:>8} bytes there and back "
                f"in {ms:6.1f} ms  sha256 {'match' if same else 'MISMATCH'}")

        await asyncio.gather(*(round_trip(size) for size in payload_sizes))
        out(f"          {len(payload_sizes)} tunnels shared {front.pool.dials} mTLS connection")
        for who, mesh, port in (("batch   ", jobs, echo_port), ("frontend", front, 1)):
            try:
                await mesh.open_tunnel("127.0.0.1", port, checkout, via=node.address)
                ok = False
                out(f"UNEXPECTED {who} -> checkout:{port} was accepted")
            except TunnelError as exc:
                expected = 401 if mesh is jobs else 503
                ok = ok and exc.status == expected
                why = "denied by policy (no ALLOW matched)" if exc.status == 401 else "nothing listens there"
                out(f"{'denied ' if exc.status == 401 else 'refused'}   {who} -> checkout:{port:<5}  "
                    f"{exc.status}  {why}")
    await node.close()
    echo.close()
    out("all as expected" if ok else "UNEXPECTED RESULTS")
    return ok


def main() -> int:
    return 0 if asyncio.run(run_demo()) else 1


if __name__ == "__main__":
    sys.exit(main())
