"""The library's default relay (HboneServer and Mesh.serve() without a handler) is safe
by default, as a node's inbound is: a tunnel goes to the address its connection arrived
on (or the one `destination_of` names) and nowhere else (400), and never to a listener
of the server or of its Mesh (400: each tunnel through such a loop would open another,
one level deeper). On real mTLS connections, stock asyncio and uvloop."""
import asyncio

import pytest

from meshcore import Mesh
from meshcore.aio import HboneServer
from meshcore.errors import TunnelError
from meshcore.identity import CertificateStore
from meshcore.localworkload import echo

from helpers import CLIENT, SERVER, exchange, port_of


async def echo_on(host: str, seen: list):
    async def recorded(reader, writer):
        seen.append(host)
        await echo(reader, writer)
    return await asyncio.start_server(recorded, host, 0)


async def status_of(mesh, host, port, via):
    try:
        reader, writer = await mesh.open_tunnel(host, port, SERVER, via=via)
    except TunnelError as exc:
        return exc.status
    got = await exchange(reader, writer, b"ping")
    writer.close()
    return 200 if got[0] == 4 else got


def test_only_the_arrival_address_is_relayed(run, ca):
    async def scenario():
        seen = []
        here, elsewhere = await echo_on("127.0.0.1", seen), await echo_on("127.0.0.2", seen)
        async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local") as server:
            await server.start("127.0.0.1", 0)
            async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
                ok = await status_of(mesh, "127.0.0.1", port_of(here), server.address)
                other = await status_of(mesh, "127.0.0.2", port_of(elsewhere), server.address)
                name = await status_of(mesh, "localhost", port_of(here), server.address)
        here.close()
        elsewhere.close()
        return ok, other, name, seen
    ok, other, name, seen = run(scenario())
    assert (ok, other, name) == (200, 400, 400)
    assert seen == ["127.0.0.1"]                 # the refused ones were never dialed


def test_destination_of_names_the_arrival_address(run, ca):
    """A transparent proxy's server: the address before a REDIRECT is the one allowed."""
    async def scenario():
        seen = []
        target = await echo_on("127.0.0.3", seen)
        async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local",
                               destination_of=lambda sock: ("127.0.0.3", 15008)) as server:
            await server.start("127.0.0.1", 0)
            async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
                redirected = await status_of(mesh, "127.0.0.3", port_of(target), server.address)
                local = await status_of(mesh, "127.0.0.1", port_of(target), server.address)
                again = await status_of(mesh, "127.0.0.3", 15008, server.address)
        target.close()
        return redirected, local, again
    assert run(scenario()) == (200, 400, 400)


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_a_tunnel_to_the_servers_own_listener_is_refused(run, ca, bind):
    """Relayed, such a tunnel would reach the server again: a client could nest TLS in
    it, tunnel in tunnel, as deep as it liked through one server."""
    async def scenario():
        async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local") as server:
            await server.start(bind, 0)
            async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
                return await status_of(mesh, "127.0.0.1", server.address[1], ("127.0.0.1", server.address[1]))
    assert run(scenario()) == 400


def test_mesh_serve_without_a_handler_relays_safely(run, ca):
    async def scenario():
        seen = []
        upstream = await echo_on("127.0.0.1", seen)
        async with Mesh(SERVER, CertificateStore(ca)) as server_side, Mesh(CLIENT, CertificateStore(ca)) as mesh:
            first = await server_side.serve(host="127.0.0.1", port=0)
            second = await server_side.serve(host="127.0.0.1", port=0)
            relayed = await status_of(mesh, "127.0.0.1", port_of(upstream), first.address)
            elsewhere = await status_of(mesh, "127.0.0.2", port_of(upstream), first.address)
            sibling = await status_of(mesh, "127.0.0.1", second.address[1], first.address)
        upstream.close()
        return relayed, elsewhere, sibling
    assert run(scenario()) == (200, 400, 400)
