"""Every dial and relay belongs to its stream, every stream to its connection: when
either ends, what it owns ends with it. Driven by an independent h2 client over real
mTLS, with file descriptors counted before and after."""
import asyncio
import hashlib
import os

from meshcore import Mesh
from meshcore.aio import relay_to_authority
from meshcore.identity import CertificateStore

from helpers import (CLIENT, SERVER, exchange, listener_that_never_accepts, port_of, server_and_h2_client,
                     tcp_echo_server, wait_until)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def assert_echoed(client, sid: int, payload: bytes) -> None:
    """The tunnel was answered 200, ended cleanly (END_STREAM, not a reset), and brought
    back exactly `payload`."""
    assert await client.status[sid] == 200
    assert await client.ended[sid] == "end"
    assert hashlib.sha256(client.received[sid]).digest() == hashlib.sha256(payload).digest()


async def holding_server(accepted: list):
    """An upstream that accepts and keeps each connection open until its peer goes."""
    async def hold(reader, writer):
        accepted.append(writer)
        try:
            await reader.read()
        except ConnectionError:
            pass                                    # reset: what an aborted tunnel gives
        finally:
            writer.close()
            accepted.remove(writer)
    return await asyncio.start_server(hold, "127.0.0.1", 0)


def test_lost_connection_closes_every_upstream_it_opened(run, ca):
    async def scenario():
        accepted: list = []
        upstream = await holding_server(accepted)
        before = open_fds()
        async with server_and_h2_client(ca) as (server, client):
            sids = [client.open(f"127.0.0.1:{port_of(upstream)}") for _ in range(150)]
            assert await asyncio.gather(*(client.status[s] for s in sids)) == [200] * 150
            await wait_until(lambda: len(accepted) == 150, 5)
            assert len(accepted) == 150
            client.ep.writer.transport.abort()          # the peer vanishes
            await wait_until(lambda: not accepted and not server.connections, 5)
            assert not accepted, f"{len(accepted)} upstream connections outlived their HBONE connection"
        await wait_until(lambda: open_fds() <= before, 5)
        assert open_fds() <= before
        upstream.close()
    run(scenario())


def test_lost_connection_cancels_upstream_dials_in_progress(run, ca):
    async def scenario():
        with listener_that_never_accepts() as (_, port):
            await asyncio.sleep(0.1)
            await drop_connection_while_dialing(port)

    async def drop_connection_while_dialing(port):
        async with server_and_h2_client(ca) as (server, client):
            before = open_fds()                 # the listener and the client's connection
            sids = [client.open(f"127.0.0.1:{port}") for _ in range(100)]
            await wait_until(lambda: open_fds() >= before + 100, 5)   # dials under way
            assert open_fds() >= before + 100
            client.ep.writer.transport.abort()
            await wait_until(lambda: not server.connections and open_fds() <= before, 5)
            assert open_fds() <= before, "dials outlived the connection that asked for them"
            assert not client.status[sids[0]].done() or client.status[sids[0]].result() is None
    run(scenario())


def test_reset_request_closes_its_dial(run, ca):
    async def scenario():
        with listener_that_never_accepts() as (_, port):
            await reset_while_dialing(port)

    async def reset_while_dialing(port):
        async with server_and_h2_client(ca) as (server, client):
            before = open_fds()
            sids = [client.open(f"127.0.0.1:{port}") for _ in range(15)]   # under the Rapid Reset limit (20)
            await wait_until(lambda: open_fds() >= before + 15, 5)
            for sid in sids:
                client.ep.conn.reset_stream(sid, 8)      # CANCEL
            client.ep.flush()
            await wait_until(lambda: open_fds() <= before, 5)
            assert open_fds() <= before
            # the connection is still good for an honest tunnel
            echo = await tcp_echo_server()
            sid = client.open(f"127.0.0.1:{port_of(echo)}")
            client.ep.send(sid, b"still here", end=True)
            await assert_echoed(client, sid, b"still here")
            echo.close()
    run(scenario())


def test_data_sent_before_the_answer_is_delivered(run, ca):
    """A client may send DATA (and END_STREAM) right behind its CONNECT: it waits in
    the stream until the upstream is connected, and nothing is lost."""
    async def scenario():
        echo = await tcp_echo_server()

        async def slow_authorize(request):
            await asyncio.sleep(0.2)                    # the data arrives before the answer
            return True
        async with server_and_h2_client(ca, authorize=slow_authorize) as (server, client):
            payloads = {}
            for i in range(8):
                sid = client.open(f"127.0.0.1:{port_of(echo)}")
                payloads[sid] = os.urandom(1000 + 300_000 * i)
                client.ep.send(sid, payloads[sid], end=True)
            for sid, payload in payloads.items():
                await assert_echoed(client, sid, payload)
        echo.close()
    run(scenario())


def test_refused_streams_give_back_the_window_their_early_data_used(run, ca):
    """20 denied tunnels each send 1 MiB before their 401 (more than the 16 MiB
    connection window in all); an honest tunnel on the same connection still flows."""
    async def scenario():
        echo = await tcp_echo_server()

        async def deny_slowly(request):
            await asyncio.sleep(0.1)
            return request.header(b"x-honest") == b"1"
        async with server_and_h2_client(ca, authorize=deny_slowly) as (server, client):
            denied = []
            for _ in range(20):
                sid = client.open(f"127.0.0.1:{port_of(echo)}")
                client.ep.send(sid, b"x" * (1 << 20))
                denied.append(sid)
            assert await asyncio.gather(*(client.status[s] for s in denied)) == [401] * 20
            sid = client.open(f"127.0.0.1:{port_of(echo)}", headers=[(b"x-honest", b"1")])
            payload = os.urandom(20 << 20)
            client.ep.send(sid, payload, end=True)
            await assert_echoed(client, sid, payload)
        echo.close()
    run(scenario())


def test_unread_data_of_a_closed_stream_goes_back_to_the_connection_window(run, ca):
    """A handler that closes its tunnel without reading what it was sent must not
    shrink the connection window that every other tunnel shares."""
    async def scenario():
        async def handler(reader, writer, request):
            if request.port == 81:                        # the honest tunnel: echo
                while data := await reader.read(1 << 16):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
                return
            await asyncio.sleep(0.3)                      # the data is in by now, unread
            writer.close()

        async with Mesh(SERVER, CertificateStore(ca)) as db, Mesh(CLIENT, CertificateStore(ca)) as web:
            server = await db.serve(handler, "127.0.0.1", 0)
            for _ in range(3):     # 3 rounds of 8 x 3 MiB left unread: 72 MiB > the 16 MiB window
                tunnels = [await web.open_tunnel("10.0.0.1", 80, SERVER, via=server.address) for _ in range(8)]
                for _, w in tunnels:
                    w.write(b"y" * (3 << 20))
                for r, w in tunnels:
                    try:
                        await r.read()
                    except ConnectionError:
                        pass
                    w.close()
            assert web.pool.dials == 1                    # all of it on one pooled connection
            r, w = await web.open_tunnel("10.0.0.1", 81, SERVER, via=server.address)
            payload = os.urandom(8 << 20)
            assert await asyncio.wait_for(exchange(r, w, payload), 10) == (
                len(payload), hashlib.sha256(payload).hexdigest())
            await server.close()
    run(scenario())


def test_a_tunnel_given_up_before_its_answer_leaves_no_stream_or_pool_slot(run, ca):
    """An opener that times out before the server answers resets its stream at once: a
    peer that never answers holds neither a stream nor a pool slot."""
    import pytest
    from meshcore.aio import HboneServer

    async def scenario():
        cancelled = asyncio.Event()

        async def never_answers(request):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        server = HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local", handler=never_answers)
        await server.start()
        try:
            async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(mesh.open_tunnel("127.0.0.1", 9, SERVER, via=server.address), 0.3)
                conn, = mesh.pool.connections
                assert not conn.streams
                assert [e.active for e in mesh.pool.core.entries()] == [0]
                await asyncio.wait_for(cancelled.wait(), 2)         # the server saw the reset
        finally:
            await server.close()
    run(scenario())


async def _cancelled_by_the_client(ca, payload: bytes, *, end: bool, upstream_closes_after: float):
    """A relayed tunnel whose h2 client sends `payload` (with END_STREAM when `end`) and
    resets it with CANCEL at once; the upstream reads to its end of data and closes
    `upstream_closes_after` s later. (the splice, what the upstream read)."""
    splices, upstream_saw = [], []

    async def relay(request):
        try:
            return await relay_to_authority(request)
        finally:
            splices.append(request.extra.get("splice"))

    async def reads_to_the_end(reader, writer):
        upstream_saw.append(await reader.read())
        await asyncio.sleep(upstream_closes_after)
        writer.close()
    upstream = await asyncio.start_server(reads_to_the_end, "127.0.0.1", 0)
    async with server_and_h2_client(ca, handler=relay) as (server, client):
        sid = client.open(f"127.0.0.1:{port_of(upstream)}")
        assert await client.status[sid] == 200
        client.ep.send(sid, payload, end=end)
        client.ep.conn.reset_stream(sid, error_code=8)          # CANCEL
        client.ep.flush()
        await wait_until(lambda: splices, 5)
    upstream.close()
    await upstream.wait_closed()
    assert upstream_saw == [payload] and splices[0] is not None
    return splices[0]


def test_a_tunnel_its_client_cancels_after_its_end_ends_cleanly(run, ca):
    # A client giving up a kept-alive connection half-closes and then resets with CANCEL
    # (a peer's CANCEL reads as the end of the stream): the relay closes the upstream
    # before the upstream has ended its side, and that is not the upstream's failure.
    splice = run(_cancelled_by_the_client(ca, b"last request", end=True, upstream_closes_after=0.3))
    assert splice.error == "", splice.error


def test_a_tunnel_its_client_cancels_before_its_end_is_recorded_as_cut_by_the_client(run, ca):
    # A CANCEL before END_STREAM also reads as the end of the stream (the upstream gets
    # a FIN), but what the client was sending was cut short: the relay says so, and
    # names the client's side, not the upstream's.
    splice = run(_cancelled_by_the_client(ca, b"half an upload", end=False, upstream_closes_after=0))
    assert splice.error == "a: reset by its peer before the end of data", splice.error
