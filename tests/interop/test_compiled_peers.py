"""meshcore against independent HBONE peers in compiled languages (Go's net/http HTTP/2
with crypto/tls, and Rust's h2 crate with tokio and rustls, the stack Istio's ztunnel
uses; both built by the tests), in both roles, and meshcore against itself, under
concurrent load, half-close, upstream resets and iperf3.

A pair is an outbound proxy (TCP in, HBONE out) and an inbound proxy (HBONE in, TCP
out to the authority); each is meshcore or a compiled peer."""
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import struct

import pytest

from meshcore import Mesh
from meshcore.aio import HboneServer, RelayListener
from meshcore.identity import CertificateStore

from loops import loop_runner
from compiled_peers import TOOLCHAINS, PeerProcess, identity_files, peer_binary
from helpers import CLIENT, SERVER, exchange, port_of, tcp_echo_server, tcp_talker_server, wait_until


def pairs(*kinds):
    """(outbound, inbound) pairs as parameters, each marked with the toolchain it needs."""
    return [pytest.param(pair, id="-".join(pair),
                         marks=[pytest.mark.needs_tool(TOOLCHAINS[k]) for k in set(pair) if k in TOOLCHAINS])
            for pair in kinds]


PAIRS = pairs(("meshcore", "meshcore"), ("go", "meshcore"), ("meshcore", "go"),
              ("rust", "meshcore"), ("meshcore", "rust"))
# Go's net/http server ends a response only when its handler returns, so a Go inbound
# cannot half-close toward the client while the client is still sending.
SERVER_HALF_CLOSE_PAIRS = pairs(("meshcore", "meshcore"), ("go", "meshcore"), ("rust", "meshcore"),
                                ("meshcore", "rust"))


@pytest.fixture(params=PAIRS)
def pair(request, ca, tmp_path):
    """tunnel_pair(target_port) -> async context giving the outbound's address."""
    out_kind, in_kind = request.param
    files = {"client": identity_files(ca, CLIENT, tmp_path), "server": identity_files(ca, SERVER, tmp_path)}

    logs = []

    @contextlib.asynccontextmanager
    async def tunnel_pair(target_port: int):
        async with contextlib.AsyncExitStack() as stack:
            if in_kind == "meshcore":
                server = await stack.enter_async_context(
                    HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local"))
                await server.start()
                inbound = server.address
            else:
                f = files["server"]
                peer = await stack.enter_async_context(PeerProcess(
                    [str(peer_binary(in_kind)), "-mode", "inbound", "-cert", f["cert"], "-key", f["key"],
                     "-ca", f["ca"]], tmp_path / f"{in_kind}-inbound.log"))
                inbound = peer.address
            if out_kind == "meshcore":
                mesh = await stack.enter_async_context(Mesh(CLIENT, CertificateStore(ca)))
                listener = await stack.enter_async_context(RelayListener(
                    lambda factory, client: mesh.open_tunnel_protocol(
                        "127.0.0.1", target_port, SERVER, factory, via=inbound)))
                await listener.start()
                yield listener.address
            else:
                f = files["client"]
                peer = await stack.enter_async_context(PeerProcess(
                    [str(peer_binary(out_kind)), "-mode", "outbound", "-peer", f"{inbound[0]}:{inbound[1]}",
                     "-authority", f"127.0.0.1:{target_port}", "-expect", str(SERVER),
                     "-cert", f["cert"], "-key", f["key"], "-ca", f["ca"]],
                    tmp_path / f"{out_kind}-outbound.log"))
                logs.append(peer)
                yield peer.address
    tunnel_pair.kinds = request.param
    tunnel_pair.peers = logs
    return tunnel_pair


def assert_no_stream_was_reset(pair) -> None:
    """The Rust peer logs every stream it or its partner reset: a clean transfer ends
    with END_STREAM both ways and no RST_STREAM."""
    for peer in pair.peers:
        assert "reset" not in peer.log, peer.log[-2000:]


def test_concurrent_tunnels_are_byte_exact(run, pair):
    async def scenario():
        echo = await tcp_echo_server()
        async with pair(port_of(echo)) as address:
            rng = random.Random(7)
            payloads = [rng.randbytes(rng.choice([0, 1, 5000, 300_000, 2_000_000])) for _ in range(40)]

            async def one(payload):
                return await exchange(*await asyncio.open_connection(*address), payload)
            results = await asyncio.gather(*(one(p) for p in payloads))
            assert results == [(len(p), hashlib.sha256(p).hexdigest()) for p in payloads]
        echo.close()
        assert_no_stream_was_reset(pair)
    run(scenario(), timeout=90)


@pytest.mark.parametrize("pair", SERVER_HALF_CLOSE_PAIRS, indirect=True)
def test_upstream_half_closes_first(run, pair):
    """The workload sends everything and half-closes, then reads until the client is
    done: both directions arrive whole, each ending with EOF, not a reset."""
    async def scenario():
        events: list = []
        first = os.urandom(1_500_000)
        talker = await tcp_talker_server(first, events)
        async with pair(port_of(talker)) as address:
            reader, writer = await asyncio.open_connection(*address)
            got = await reader.read()                    # until the workload's EOF
            assert hashlib.sha256(got).digest() == hashlib.sha256(first).digest()
            second = os.urandom(700_000)
            writer.write(second)
            writer.write_eof()
            await writer.drain()
            await wait_until(lambda: events, 10)
            assert events == [("received", len(second), hashlib.sha256(second).hexdigest())]
            writer.close()
        talker.close()
        assert_no_stream_was_reset(pair)
    run(scenario(), timeout=60)


async def resetting_server(after: int):
    """Reads `after` bytes, then resets the connection (SO_LINGER 0)."""
    async def handle(reader, writer):
        await reader.readexactly(after)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_upstream_reset_mid_transfer_reaches_the_client_as_a_reset(run, pair):
    """An upstream reset is never delivered as a clean end, and the tunnels beside it
    (on the same pooled connection) are not disturbed."""
    async def scenario():
        rude = await resetting_server(100_000)
        echo = await tcp_echo_server()
        async with pair(port_of(rude)) as rude_address, pair(port_of(echo)) as echo_address:
            async def doomed():
                reader, writer = await asyncio.open_connection(*rude_address)
                try:
                    writer.write(os.urandom(5_000_000))
                    await writer.drain()
                    writer.write_eof()
                    await reader.read()
                except OSError:             # ECONNRESET, or ENOTCONN from write_eof after the reset
                    return "reset"
                return "clean end"

            async def honest():
                payload = os.urandom(1_000_000)
                got = await exchange(*await asyncio.open_connection(*echo_address), payload)
                return got == (len(payload), hashlib.sha256(payload).hexdigest())
            outcomes = await asyncio.gather(*(doomed() for _ in range(6)), *(honest() for _ in range(6)))
            assert outcomes == ["reset"] * 6 + [True] * 6
        rude.close()
        echo.close()
    run(scenario(), timeout=60)


@pytest.mark.needs_tool("iperf3")
@pytest.mark.parametrize("loop, flows", [("uvloop", 1), ("uvloop", 4), ("uvloop", 8), ("asyncio", 4)])
def test_iperf3_through_the_pair(pair, loop, flows):
    """Every run and every flow completes without error. (iperf3 cannot prove that no
    byte was lost: its receiver stops counting at the end of the test and closes its
    sockets with data still in flight, even without a proxy in the path; the SHA-256
    tests above prove byte-exactness.)"""
    async def scenario():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = await asyncio.create_subprocess_exec(
            shutil.which("iperf3"), "-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            while b"listening" not in (line := await asyncio.wait_for(server.stdout.readline(), 10)):
                assert line, "iperf3 -s exited before listening"
            async with pair(port) as address:
                client = await asyncio.create_subprocess_exec(
                    shutil.which("iperf3"), "-c", address[0], "-p", str(address[1]), "-P", str(flows),
                    "-t", "1", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(client.communicate(), 40)
                report = json.loads(out)
                assert "error" not in report, report["error"]
                assert client.returncode == 0, err
                end = report["end"]
                assert len(end["streams"]) == flows
                assert all(s["sender"]["bytes"] > 0 and s["receiver"]["bytes"] > 0 for s in end["streams"])
        finally:
            if server.returncode is None:
                server.kill()
            await server.wait()
    loop_runner(loop)(scenario(), timeout=60)
