"""Requests and responses over real mTLS on loopback, on asyncio and uvloop, against
python-hyper's h2 on the other side: meshcore.aio.request as the client of an h2
server and as the server of an h2 client, bodies with backpressure, trailers,
informational responses, HEAD, resets, and a request beside a CONNECT tunnel."""
import asyncio
import contextlib
import hashlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore
from meshcore.aio import HboneConnection, HboneServer, dial, relay_to_authority
from meshcore.aio.request import ClientExchange, request, request_dispatcher, send_request
from meshcore.aio.tls import start_tls
from meshcore.errors import ErrorCode, StreamResetError, UsageError
from meshcore.identity import CertificateStore
from meshcore.identity.tls import verify_client

from h2http import STREAM_WINDOW, Received, h2_http_client, h2_http_server, open_request
from helpers import CLIENT, SERVER, port_of, tcp_echo_server, wait_until


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def our_client_to_h2(ca, handler, **server_options):
    """An h2 HTTP/2 server running `handler` per request, and our connection to it."""
    server = await h2_http_server(CertificateStore(ca).server_context(SERVER), handler, **server_options)
    conn = await dial("127.0.0.1", port_of(server), CertificateStore(ca).client_context(CLIENT), [SERVER])
    try:
        yield conn, server
    finally:
        conn.close()
        server.close()


@contextlib.asynccontextmanager
async def h2_client_to_us(ca, handler, tunnels=None, **client_options):
    """Our server (request_dispatcher(handler) on each mTLS connection) and an h2 client."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    ctx = CertificateStore(ca).server_context(SERVER)
    connections = []

    async def accept():
        while True:
            sock, peer = await loop.sock_accept(listener)
            conn = HboneConnection(client=False, on_request=request_dispatcher(handler, tunnels),
                                   verify=lambda obj, peer=peer: verify_client(obj, "cluster.local", peer))
            await start_tls(loop, sock, ctx, lambda: conn, server_side=True, timeout=5)
            connections.append(conn)

    acceptor = loop.create_task(accept())
    ep = await h2_http_client(*listener.getsockname(), CertificateStore(ca).client_context(CLIENT),
                              **client_options)
    try:
        yield ep, connections
    finally:
        acceptor.cancel()
        ep.writer.close()
        for conn in connections:
            conn.close()
        listener.close()


# ------------------------------------------------------- our client, h2 server

async def echo_handler(ep, sid, request, queue):
    """Answers 100, then 103, then 200 with the request's body and trailers echoed
    (its trailers come back prefixed with x-echo-)."""
    got = await Received().collect(queue)
    ep.headers(sid, [(":status", "100")])
    ep.headers(sid, [(":status", "103"), ("link", "</a.css>; rel=preload")])
    fields = dict(request.headers)
    ep.headers(sid, [(":status", "200"), ("x-method", fields[b":method"]), ("x-path", fields[b":path"]),
                     ("x-sha256", sha(got.body))], end=fields[b":method"] == b"HEAD")
    if fields[b":method"] != b"HEAD":
        ep.send(sid, bytes(got.body), trailers=[(b"x-echo-" + n, v) for n, v in got.trailers or []]
                or [("x-none", "1")])


def test_requests_from_our_client_to_h2(run, ca):
    async def scenario():
        async with our_client_to_h2(ca, echo_handler) as (conn, _):
            rng = random.Random(3)
            body = rng.randbytes(6 * 1024 * 1024)                # more than a stream window
            exchange = send_request(conn, "POST", "/upload?x=1", authority="shop.example",
                                    headers=[("content-length", str(len(body))), ("te", "trailers")])
            seen = []
            exchange.on_informational = seen.append
            for i in range(0, len(body), 100_000):
                await exchange.write(body[i:i + 100_000])
            await exchange.end(trailers=[("x-checksum", sha(body))])
            response = await exchange.response()
            assert response.status == 200
            assert response.header("x-sha256") == sha(body).encode()
            assert response.header(b"x-path") == b"/upload?x=1"
            assert [r.status for r in exchange.informational] == [100, 103] == [r.status for r in seen]
            assert exchange.informational[1].header("link") == b"</a.css>; rel=preload"
            got = await exchange.read_all()
            assert sha(got) == sha(body)
            assert exchange.trailers == [(b"x-echo-x-checksum", sha(body).encode())]
            # the one-shot helper, HEAD, and many at once on the same connection
            response, content, trailers = await request(conn, "HEAD", "/", authority="shop.example")
            assert (response.status, content, trailers) == (200, b"", [])
            results = await asyncio.gather(*(request(conn, "PUT", f"/{i}", authority="shop.example",
                                                     body=rng.randbytes(i * 1000)) for i in range(50)))
            assert all(r[0].status == 200 and len(r[1]) == i * 1000 for i, r in enumerate(results))
            assert all(r[2] == [(b"x-none", b"1")] for r in results)
            await wait_until(lambda: not conn.streams, 2)
            assert not conn.streams and conn.h2.open_streams == 0
    run(scenario())


def test_our_client_reads_with_backpressure(run, ca):
    """The h2 server wants to send 20 MiB; our client takes the body slowly. What the
    server managed to send never runs ahead of what was read by more than the stream
    window: the window is given back as the body is consumed, not as it arrives."""
    size = 20 * 1024 * 1024
    sent = {}

    async def big(ep, sid, request, queue):
        await Received().collect(queue)
        ep.headers(sid, [(":status", "200"), ("content-length", str(size))])
        ep.send(sid, b"z" * size, end=True)
        sent[sid] = ep

    async def scenario():
        async with our_client_to_h2(ca, big) as (conn, _):
            exchange = send_request(conn, "GET", "/big", authority="a", end_stream=True)
            assert (await exchange.response()).status == 200
            consumed = 0
            while consumed < size:
                chunk = await exchange.read()
                assert chunk
                consumed += len(chunk)
                if consumed < 12 * 1024 * 1024:
                    await asyncio.sleep(0.02 if consumed % (1 << 20) < len(chunk) else 0)
                    ep = sent[exchange.stream_id]
                    assert ep.sent[exchange.stream_id] <= consumed + STREAM_WINDOW, (ep.sent, consumed)
            assert await exchange.read() == b"" and exchange.trailers == []
    run(scenario())


def test_our_client_write_waits_for_the_window(run, ca):
    """An h2 server that gives no window back: write() stops returning once the stream
    window is spent, and goes on when the server reads."""
    endpoints = []

    async def hold(ep, sid, request, queue):
        endpoints.append((ep, sid))
        got = await Received().collect(queue)
        ep.headers(sid, [(":status", "200"), ("x-len", str(len(got.body)))], end=True)

    async def scenario():
        async with our_client_to_h2(ca, hold, auto_ack=False) as (conn, _):
            exchange = send_request(conn, "POST", "/", authority="a")
            written = 0
            chunk = b"w" * (256 * 1024)
            while True:
                try:
                    await asyncio.wait_for(exchange.write(chunk), 0.3)
                except asyncio.TimeoutError:
                    break
                written += len(chunk)
            # one chunk beyond the window waits, at most partly sent
            assert STREAM_WINDOW - len(chunk) <= written <= STREAM_WINDOW
            ep, sid = endpoints[0]
            ep.ack(sid)
            await exchange.write(b"tail")
            ep.ack(sid)
            await exchange.end()
            ep.ack(sid)
            response = await exchange.response()
            assert int(response.header("x-len")) >= written + 4
    run(scenario())


def test_reset_and_malformed_responses_reach_the_exchange(run, ca):
    async def misbehave(ep, sid, request, queue):
        path = dict(request.headers)[b":path"]
        if path == b"/complete-then-reset":         # answered before the upload ends
            ep.headers(sid, [(":status", "200")])
            ep.send(sid, b"all of it", end=True)
            ep.reset(sid, ErrorCode.NO_ERROR)
            return
        await Received().collect(queue)
        if path == b"/reset":
            ep.reset(sid, ErrorCode.INTERNAL_ERROR)
        elif path == b"/chatty":
            for _ in range(20):
                ep.headers(sid, [(":status", "103")])
        elif path == b"/short":
            ep.headers(sid, [(":status", "200"), ("content-length", "10")])
            ep.send(sid, b"12345", end=True)
        else:
            ep.headers(sid, [(":status", "200")], end=True)

    async def scenario():
        async with our_client_to_h2(ca, misbehave) as (conn, _):
            exchange = send_request(conn, "GET", "/reset", authority="a", end_stream=True)
            with pytest.raises(StreamResetError) as info:
                await exchange.response()
            assert info.value.remote and info.value.error_code == ErrorCode.INTERNAL_ERROR
            exchange = send_request(conn, "GET", "/chatty", authority="a", end_stream=True)
            with pytest.raises(StreamResetError) as info:
                await exchange.response()
            assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM and len(exchange.informational) == 16
            exchange = send_request(conn, "GET", "/short", authority="a", end_stream=True)
            assert (await exchange.response()).status == 200
            with pytest.raises(StreamResetError) as info:
                await exchange.read_all()
            assert not info.value.remote and "content-length missing" in str(info.value)
            # a NO_ERROR reset after the whole response keeps the response, though it
            # arrives before the body is read (RFC 9113 8.1); it stops the upload
            exchange = send_request(conn, "POST", "/complete-then-reset", authority="a")
            await exchange.write(b"upload")
            assert (await exchange.response()).status == 200
            await asyncio.sleep(0.05)
            assert await exchange.read_all() == b"all of it" and exchange.trailers == []
            with pytest.raises(StreamResetError) as info:
                await exchange.write(b"more")
            assert info.value.remote and info.value.error_code == ErrorCode.NO_ERROR
            # the connection carries on
            response, content, _ = await request(conn, "GET", "/fine", authority="a")
            assert (response.status, content) == (200, b"")
            await wait_until(lambda: not conn.streams, 2)
            assert not conn.streams
    run(scenario())


def test_our_client_refuses_to_send_malformed(run, ca):
    async def scenario():
        async with our_client_to_h2(ca, echo_handler) as (conn, _):
            with pytest.raises(UsageError, match="does not start with '/'"):
                send_request(conn, "GET", "relative", authority="a")
            exchange = send_request(conn, "POST", "/", authority="a", headers=[("content-length", "3")])
            with pytest.raises(UsageError, match="4 bytes exceed"):
                await exchange.write(b"abcd")
            with pytest.raises(UsageError, match="unsent"):
                await exchange.end()
            await exchange.write(b"abc")
            await exchange.end()
            assert (await exchange.response()).status == 200
            assert await exchange.read_all() == b"abc"
    run(scenario())


# ------------------------------------------------------- h2 client, our server

CONSUMED = {}        # /slow: body bytes the handler has taken, per stream


async def our_handler(exchange):
    if exchange.path == "/echo":
        exchange.inform(103, [("link", "</x.js>; rel=preload")])
        body = await exchange.read_all()
        exchange.respond(200, [("x-sha256", sha(body)), ("x-authority", exchange.authority),
                               ("x-identity", str(exchange.peer_identity)),
                               ("x-peer", exchange.peer_address[0]), ("x-local-port", str(exchange.local_address[1]))])
        await exchange.write(body)
        await exchange.end(trailers=[(b"x-echo-" + n, v) for n, v in exchange.trailers] or [("x-none", "1")])
    elif exchange.path == "/head":
        exchange.respond(200, [("content-length", "1234")], end=True)
    elif exchange.path == "/fail":
        raise RuntimeError("handler bug")
    elif exchange.path == "/silent":
        await exchange.read_all()
    elif exchange.path == "/early":
        exchange.respond(413, end=True)         # answer without reading the upload
    elif exchange.path == "/slow":
        exchange.respond(200)
        total = 0
        async for chunk in exchange:
            total += len(chunk)
            CONSUMED[exchange.stream_id] = total
            await asyncio.sleep(0.002)
        await exchange.write(str(total).encode())
        await exchange.end()
    elif exchange.path == "/duplex":          # a bidirectional gRPC stream: answers as it reads
        exchange.respond(200, [("content-type", "application/grpc")])
        async for chunk in exchange:
            await exchange.write(chunk.upper())
        await exchange.end(trailers=[("grpc-status", "0")])
    elif exchange.path == "/wait":
        try:
            await exchange.read_all()
        except asyncio.CancelledError:        # reset before the answer: the handler is cancelled
            exchange.connection.test_cancelled.append(exchange.stream_id)
            raise


def test_requests_from_h2_to_our_server(run, ca):
    async def scenario():
        async with h2_client_to_us(ca, our_handler) as (ep, connections):
            rng = random.Random(9)
            body = rng.randbytes(5 * 1024 * 1024)
            sid = open_request(ep, "POST", "/echo", headers=[("te", "trailers")])
            ep.send(sid, body, trailers=[("x-checksum", sha(body))])
            got = await Received().collect(ep.queue(sid))
            assert got.informational == [(103, [(b"link", b"</x.js>; rel=preload")])]
            status, fields = got.response
            assert status == 200 and dict(fields)[b"x-sha256"] == sha(body).encode()
            assert dict(fields)[b"x-authority"] == b"example.com"
            assert dict(fields)[b"x-identity"] == str(CLIENT).encode()
            assert dict(fields)[b"x-peer"] == b"127.0.0.1"
            assert int(dict(fields)[b"x-local-port"]) == ep.writer.get_extra_info("peername")[1]
            assert sha(got.body) == sha(body)
            assert got.trailers == [(b"x-echo-x-checksum", sha(body).encode())]
            # HEAD: a length without content
            sid = open_request(ep, "HEAD", "/head", end=True)
            got = await Received().collect(ep.queue(sid))
            assert got.response == (200, [(b"content-length", b"1234")]) and got.body == b"" and got.ended
            # a handler that raises answers 500; one that does not answer, 500 too
            for path in ("/fail", "/silent"):
                sid = open_request(ep, "GET", path, end=True)
                got = await Received().collect(ep.queue(sid))
                assert got.response[0] == 500 and got.ended
            # an answer before the upload ends stops the upload with NO_ERROR (RFC 9113 8.1)
            sid = open_request(ep, "POST", "/early")
            ep.send(sid, b"x" * 1000)
            got = await Received().collect(ep.queue(sid), until=lambda r: r.reset is not None)
            assert got.response == (413, []) and got.ended and got.reset == ErrorCode.NO_ERROR
            conn = connections[0]
            await wait_until(lambda: not conn.streams and not conn.request_tasks, 2)
            assert not conn.streams and not conn.request_tasks and conn.h2.open_streams == 0
    run(scenario())


def test_our_server_reads_with_backpressure(run, ca):
    """Our handler reads 12 MiB slowly; the h2 client can never be more than a stream
    window ahead of what the handler has taken."""
    size = 12 * 1024 * 1024
    our_window = 4 * 1024 * 1024          # the server's initial stream window

    async def scenario():
        CONSUMED.clear()
        async with h2_client_to_us(ca, our_handler) as (ep, connections):
            sid = open_request(ep, "POST", "/slow")
            ep.send(sid, b"s" * size, end=True)
            gaps = []
            while sid not in CONSUMED or CONSUMED[sid] < size:
                await asyncio.sleep(0.005)
                gaps.append(ep.sent.get(sid, 0) - CONSUMED.get(sid, 0))
            # the client never got further ahead of the handler than one window
            assert max(gaps) <= our_window
            assert max(gaps) > our_window // 2          # and it did use the window
            got = await Received().collect(ep.queue(sid))
            assert got.response[0] == 200 and bytes(got.body) == str(size).encode()
    run(scenario())


def test_our_server_resets_malformed_and_short_requests(run, ca):
    async def scenario():
        async with h2_client_to_us(ca, our_handler) as (ep, connections):
            sid = open_request(ep, "POST", "/wait", headers=[("content-length", "10")])
            await asyncio.sleep(0.05)
            connections[0].test_cancelled = []
            ep.send(sid, b"12345", end=True)
            got = await Received().collect(ep.queue(sid))
            assert got.reset == ErrorCode.PROTOCOL_ERROR
            await wait_until(lambda: connections[0].test_cancelled, 2)
            assert connections[0].test_cancelled == [sid]
            # the connection serves the next request
            sid = open_request(ep, "HEAD", "/head", end=True)
            got = await Received().collect(ep.queue(sid))
            assert got.response[0] == 200
    run(scenario())


def test_request_beside_a_tunnel_on_one_connection(run, ca):
    """A CONNECT tunnel and request streams share one connection: our client opens
    both against our server, which echoes the tunnel and answers the requests."""
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

        def eof_received(self):
            self.transport.write_eof()
            return True

    def tunnels(conn, event):
        conn.accept_stream(event.stream_id, Echo())

    async def scenario():
        async with h2_client_to_us(ca, our_handler, tunnels) as (ep, connections):
            ep.writer.close()
            loop = asyncio.get_running_loop()
            port = ep.writer.get_extra_info("peername")[1]
            conn = await dial("127.0.0.1", port, CertificateStore(ca).client_context(CLIENT), [SERVER])
            try:
                reader = asyncio.StreamReader()
                tunnel, _ = await conn.open_stream("10.0.0.1:80", lambda: asyncio.StreamReaderProtocol(reader))
                exchange = send_request(conn, "POST", "/echo", authority="svc")
                tunnel.write(b"through the tunnel")
                await exchange.write(b"through a request")
                await exchange.end()
                assert await reader.readexactly(18) == b"through the tunnel"
                response = await exchange.response()
                assert response.status == 200 and await exchange.read_all() == b"through a request"
                tunnel.write_eof()
                assert await reader.read() == b""
                assert isinstance(exchange, ClientExchange) and exchange.trailers == [(b"x-none", b"1")]
                await wait_until(lambda: not conn.streams, 2)
                assert not conn.streams
            finally:
                conn.close()
            del loop
    run(scenario())


def test_hbone_server_answers_requests_beside_tunnels(run, ca):
    """HboneServer(request_handler=...): requests go to the handler, CONNECTs to the
    tunnel handler, on one h2 client connection; without a request handler a request
    is refused with 400 as before."""
    async def scenario():
        echo = await tcp_echo_server()
        for request_handler in (our_handler, None):
            async with HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local",
                                   handler=relay_to_authority, request_handler=request_handler) as server:
                await server.start()
                ep = await h2_http_client(*server.address, CertificateStore(ca).client_context(CLIENT))
                tunnel = ep.conn.get_next_available_stream_id()
                ep.queue(tunnel)
                ep.headers(tunnel, [(":method", "CONNECT"), (":authority", f"127.0.0.1:{port_of(echo)}")])
                sid = open_request(ep, "POST", "/echo")
                ep.send(sid, b"a request", end=True)
                ep.send(tunnel, b"tunnel bytes", end=True)
                got = await Received().collect(ep.queue(sid))
                through = await Received().collect(ep.queue(tunnel))
                assert through.response[0] == 200 and bytes(through.body) == b"tunnel bytes"
                if request_handler is None:
                    assert got.response[0] == 400
                else:
                    assert got.response[0] == 200 and bytes(got.body) == b"a request"
                ep.writer.close()
        echo.close()
    run(scenario())


def test_our_client_abandons_and_loses_exchanges(run, ca):
    """Closing an exchange before its body is read resets it (CANCEL) and gives the
    unread window back; a lost connection fails what waits on it."""
    resets = []

    async def big_then_hang(ep, sid, request, queue):
        path = dict(request.headers)[b":path"]
        if path == b"/hang":
            ep.writer.close()                    # the server goes away before answering
            return
        ep.headers(sid, [(":status", "200")])
        if path == b"/small":
            ep.send(sid, b"s" * 100_000, end=True)
            return
        ep.send(sid, b"b" * (6 * 1024 * 1024), end=True)        # more than the window: still sending
        got = await Received().collect(queue, until=lambda r: r.reset is not None)
        resets.append(got.reset)

    async def scenario():
        async with our_client_to_h2(ca, big_then_hang) as (conn, _):
            async with send_request(conn, "GET", "/big", authority="a", end_stream=True) as exchange:
                assert (await exchange.response()).status == 200
                assert await exchange.read()
            await wait_until(lambda: resets, 2)
            assert resets == [ErrorCode.CANCEL]
            await wait_until(lambda: not conn.streams, 2)
            assert not conn.streams and conn.h2.open_streams == 0
            with pytest.raises(UsageError, match="only 0 are unacknowledged"):
                conn.h2.acknowledge_received_data(1, 1)     # every byte's window went back
            # a whole response left unread: nothing to reset, the window comes back all the same
            async with send_request(conn, "GET", "/small", authority="a", end_stream=True) as exchange:
                assert (await exchange.response()).status == 200
                await wait_until(lambda: conn.h2.stream_state(exchange.stream_id) == "closed", 2)
            await wait_until(lambda: not conn.streams, 2)
            with pytest.raises(UsageError, match="only 0 are unacknowledged"):
                conn.h2.acknowledge_received_data(1, 1)
            exchange = send_request(conn, "GET", "/hang", authority="a", end_stream=True)
            with pytest.raises(ConnectionResetError):
                await exchange.response()
            with pytest.raises(ConnectionResetError):
                await exchange.read()
    run(scenario())


def test_full_duplex_stream_like_grpc(run, ca):
    """The server answers each message while the request is still open: a response
    flows before the request ends, and the stream ends with grpc-status trailers."""
    async def scenario():
        async with h2_client_to_us(ca, our_handler) as (ep, connections):
            sid = open_request(ep, "POST", "/duplex", headers=[("content-type", "application/grpc"),
                                                              ("te", "trailers")])
            got = Received()
            for i in range(10):
                message = b"\0\0\0\0\x05msg" + str(i).encode() + b"!"
                ep.send(sid, message)
                await got.collect(ep.queue(sid), until=lambda r, n=len(message) * (i + 1): len(r.body) >= n)
                assert bytes(got.body).endswith(message.upper()) and not got.ended
            ep.send(sid, b"", end=True)
            await got.collect(ep.queue(sid))
            assert got.response == (200, [(b"content-type", b"application/grpc")])
            assert got.trailers == [(b"grpc-status", b"0")] and got.ended and got.reset is None
    run(scenario())


def test_example_runs_as_a_user_would():
    """examples/http_over_hbone.py, run from another directory."""
    example = Path(__file__).resolve().parents[2] / "examples" / "http_over_hbone.py"
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    done = subprocess.run([sys.executable, str(example)], capture_output=True, env=env, cwd="/", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "200 spiffe://cluster.local/ns/shop/sa/web GET /hello:  [(b'x-bytes-read', b'0')]",
        "[100] 200",
        "POST /orders: TWO PARTS",
        "[(b'x-bytes-read', b'9')]",
    ]


def test_on_reset_tells_a_responded_exchange_of_the_peers_reset_at_once(run, ca):
    """A handler that answered and waits on something else (a proxy on its upstream)
    learns of the client's reset from on_reset, once, without reading or writing; an
    exchange that completes never hears from it."""
    async def scenario():
        resets: dict[str, list] = {"/wait": [], "/done": []}
        waiting = asyncio.Event()

        async def handler(exchange):
            exchange.on_reset = resets[exchange.path].append
            exchange.respond(200)
            if exchange.path == "/done":
                await exchange.read_all()
                await exchange.end()
                return
            waiting.set()
            await asyncio.sleep(5)
        async with h2_client_to_us(ca, handler) as (ep, connections):
            done = open_request(ep, "GET", "/done", end=True)
            assert (await Received().collect(ep.queue(done))).ended
            sid = open_request(ep, "GET", "/wait", end=True)
            await asyncio.wait_for(waiting.wait(), 5)
            ep.reset(sid, ErrorCode.CANCEL)
            await wait_until(lambda: resets["/wait"], timeout=5)
            await asyncio.sleep(0.05)
            assert len(resets["/wait"]) == 1 and resets["/done"] == []
            error = resets["/wait"][0]
            assert isinstance(error, StreamResetError) and error.error_code == ErrorCode.CANCEL and error.remote
    run(scenario())
