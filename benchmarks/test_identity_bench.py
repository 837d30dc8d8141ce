"""Identity benchmarks: certificate issuance, and full TLS 1.3 handshakes on loopback
(mutual, as HBONE does them, beside server-only TLS as the baseline).

    pip install ".[bench]" && python benchmarks/report.py
"""
import asyncio
import socket
import ssl

import pytest

from meshcore.aio.tls import start_tls
from meshcore.identity import CertificateAuthority, SpiffeId, TrustBundle, client_context, server_context

ALICE = SpiffeId("cluster.local", "shop", "frontend")
BOB = SpiffeId("cluster.local", "shop", "checkout")
HANDSHAKES = 50


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.create("cluster.local")


@pytest.mark.parametrize("impl", ["meshcore", "rsa-2048"])
def test_issue_certificate(benchmark, ca, impl):
    """meshcore's default (new ECDSA P-256 key + signed certificate) vs RSA-2048 keys."""
    benchmark.group = "issue workload certificate (key + cert)"
    key_type = "ec-p256" if impl == "meshcore" else "rsa-2048"
    benchmark.pedantic(ca.issue, args=(ALICE,), kwargs={"key_type": key_type},
                       rounds=20 if key_type == "rsa-2048" else 200)


def _handshakes(server_ctx, client_ctx, n):
    """Python's ssl under asyncio's TLS layer (the baseline)."""
    async def run():
        async def serve(reader, writer):
            await reader.read(1)
            writer.close()
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        for _ in range(n):
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="")
            w.write(b"x")
            w.close()
        server.close()
    asyncio.run(run())


def _meshcore_handshakes(server_ctx, client_ctx, n):
    """meshcore's own TLS engine on both ends (meshcore.aio.tls.start_tls, as HBONE
    connections are made), each handshake followed by one byte as the baseline's."""
    async def run():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        try:
            for _ in range(n):
                client = socket.socket()
                client.setblocking(False)
                connecting = loop.create_task(loop.sock_connect(client, ("127.0.0.1", port)))
                accepted, _ = await loop.sock_accept(listener)
                await connecting
                accepted.setblocking(False)
                server_side = loop.create_task(start_tls(loop, accepted, server_ctx, _OneByte,
                                                         server_side=True, timeout=10))
                transport, _ = await start_tls(loop, client, client_ctx, _OneByte, server_side=False, timeout=10)
                transport.write(b"x")
                transport.close()
                (server_transport, protocol) = await server_side
                await protocol.got
                server_transport.close()
        finally:
            listener.close()
    asyncio.run(run())


class _OneByte(asyncio.Protocol):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        if not self.got.done():
            self.got.set_result(data)

    def connection_lost(self, exc):
        if not self.got.done():
            self.got.set_result(b"")


@pytest.mark.parametrize("impl", ["meshcore", "server-only TLS"])
def test_handshakes(benchmark, ca, impl):
    """HANDSHAKES full handshakes on loopback per round (TLS 1.3, no resumption): mutual
    TLS on meshcore's engine against server-only TLS on Python's ssl and asyncio."""
    benchmark.group = f"{HANDSHAKES} TLS 1.3 handshakes on loopback"
    benchmark.extra_info["operations"] = HANDSHAKES
    bundle = TrustBundle(ca.roots)
    server_ctx = server_context(ca.issue(BOB), bundle)
    if impl == "meshcore":
        client_ctx = client_context(ca.issue(ALICE), bundle)
    else:
        server_ctx.verify_mode = ssl.CERT_NONE
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.load_verify_locations(cadata=bundle.pem().decode())
        client_ctx.set_alpn_protocols(["h2"])
    run = _meshcore_handshakes if impl == "meshcore" else _handshakes
    benchmark.pedantic(run, args=(server_ctx, client_ctx, HANDSHAKES), rounds=5)
