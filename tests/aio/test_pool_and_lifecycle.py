"""Pool behaviour (docs/hbone.md, Connection pool), drain, keepalive and handshake timeouts, on real
mTLS connections."""
import asyncio
import hashlib
import os
import socket

import pytest

from meshcore import Mesh
from meshcore.aio import HboneServer, dial
from meshcore.errors import IdentityError
from meshcore.identity import CertificateStore

from helpers import (CLIENT, SERVER, exchange, port_of, relay_setup, server_and_h2_client, tcp_echo_server,
                     wait_until)


async def open_echo(mesh, server, echo):
    return await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address)


def test_burst_of_200_opens_dials_once(run, ca):
    async def scenario():
        async with relay_setup(ca, mesh_options={"max_streams": 200}) as (server, echo, mesh):
            pairs = await asyncio.gather(*(open_echo(mesh, server, echo) for _ in range(200)))
            assert mesh.pool.dials == 1 and len(server.connections) == 1
            results = await asyncio.gather(*(exchange(r, w, b"%d" % i) for i, (r, w) in enumerate(pairs)))
            assert results == [(len(b"%d" % i), hashlib.sha256(b"%d" % i).hexdigest()) for i in range(200)]
    run(scenario())


def test_stream_limit_opens_a_second_connection(run, ca):
    async def scenario():
        async with relay_setup(ca, mesh_options={"max_streams": 5}) as (server, echo, mesh):
            pairs = await asyncio.gather(*(open_echo(mesh, server, echo) for _ in range(6)))
            assert mesh.pool.dials == 2
            for r, w in pairs:
                w.close()
    run(scenario())


def test_peer_stream_limit_is_respected(run, ca):
    """The server advertises 3 concurrent streams: the 4th tunnel goes on a new connection."""
    async def scenario():
        async with relay_setup(ca, server_options={"max_concurrent_streams": 3}) as (server, echo, mesh):
            pairs = await asyncio.gather(*(open_echo(mesh, server, echo) for _ in range(4)))
            assert mesh.pool.dials == 2
            for r, w in pairs:
                w.write(b"ok")
                assert await r.readexactly(2) == b"ok"
    run(scenario())


def test_goaway_sends_new_streams_to_a_new_connection(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            r1, w1 = await open_echo(mesh, server, echo)
            (first,) = server.connections
            draining = asyncio.ensure_future(first.drain(deadline=30))
            await wait_until(lambda: mesh.pool.connections[0].goaway, timeout=1)
            r2, w2 = await open_echo(mesh, server, echo)
            assert mesh.pool.dials == 2
            w1.write(b"old stream")               # the old stream still finishes
            assert await r1.readexactly(10) == b"old stream"
            w1.write_eof()
            assert await r1.read() == b""
            await asyncio.wait_for(draining, 5)   # drain ends once its stream is done
            w2.write(b"new")
            assert await r2.readexactly(3) == b"new"
            w2.close()
    run(scenario())


def test_idle_connections_are_released(run, ca):
    async def scenario():
        async with relay_setup(ca, mesh_options={"idle_timeout": 0.2}) as (server, echo, mesh):
            r, w = await open_echo(mesh, server, echo)
            await exchange(r, w, b"x")
            assert len(mesh.pool.connections) == 1
            await wait_until(lambda: not mesh.pool.connections, timeout=2)
            assert mesh.pool.connections == []
            r, w = await open_echo(mesh, server, echo)      # a new one on demand
            assert await exchange(r, w, b"y") == (1, hashlib.sha256(b"y").hexdigest())
            assert mesh.pool.dials == 2
    run(scenario())


def test_drain_during_traffic_loses_no_byte(run, ca):
    async def scenario():
        echo = await tcp_echo_server()
        server = HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local")
        await server.start()
        async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
            payloads = [os.urandom(4_000_000) for _ in range(3)]
            pairs = [await open_echo(mesh, server, echo) for _ in payloads]
            transfers = [asyncio.ensure_future(exchange(r, w, p)) for (r, w), p in zip(pairs, payloads)]
            await asyncio.sleep(0.05)
            await server.close(drain_deadline=30)        # GOAWAY in the middle of the transfers
            results = await asyncio.gather(*transfers)
            assert results == [(len(p), hashlib.sha256(p).hexdigest()) for p in payloads]
        echo.close()
    run(scenario())


def test_unanswered_ping_closes_the_connection(run, ca):
    """A server that completes TLS and SETTINGS, then goes silent."""
    async def scenario():
        async def mute(reader, writer):
            writer.write(bytes.fromhex("000000040000000000"))      # empty SETTINGS, then nothing
            await asyncio.sleep(30)
        silent = await asyncio.start_server(mute, "127.0.0.1", 0, ssl=CertificateStore(ca).server_context(SERVER))
        conn = await dial("127.0.0.1", port_of(silent), CertificateStore(ca).client_context(CLIENT), [SERVER],
                          keepalive_interval=0.1, keepalive_timeout=0.3)
        await asyncio.wait_for(asyncio.shield(conn.closed), 5)
        assert isinstance(conn.error, TimeoutError)
        silent.close()
    run(scenario())


def test_stalled_handshake_is_closed_after_the_timeout(run, ca):
    async def scenario():
        server = HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local", handshake_timeout=0.3)
        await server.start()
        reader, writer = await asyncio.open_connection(*server.address)   # slowloris: send nothing
        started = asyncio.get_running_loop().time()
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"" and asyncio.get_running_loop().time() - started < 3
        assert server.stats["handshake_failed"] == 1
        writer.close()
        await server.close()
    run(scenario())


def test_reset_request_cancels_its_pending_work(run, ca):
    """Rapid Reset's victim work: a CONNECT reset while its authorization (or upstream
    dial) is pending is cancelled."""
    async def scenario():
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def slow_authorize(request):
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        async with server_and_h2_client(ca, authorize=slow_authorize) as (server, client):
            sid = client.open("127.0.0.1:9")
            await asyncio.wait_for(started.wait(), 5)
            client.ep.conn.reset_stream(sid, 8)
            client.ep.flush()
            await asyncio.wait_for(cancelled.wait(), 5)
    run(scenario())


def test_a_refused_tcp_connect_is_an_oserror_not_an_identity_problem(run, ca):
    """Nothing listens at the address: the caller gets the socket's own error
    (ConnectionRefusedError), not IdentityError("TLS handshake failed ...")."""
    with socket.socket() as s:                 # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        store = CertificateStore(ca)
        with pytest.raises(ConnectionRefusedError) as err:
            await dial("127.0.0.1", port, store.client_context(CLIENT), [SERVER])
        assert not isinstance(err.value, IdentityError)
    run(go())
