"""meshcore against an independent HBONE peer built on python-hyper's h2, over real
TLS on loopback, in both roles."""
import asyncio
import hashlib
import random
import re

import pytest

from meshcore import Mesh
from meshcore.aio import HboneServer, parse_authority
from meshcore.errors import ErrorCode, TunnelError
from meshcore.identity import CertificateStore

from h2hbone import h2_echo_server
from helpers import (CLIENT, SERVER, exchange, port_of, relay_setup, server_and_h2_client, tcp_echo_server,
                     tcp_talker_server, wait_until)


def test_our_client_against_h2_server(run, ca):
    async def scenario():
        server = await h2_echo_server(CertificateStore(ca).server_context(SERVER))
        async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
            rng = random.Random(1)
            payloads = [rng.randbytes(rng.choice([0, 1, 1000, 70_000, 600_000])) for _ in range(100)]

            async def one(payload):
                r, w = await mesh.open_tunnel("10.9.9.9", 8080, SERVER, via=("127.0.0.1", port_of(server)))
                return await exchange(r, w, payload)
            results = await asyncio.gather(*(one(p) for p in payloads))
            assert results == [(len(p), hashlib.sha256(p).hexdigest()) for p in payloads]
            assert mesh.pool.dials == 1           # 100 tunnels, one connection
        server.close()
    run(scenario())


def test_h2_client_against_our_server(run, ca):
    async def scenario():
        echo = await tcp_echo_server()
        async with server_and_h2_client(ca) as (server, client):
            rng = random.Random(2)
            payloads = {}
            for _ in range(100):
                sid = client.open(f"127.0.0.1:{port_of(echo)}")
                payloads[sid] = rng.randbytes(rng.choice([0, 5, 1000, 100_000]))
            statuses = await asyncio.gather(*(client.status[s] for s in payloads))
            assert set(statuses) == {200}
            for sid, p in payloads.items():
                client.ep.send(sid, p, end=True)
            await asyncio.gather(*(client.ended[s] for s in payloads))
            for sid, p in payloads.items():
                assert hashlib.sha256(client.received[sid]).digest() == hashlib.sha256(p).digest()
            client.ep.writer.close()
        echo.close()
    run(scenario())


def test_half_close_from_the_server_side(run, ca):
    """The upstream speaks first and half-closes; the tunnel still carries the client's
    bytes afterwards (h2 client -> our relay -> TCP talker)."""
    async def scenario():
        events = []
        talker = await tcp_talker_server(b"hello first" * 1000, events)
        async with server_and_h2_client(ca) as (server, client):
            sid = client.open(f"127.0.0.1:{port_of(talker)}")
            assert await client.status[sid] == 200
            await wait_until(lambda: len(client.received[sid]) == 11000, timeout=1)
            assert bytes(client.received[sid]) == b"hello first" * 1000
            client.ep.send(sid, b"late reply", end=True)
            assert await client.ended[sid] == "end"
            await wait_until(lambda: events, timeout=1)
            assert events == [("received", 10, hashlib.sha256(b"late reply").hexdigest())]
        talker.close()
    run(scenario())


def test_upstream_refused_is_503_and_others_continue(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            r, w = await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address)
            w.write(b"before")
            assert await r.readexactly(6) == b"before"
            with pytest.raises(TunnelError) as info:
                await mesh.open_tunnel("127.0.0.1", 1, SERVER, via=server.address)
            assert info.value.status == 503
            w.write(b"after")                      # the other tunnel is undisturbed
            assert await r.readexactly(5) == b"after"
            w.close()
            # counted once each has ended: the refusal is not an accepted tunnel
            await wait_until(lambda: server.stats["accepted"] + server.stats["refused"] == 2, timeout=5)
            assert (server.stats["accepted"], server.stats["refused"]) == (1, 1)
    run(scenario())


def test_authorization_hook_denies_with_401(run, ca):
    async def scenario():
        echo = await tcp_echo_server()
        server = HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local",
                             authorize=lambda req: req.port != port_of(echo))
        await server.start()
        async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
            with pytest.raises(TunnelError) as info:
                await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address)
            assert info.value.status == 401
        assert server.stats["denied"] == 1
        await server.close()
        echo.close()
    run(scenario())


def test_bad_requests_get_400(run, ca):
    async def scenario():
        async with server_and_h2_client(ca) as (server, client):
            bad_authority = client.open("no-port-here")
            long_host = client.open("a" * 300 + ":80")
            bad_label = client.open("bad_label.example:80")
            not_v6 = client.open("[10.0.0.1]:80")
            sid = client.ep.conn.get_next_available_stream_id()
            client.ep.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                                              (b":authority", b"x:1")], end_stream=True)
            loop = asyncio.get_running_loop()
            client.status[sid], client.ended[sid] = loop.create_future(), loop.create_future()
            client.received[sid] = bytearray()
            client.ep.flush()
            for bad in (bad_authority, long_host, bad_label, not_v6, sid):
                assert await client.status[bad] == 400
            assert server.stats["refused"] == 5
    run(scenario())


@pytest.mark.parametrize("authority, expected", [
    ("10.0.0.7:8080", ("10.0.0.7", 8080)),
    ("[fd00::7]:15008", ("fd00::7", 15008)),
    ("reviews.bookinfo.svc.cluster.local:9080", ("reviews.bookinfo.svc.cluster.local", 9080)),
    ("svc.example.:80", ("svc.example.", 80)),
    ("x" * 63 + ".example:1", ("x" * 63 + ".example", 1)),
])
def test_authority_parses(authority, expected):
    assert parse_authority(authority) == expected


@pytest.mark.parametrize("authority, reason", [
    ("10.0.0.7", "is not host:port"),
    ("10.0.0.7:0", "no valid port"),
    ("10.0.0.7:65536", "no valid port"),
    ("fd00::7:80", "is not host:port"),
    ("[fd00::7]", "must be written [addr]:port"),
    ("[10.0.0.7]:80", "is not an IPv6 address"),
    ("a" * 300 + ":80", "neither an IP address nor a DNS name (300 characters)"),
    ("x" * 64 + ".example:80", "neither an IP address nor a DNS name"),
    ("-bad.example:80", "neither an IP address nor a DNS name"),
    ("bad..example:80", "neither an IP address nor a DNS name"),
    ("b\u00e4d.example:80", "neither an IP address nor a DNS name"),
    (":80", "is not host:port"),
])
def test_authority_refused_with_reason(authority, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_authority(authority)


def test_peer_reset_mid_stream_aborts_our_reader(run, ca):
    """h2 server resets the stream with INTERNAL_ERROR: our side sees a reset, not EOF."""
    async def scenario():
        server = await h2_echo_server(CertificateStore(ca).server_context(SERVER), reset_after=1000)
        async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
            r, w = await mesh.open_tunnel("10.0.0.1", 80, SERVER, via=("127.0.0.1", port_of(server)))
            w.write(b"x" * 5000)
            with pytest.raises(ConnectionResetError, match="INTERNAL_ERROR"):
                while await r.read(1000):
                    pass
        server.close()
    run(scenario())


def test_peer_reset_aborts_the_upstream_tcp_with_rst(run, ca):
    """h2 client resets a relayed stream with INTERNAL_ERROR: the upstream TCP
    connection behind our relay is reset (RST), not closed as if complete."""
    async def scenario():
        events = []
        talker = await tcp_talker_server(b"", events)
        async with server_and_h2_client(ca) as (server, client):
            sid = client.open(f"127.0.0.1:{port_of(talker)}")
            assert await client.status[sid] == 200
            client.ep.send(sid, b"partial data")
            await asyncio.sleep(0.1)
            client.ep.conn.reset_stream(sid, ErrorCode.INTERNAL_ERROR)
            client.ep.flush()
            await wait_until(lambda: events, timeout=2)
            assert events == [("reset",)]
        talker.close()
    run(scenario())


def test_connection_loss_resets_every_relayed_tcp_connection(run, ca):
    async def scenario():
        events = []
        talker = await tcp_talker_server(b"", events)
        async with server_and_h2_client(ca) as (server, client):
            sids = [client.open(f"127.0.0.1:{port_of(talker)}") for _ in range(3)]
            await asyncio.gather(*(client.status[s] for s in sids))
            for s in sids:
                client.ep.send(s, b"data")
            await asyncio.sleep(0.1)
            client.ep.writer.transport.abort()        # the peer vanishes
            await wait_until(lambda: len(events) == 3, timeout=2)
            assert events == [("reset",)] * 3
        talker.close()
    run(scenario())
