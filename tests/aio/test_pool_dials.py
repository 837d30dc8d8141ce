"""The pool owns its dials (meshcore.aio.pool): callers sharing a dial leave alone, a
dial nobody waits for is cancelled and closes what it opened, a failure reaches every
caller; requests that can never be sent cost no connection; a peer refusing streams or
going away is asked a bounded number of times. Real mTLS on loopback, file
descriptors counted, on asyncio and uvloop."""
import asyncio
import contextlib
import hashlib
import os
import socket

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from meshcore import Mesh
from meshcore.aio import HboneConnection, RelayListener
from meshcore.aio.pool import HbonePool, PoolKey
from meshcore.aio.tls import start_tls
from meshcore.errors import IdentityError, StreamRefusedError, TunnelError, UsageError
from meshcore.identity import CertificateStore, SpiffeId

from h2hbone import H2Endpoint
from helpers import CLIENT, SERVER, exchange, listener_that_never_accepts, port_of, relay_setup, wait_until

OTHER = SpiffeId("cluster.local", "shop", "cache")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class GatedConnect:
    """The mesh's own dial, held at a gate until the test opens it; notes whether it
    was cancelled. It changes when the dial ends, nothing of how the pool runs it."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.gate = asyncio.Event()
        self.started = 0
        self.cancelled = 0

    async def __call__(self, key: PoolKey):
        self.started += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await Mesh._connect(self.mesh, key)


def gated_pool(mesh: Mesh) -> GatedConnect:
    connect = GatedConnect(mesh)
    mesh.pool = HbonePool(connect)
    return connect


async def echo_tunnel(mesh, server, echo, **kwargs):
    return await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address, **kwargs)


def test_a_caller_leaving_a_shared_dial_leaves_alone(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            connect = gated_pool(mesh)
            callers = [asyncio.ensure_future(echo_tunnel(mesh, server, echo)) for _ in range(5)]
            await wait_until(lambda: connect.started == 1, 5)
            await asyncio.sleep(0.05)
            callers[0].cancel()                          # the first caller leaves
            await asyncio.sleep(0.05)
            assert connect.cancelled == 0, "the dial was cancelled while four callers waited for it"
            connect.gate.set()
            pairs = await asyncio.gather(*callers[1:])
            with pytest.raises(asyncio.CancelledError):
                await callers[0]
            for i, (r, w) in enumerate(pairs):
                payload = b"caller %d" % i
                assert await exchange(r, w, payload) == (len(payload), hashlib.sha256(payload).hexdigest())
            pool = mesh.pool
            assert (pool.dials, pool.dial_failures, pool.dials_abandoned) == (1, 0, 0)
            assert len(server.connections) == 1
    run(scenario())


@contextlib.asynccontextmanager
async def stalling_server(ca, stage: str):
    """A server whose dial never completes: at the TCP connect ("tcp"), in the TLS
    handshake ("tls": a plain TCP server that never answers the ClientHello), or after
    it ("settings": TLS completes, no HTTP/2 SETTINGS ever come). Yields (address,
    accepted count)."""
    if stage == "tcp":
        with listener_that_never_accepts() as address:
            yield address, lambda: 0
        return
    accepted = []

    async def hold(reader, writer):
        accepted.append(writer)
        try:
            await reader.read()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
    ssl_ctx = CertificateStore(ca).server_context(SERVER) if stage == "settings" else None
    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=ssl_ctx)
    try:
        yield server.sockets[0].getsockname()[:2], lambda: len(accepted)
    finally:
        server.close()


@pytest.mark.parametrize("stage", ["tcp", "tls", "settings"])
def test_a_dial_every_caller_left_is_cancelled_and_closes_what_it_opened(run, ca, stage):
    async def scenario():
        async with stalling_server(ca, stage) as (address, accepted):
            await asyncio.sleep(0.05)
            before = open_fds()
            async with Mesh(CLIENT, CertificateStore(ca)) as mesh:
                callers = [asyncio.ensure_future(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address))
                           for _ in range(3)]
                await wait_until(lambda: open_fds() > before and (stage == "tcp" or accepted()), 5)
                assert open_fds() > before, "the dial holds no socket"
                await asyncio.sleep(0.1)                 # well into the stage
                for caller in callers:
                    caller.cancel()
                    await asyncio.sleep(0.01)
                await asyncio.gather(*callers, return_exceptions=True)
                await wait_until(lambda: open_fds() <= before, 5)
                assert open_fds() <= before, f"the abandoned dial left {open_fds() - before} descriptors open"
                pool = mesh.pool
                assert (pool.dials, pool.dials_abandoned, pool.dial_failures) == (1, 1, 0)
                assert pool.connections == []
    run(scenario())


def test_a_dial_failure_reaches_every_caller_as_itself(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            results = await asyncio.gather(
                *(mesh.open_tunnel("127.0.0.1", port_of(echo), OTHER, via=server.address) for _ in range(5)),
                return_exceptions=True)
            assert all(isinstance(r, IdentityError) and r.reason == "unexpected_identity" for r in results), results
            assert (mesh.pool.dials, mesh.pool.dial_failures) == (1, 1)
            with pytest.raises(IdentityError):           # a failure is not remembered: the next caller dials
                await mesh.open_tunnel("127.0.0.1", port_of(echo), OTHER, via=server.address)
            assert (mesh.pool.dials, mesh.pool.dial_failures) == (2, 2)
    run(scenario())


def test_a_request_that_can_never_be_sent_fails_before_any_dial(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            with pytest.raises(UsageError, match="X-Id"):
                await asyncio.wait_for(echo_tunnel(mesh, server, echo, headers=[("X-Id", "1")]), 5)
            with pytest.raises(UsageError, match="connection-specific"):
                await asyncio.wait_for(echo_tunnel(mesh, server, echo, headers=[("connection", "close")]), 5)
            key = PoolKey(CLIENT, (SERVER,), server.address)
            for authority in ("10.0.0.1", "10.0.0.1:0", "", "fd00::1:80", "h\u00f6st:80"):
                with pytest.raises(UsageError, match="authority"):
                    await asyncio.wait_for(mesh.pool.open_stream(key, authority, asyncio.Protocol), 5)
            assert mesh.pool.dials == 0 and mesh.pool.connections == [] and not server.connections
            # a one-shot iterable of fields is checked and then sent whole
            r, w = await echo_tunnel(mesh, server, echo, headers=iter([("x-id", "1")]))
            assert await exchange(r, w, b"sent") == (4, hashlib.sha256(b"sent").hexdigest())
            assert mesh.pool.dials == 1
    run(scenario())


def test_a_server_allowing_no_streams_is_one_dial_and_a_clear_error(run, ca):
    async def scenario():
        async with relay_setup(ca, server_options={"max_concurrent_streams": 0},
                               mesh_options={"refusal_hold": 0.3}) as (server, echo, mesh):
            results = await asyncio.wait_for(asyncio.gather(
                *(echo_tunnel(mesh, server, echo) for _ in range(5)), return_exceptions=True), 5)
            for r in results:
                assert isinstance(r, TunnelError) and r.status == 503 and "refuses new streams" in str(r), r
            for _ in range(3):                           # within the hold: no new dial
                with pytest.raises(TunnelError, match="refuses new streams"):
                    await asyncio.wait_for(echo_tunnel(mesh, server, echo), 5)
            assert mesh.pool.dials == 1 and len(server.connections) <= 1
            await asyncio.sleep(0.35)
            with pytest.raises(TunnelError, match="refuses new streams"):
                await asyncio.wait_for(echo_tunnel(mesh, server, echo), 5)
            assert mesh.pool.dials == 2                  # asked again once the hold was over
            # connections of a peer that allows no stream are not kept
            await wait_until(lambda: not mesh.pool.connections, 3)
            assert mesh.pool.connections == []
    run(scenario())


@contextlib.asynccontextmanager
async def scripted_server(ctx, *, misbehaviour: str, bad_connections: int):
    """An HBONE server (python-hyper h2) whose first `bad_connections` connections
    misbehave, the later ones echo. Yields (address, connections accepted).

    - "goaway-on-request": GOAWAY with last stream id 0 in answer to the first CONNECT,
      so the client's stream is refused unprocessed;
    - "goaway-with-settings": GOAWAY right behind its SETTINGS;
    - "close-after-settings": closes the connection once its SETTINGS are out;
    - "refuse-streams": RST_STREAM(REFUSED_STREAM) to every CONNECT, no GOAWAY.
    """
    accepted = [0]

    async def on_connection(reader, writer):
        accepted[0] += 1
        bad = accepted[0] <= bad_connections
        ep = H2Endpoint(reader, writer, client=False)
        if bad and misbehaviour == "goaway-with-settings":
            ep.conn.close_connection(last_stream_id=0)
            ep.flush()
            with contextlib.suppress(ConnectionError, OSError):
                await reader.read()                      # what the client sends no longer matters
            writer.close()
            return
        if bad and misbehaviour == "close-after-settings":
            await asyncio.sleep(0.05)                    # the client has our SETTINGS by now
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(ep.run())
        while (e := await ep.events.get()) is not None:
            if isinstance(e, h2.events.RequestReceived):
                if bad and misbehaviour == "goaway-on-request":
                    ep.conn.close_connection(last_stream_id=0)
                elif bad:
                    ep.conn.reset_stream(e.stream_id, 7)     # REFUSED_STREAM
                else:
                    ep.conn.send_headers(e.stream_id, [(b":status", b"200")])
                ep.flush()
            elif isinstance(e, h2.events.DataReceived) and not bad:
                ep.send(e.stream_id, e.data)
            elif isinstance(e, h2.events.StreamEnded) and not bad:
                ep.send(e.stream_id, b"", end=True)
        await task
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[:2], accepted
    finally:
        server.close()


@pytest.mark.parametrize("misbehaviour", ["goaway-on-request", "goaway-with-settings"])
def test_a_tunnel_refused_by_goaway_is_tried_on_a_new_connection(run, ca, misbehaviour):
    async def scenario():
        async with scripted_server(CertificateStore(ca).server_context(SERVER), misbehaviour=misbehaviour,
                                   bad_connections=1) as (address, accepted), \
                Mesh(CLIENT, CertificateStore(ca)) as mesh:
            r, w = await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert await exchange(r, w, b"second time") == (11, hashlib.sha256(b"second time").hexdigest())
            assert (mesh.pool.dials, mesh.pool.retries, accepted[0]) == (2, 1, 2)
    run(scenario())


@pytest.mark.parametrize("misbehaviour", ["goaway-on-request", "goaway-with-settings"])
def test_goaway_retries_are_bounded(run, ca, misbehaviour):
    async def scenario():
        async with scripted_server(CertificateStore(ca).server_context(SERVER), misbehaviour=misbehaviour,
                                   bad_connections=1000) as (address, accepted), \
                Mesh(CLIENT, CertificateStore(ca)) as mesh:
            with pytest.raises(TunnelError, match="in 3 attempts") as err:
                await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert err.value.status == 503
            assert (mesh.pool.dials, mesh.pool.retries, accepted[0]) == (3, 2, 3)
            await wait_until(lambda: not mesh.pool.connections, 3)
            assert mesh.pool.connections == []           # each one retired and closed
    run(scenario())


def test_a_server_closing_every_connection_after_its_settings_is_not_dialed_without_end(run, ca):
    async def scenario():
        async with scripted_server(CertificateStore(ca).server_context(SERVER), misbehaviour="close-after-settings",
                                   bad_connections=1000) as (address, accepted), \
                Mesh(CLIENT, CertificateStore(ca)) as mesh:
            with pytest.raises((TunnelError, ConnectionError)):
                await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert mesh.pool.dials <= 3 and accepted[0] <= 3
    run(scenario())


def test_a_server_refusing_streams_is_not_asked_again_during_the_hold(run, ca):
    async def scenario():
        async with scripted_server(CertificateStore(ca).server_context(SERVER), misbehaviour="refuse-streams",
                                   bad_connections=1) as (address, accepted), \
                Mesh(CLIENT, CertificateStore(ca), refusal_hold=0.3) as mesh:
            with pytest.raises(StreamRefusedError) as err:      # refused, not retried
                await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert err.value.status == 503 and not err.value.going_away
            for _ in range(3):
                with pytest.raises(TunnelError, match="refuses new streams"):
                    await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert (mesh.pool.dials, mesh.pool.retries, mesh.pool.refusals, accepted[0]) == (1, 0, 3, 1)
            await asyncio.sleep(0.35)
            with pytest.raises(StreamRefusedError):             # asked again on the same connection
                await asyncio.wait_for(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address), 5)
            assert mesh.pool.dials == 1
    run(scenario())


@contextlib.asynccontextmanager
async def late_settings_server(ctx, *, limit: int):
    """An HBONE server (python-hyper h2) that sends nothing, its SETTINGS included,
    until the client's first requests are in (up to 0.3 s); then its SETTINGS (at most
    `limit` streams), 200 to the first `limit` requests and REFUSED_STREAM to the
    others. Tunnels it accepts echo. Yields (address, connections accepted)."""
    accepted = [0]

    async def on_connection(reader, writer):
        accepted[0] += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        requests, pending = [], []

        async def first_requests():
            while len(requests) <= limit:
                data = await reader.read(1 << 16)
                if not data:
                    return
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.RequestReceived):
                        requests.append(e.stream_id)
                    else:
                        pending.append(e)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(first_requests(), 0.3)
        for i, sid in enumerate(requests):
            if i < limit:
                conn.send_headers(sid, [(b":status", b"200")])
            else:
                conn.reset_stream(sid, 7)               # REFUSED_STREAM: over the limit it just sent
        writer.write(conn.data_to_send())
        try:
            while True:
                for e in pending:
                    if isinstance(e, h2.events.DataReceived):
                        conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        conn.send_data(e.stream_id, e.data)
                    elif isinstance(e, h2.events.StreamEnded):
                        conn.end_stream(e.stream_id)
                writer.write(conn.data_to_send())
                data = await reader.read(1 << 16)
                if not data:
                    break
                pending = conn.receive_data(data)
        except (ConnectionError, OSError, h2.exceptions.H2Error):
            pass
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[:2], accepted
    finally:
        server.close()


def test_streams_refused_over_a_limit_the_peer_had_not_sent_yet_are_tried_again(run, ca):
    """A connect that hands the pool its connection before the server's SETTINGS: the
    pool assumes 100 streams, the server then allows 2 and refuses the third with
    REFUSED_STREAM. The third goes on a new connection; the peer is not held off."""
    async def scenario():
        store = CertificateStore(ca)

        async def connect_without_waiting_for_settings(key):
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, key.destination)
            _, conn = await start_tls(asyncio.get_running_loop(), sock, store.client_context(CLIENT),
                                      lambda: HboneConnection(client=True), server_side=False, timeout=5)
            return conn

        async with late_settings_server(store.server_context(SERVER), limit=2) as (address, accepted):
            pool = HbonePool(connect_without_waiting_for_settings)
            key = PoolKey(CLIENT, (SERVER,), address)
            readers = [asyncio.StreamReader() for _ in range(3)]
            opened = await asyncio.wait_for(asyncio.gather(*(
                pool.open_stream(key, "10.0.0.1:80", lambda r=r: asyncio.StreamReaderProtocol(r)) for r in readers)), 5)
            for (transport, _), reader, i in zip(opened, readers, range(3)):
                transport.write(b"tunnel %d" % i)
                transport.write_eof()
                assert await asyncio.wait_for(reader.read(), 5) == b"tunnel %d" % i
            assert (pool.dials, pool.retries, pool.refusals, accepted[0]) == (2, 1, 0, 2)
            await pool.close()
    run(scenario())


def test_closing_the_pool_ends_its_dials_and_their_callers(run, ca):
    async def scenario():
        with listener_that_never_accepts() as address:
            await asyncio.sleep(0.05)
            before = open_fds()
            mesh = Mesh(CLIENT, CertificateStore(ca))
            callers = [asyncio.ensure_future(mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address))
                       for _ in range(3)]
            await wait_until(lambda: open_fds() > before, 5)
            await mesh.close()
            results = await asyncio.gather(*callers, return_exceptions=True)
            assert all(isinstance(r, TunnelError) and "closed" in str(r) for r in results), results
            with pytest.raises(TunnelError, match="closed"):
                await mesh.open_tunnel("10.0.0.1", 80, SERVER, via=address)
            await wait_until(lambda: open_fds() <= before, 5)
            assert open_fds() <= before
    run(scenario())


def test_callers_beyond_the_connection_cap_wait_for_room(run, ca):
    async def scenario():
        async with relay_setup(ca, mesh_options={"max_streams": 2, "max_connections_per_key": 2}) as (
                server, echo, mesh):
            first = [await echo_tunnel(mesh, server, echo) for _ in range(4)]
            assert mesh.pool.dials == 2
            fifth = asyncio.ensure_future(echo_tunnel(mesh, server, echo))
            with pytest.raises(asyncio.TimeoutError):    # the caller's own timeout bounds the wait
                await asyncio.wait_for(echo_tunnel(mesh, server, echo), 0.2)
            assert not fifth.done() and mesh.pool.dials == 2
            r, w = first[0]
            assert await exchange(r, w, b"done") == (4, hashlib.sha256(b"done").hexdigest())
            r5, w5 = await asyncio.wait_for(fifth, 5)    # the ended tunnel made room
            assert await exchange(r5, w5, b"fifth") == (5, hashlib.sha256(b"fifth").hexdigest())
            assert mesh.pool.dials == 2
            for r, w in first[1:]:
                w.close()
    run(scenario())


def test_outbound_clients_sharing_a_dial_survive_one_that_resets(run, ca):
    """Five clients of an RelayListener wait on one dial; the first resets its
    connection. The other four get their tunnels."""
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            connect = gated_pool(mesh)
            listener = await RelayListener(lambda factory, client: mesh.open_tunnel_protocol(
                "127.0.0.1", port_of(echo), SERVER, factory, via=server.address)).start()
            clients = [await asyncio.open_connection(*listener.address) for _ in range(5)]
            await wait_until(lambda: listener.stats["accepted"] == 5 and connect.started == 1, 5)
            _, w0 = clients[0]
            w0.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            w0.transport.abort()                          # RST
            await wait_until(lambda: len(listener.splices) == 4, 5)
            assert connect.cancelled == 0
            connect.gate.set()
            results = await asyncio.wait_for(asyncio.gather(
                *(exchange(r, w, b"client %d" % i) for i, (r, w) in enumerate(clients[1:], 1))), 10)
            assert results == [(8, hashlib.sha256(b"client %d" % i).hexdigest()) for i in range(1, 5)]
            assert listener.stats["dial_failed"] == 0
            assert (mesh.pool.dials, mesh.pool.dial_failures, mesh.pool.dials_abandoned) == (1, 0, 0)
            for _, w in clients:
                w.close()
            await listener.close()
    run(scenario())
