"""Fuzz targets: each takes the fuzzer's bytes and fails (raises) only on a bug in
meshcore. Hostile input must come back as meshcore's own errors, never as anything
else, and what meshcore writes in reply must stay well-formed and bounded.

The same targets run three ways: over their seeds in the default test run, for a few
seconds each under atheris in the test run, and for as long as one likes with
`python tests/fuzz/run.py` (see that file)."""
from __future__ import annotations

import json
from pathlib import Path

import hpack
from hyperframe.frame import Frame

from meshcore import H2Connection, events as ev
from meshcore._core.frames import FrameDecoder
from meshcore._core.hpack import HeaderDecoder, HeaderEncoder
from meshcore.errors import (CompressionError, ConfigError, ErrorCode, HeaderListTooLarge, ProtocolError,
                             UsageError)
from meshcore.sources.config import load as load_node_config
from meshcore.node.socks5 import Socks5Error, parse_greeting, parse_request
from meshcore.policy.istio import load_authorization_policies

ROOT = Path(__file__).resolve().parents[2]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_REPLY = 4 << 20          # what one input may make a connection write back


def _well_formed(out: bytes) -> None:
    """Every frame meshcore wrote parses with hyperframe (an independent codec)."""
    pos = 0
    view = memoryview(out)
    while pos < len(out):
        assert len(out) - pos >= 9, f"truncated frame header at {pos}"
        frame, length = Frame.parse_frame_header(view[pos:pos + 9])
        assert pos + 9 + length <= len(out), f"truncated {type(frame).__name__} at {pos}"
        frame.parse_body(view[pos + 9:pos + 9 + length])
        pos += 9 + length


def _split_size(data: bytes) -> int:
    """The first byte chooses how the rest is cut into reads (1..256 bytes each)."""
    return data[0] + 1 if data else 1


def _feed(conn: H2Connection, wire: bytes, split: int, react) -> None:
    written = 0
    for i in range(0, len(wire), split):
        for event in conn.receive_data(wire[i:i + split]):
            if isinstance(event, ev.ConnectionTerminated) and not event.remote:
                assert event.error_code != ErrorCode.INTERNAL_ERROR, event.reason
            try:
                react(conn, event)
            except UsageError:
                pass            # the stream ended earlier in the same read: a caller's answer
        out = conn.data_to_send()
        _well_formed(out)
        written += len(out)
        assert written <= MAX_REPLY, f"{written} bytes written in reply to {len(wire)}"
    assert conn.pending_bytes <= MAX_REPLY


def _echo(conn: H2Connection, event) -> None:
    """What a tunnel endpoint does: give back window credit, echo within the window,
    end the stream when the peer did."""
    if isinstance(event, ev.DataReceived):
        conn.acknowledge_received_data(event.stream_id, len(event.data))
        room = conn.available_window(event.stream_id)
        if room > 0:
            conn.send_data(event.stream_id, bytes(event.data[:room]))
    elif isinstance(event, ev.StreamEnded):
        conn.end_stream(event.stream_id)


def server_connection(data: bytes) -> None:
    """An inbound HBONE connection fed a client's bytes (after the preface); it accepts
    tunnels on stream ids 1 mod 4, refuses the others with 503, and echoes; requests
    other than CONNECT get a 103, then a response with a declared length and trailers."""
    def react(conn, event):
        if isinstance(event, ev.TunnelRequested):
            if event.stream_id % 4 == 1:
                conn.accept_tunnel(event.stream_id)
            else:
                conn.refuse_tunnel(event.stream_id, 503)
        elif isinstance(event, ev.RequestReceived):
            conn.send_informational(event.stream_id, 103)
            if event.method == "HEAD":
                conn.send_response(event.stream_id, 200, [("content-length", "5")], end_stream=True)
            else:
                conn.send_response(event.stream_id, 200, [("content-length", "5")])
                conn.send_data(event.stream_id, b"hello")
                conn.send_trailers(event.stream_id, [("grpc-status", "0")])
        elif isinstance(event, ev.DataReceived) and conn.stream_state(event.stream_id) in (
                "half-closed (local)", "closed"):
            conn.acknowledge_received_data(event.stream_id, len(event.data))   # answered already
        else:
            _echo(conn, event)
    conn = H2Connection(client=False)
    conn.data_to_send()
    _feed(conn, PREFACE + data[1:], _split_size(data), react)


def client_connection(data: bytes) -> None:
    """An outbound HBONE connection with three tunnels open and two requests (a POST
    with its content sent, a HEAD), fed a server's bytes."""
    def react(conn, event):
        if isinstance(event, ev.TunnelAccepted):
            room = conn.available_window(event.stream_id)
            conn.send_data(event.stream_id, b"x" * min(room, 1000))
        elif isinstance(event, ev.DataReceived) and event.stream_id in requests:
            conn.acknowledge_received_data(event.stream_id, len(event.data))
        elif not (isinstance(event, ev.StreamEnded) and event.stream_id in requests):
            _echo(conn, event)
    conn = H2Connection(client=True)
    for port in (80, 443, 8080):
        conn.open_tunnel(f"10.0.0.1:{port}")
    requests = _client_requests(conn)
    conn.data_to_send()
    _feed(conn, data[1:], _split_size(data), react)


def _client_requests(conn: H2Connection) -> tuple[int, int]:
    post = conn.send_request("POST", "https", "shop.example", "/orders", [("content-length", "4")])
    conn.send_data(post, b"body", end_stream=True)
    return post, conn.send_request("HEAD", "https", "shop.example", "/", end_stream=True)


def hpack_decoder(data: bytes) -> None:
    """A header block: decoded within the list-size limit or refused with
    CompressionError/HeaderListTooLarge; what decodes re-encodes to the same fields,
    and agrees with python-hyper's decoder whenever both accept it."""
    limit = (100, 4096, 65536)[data[0] % 3] if data else 4096
    block = data[1:]
    try:
        fields = HeaderDecoder(max_header_list_size=limit).decode(block)
    except (CompressionError, HeaderListTooLarge):
        return
    assert sum(len(n) + len(v) + 32 for n, v in fields) <= limit
    again = HeaderDecoder(max_header_list_size=limit).decode(HeaderEncoder().encode(fields))
    assert again == fields, (fields, again)
    try:
        theirs = hpack.Decoder().decode(block, raw=True)
    except Exception:       # noqa: BLE001 - the other decoder may be stricter; only agreement is checked
        return
    assert [(bytes(n), bytes(v)) for n, v in theirs] == fields, (theirs, fields)


def frame_decoder(data: bytes) -> None:
    """The frame reader, fed in cuts: whole frames or ProtocolError."""
    decoder = FrameDecoder()
    split = _split_size(data)
    seen = 0
    try:
        for i in range(1, len(data), split):
            for f in decoder.feed(data[i:i + split]):
                assert f.length == len(f.payload)
                seen += 9 + f.length
    except ProtocolError:
        return
    assert seen <= len(data)


def socks5_request(data: bytes) -> None:
    """A SOCKS5 greeting and CONNECT request: parsed, asked for more, or Socks5Error."""
    for parse in (parse_greeting, parse_request):
        try:
            parsed = parse(data)
        except Socks5Error:
            continue
        if parsed is not None:
            assert 0 < parsed[0] <= len(data)
            if parse is parse_request:
                assert 0 < parsed[2] < 65536 and parsed[1]


def node_config(data: bytes) -> None:
    """The node's configuration text (ztunnel local config, Istio policies): a mesh
    state or ConfigError, nothing else."""
    try:
        load_node_config(inline=data.decode("utf-8", "replace") or " ")
    except ConfigError as exc:
        assert str(exc)


def authorization_policy(data: bytes) -> None:
    """Istio AuthorizationPolicy documents: policies or ConfigError, nothing else."""
    try:
        load_authorization_policies(data.decode("utf-8", "replace"))
    except ConfigError as exc:
        assert str(exc)


_TLS_IDENTITIES: list = []


def _tls_contexts():
    """A client's engine context and a server's Python ssl context, of one CA, made once
    per process (the fuzzer calls the target many times)."""
    if not _TLS_IDENTITIES:
        from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
        store = CertificateStore(CertificateAuthority.create("cluster.local"))
        _TLS_IDENTITIES.append((store.client_context(SpiffeId("cluster.local", "fuzz", "client")).native(),
                                store.server_context(SpiffeId("cluster.local", "fuzz", "server"))))
    return _TLS_IDENTITIES[0]


def tls_records(data: bytes) -> None:
    """meshcore's TLS engine reading, after a real handshake with Python's ssl: the
    peer's records (how many and how large, the second byte and those after it say;
    then close_notify or not) reach the socket in cuts the first byte chooses, and the
    rest of the input follows them on the wire. Every byte before the rest comes out
    whole and in order; what follows may end the connection with ssl.SSLError or
    OSError, never anything else, and nothing comes out that the peer did not send."""
    import socket
    import ssl
    from meshcore.aio.openssl import HANDSHAKE_DONE, TlsConnection
    if len(data) < 2:
        return
    split, count, closing = _split_size(data), data[1] & 7, bool(data[1] & 8)
    sizes = [b * 16 + 1 for b in data[2:2 + count]]
    tail = data[2 + count:]
    client_ctx, server_ctx = _tls_contexts()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = server_ctx.wrap_bio(incoming, outgoing, server_side=True)
    tls = TlsConnection(client_ctx, ours.fileno(), False)
    try:
        done = [False, False]
        for _ in range(20):
            if not done[0]:
                done[0] = tls.handshake() == HANDSHAKE_DONE
            try:
                while chunk := theirs.recv(1 << 16, socket.MSG_DONTWAIT):
                    incoming.write(chunk)
            except BlockingIOError:
                pass
            if not done[1]:
                try:
                    peer.do_handshake()
                    done[1] = True
                except ssl.SSLWantReadError:
                    pass
            theirs.sendall(outgoing.read())
            if all(done):
                break
        assert all(done), "the handshake did not complete"
        payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
        for payload in payloads:
            peer.write(payload)
        if closing:
            try:
                peer.unwrap()
            except ssl.SSLWantReadError:
                pass
        stream = outgoing.read()
        sent = b"".join(payloads)
        got = bytearray()
        buf = bytearray(8192)
        wire = stream + tail
        for at in range(0, len(wire), split):
            theirs.sendall(wire[at:at + split])
            try:
                while n := tls.read_into(buf):
                    got += buf[:n]
            except (ssl.SSLError, OSError):
                assert at + split > len(stream), f"refused inside the peer's own records at {at}"
                break
            assert sent.startswith(got), "bytes the peer did not send came out"
        assert bytes(got) == sent or tail, (len(got), len(sent))
    finally:
        tls.free()
        ours.close()
        theirs.close()


class PlantedBug(Exception):
    """Raised by the planted target: proof that the fuzzer finds what it should."""


def planted(data: bytes) -> None:
    """A bug behind three byte comparisons, for the test of the fuzzing harness."""
    if len(data) >= 3 and data[0] == 0x48:
        if data[1] == 0x42:
            if data[2] == 0x4F:
                raise PlantedBug(data[:3])


TARGETS = {f.__name__: f for f in (server_connection, client_connection, hpack_decoder, frame_decoder,
                                   socks5_request, node_config, authorization_policy, tls_records)}
EXTRA_TARGETS = {"planted": planted}


# ------------------------------------------------------------------ seeds

def _h2_client_bytes() -> list[bytes]:
    """What python-hyper's h2 client sends: CONNECTs, data, half-close, resets, pings."""
    import h2.config
    import h2.connection
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [(":method", "CONNECT"), (":authority", "10.0.0.2:80")]
    client.send_headers(1, headers)
    client.send_data(1, b"hello")
    client.end_stream(1)
    client.send_headers(3, headers + [("baggage", "k=v")])
    client.send_data(3, b"x" * 3000)
    client.reset_stream(3)
    client.send_headers(5, headers)
    request = [(":method", "POST"), (":scheme", "https"), (":authority", "shop.example"), (":path", "/orders"),
               ("content-length", "4"), ("te", "trailers")]
    client.send_headers(7, request)
    client.send_data(7, b"body")
    client.send_headers(7, [("x-checksum", "abc")], end_stream=True)
    client.send_headers(9, [(":method", "HEAD"), (":scheme", "https"), (":path", "/"), ("host", "shop.example")],
                        end_stream=True)
    client.ping(b"12345678")
    client.increment_flow_control_window(1000)
    client.close_connection()
    wire = client.data_to_send()[len(PREFACE):]
    return [bytes([255]) + wire, bytes([7]) + wire, bytes([0]) + wire[:200]]


def _h2_server_bytes() -> list[bytes]:
    """What python-hyper's h2 server answers to meshcore's client opening three tunnels."""
    import h2.config
    import h2.connection
    import h2.events
    ours = H2Connection(client=True)
    for port in (80, 443, 8080):
        ours.open_tunnel(f"10.0.0.1:{port}")
    post, head = _client_requests(ours)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    for event in server.receive_data(ours.data_to_send()):
        if isinstance(event, h2.events.RequestReceived) and event.stream_id == post:
            server.send_headers(post, [(":status", "100")])
            server.send_headers(post, [(":status", "201"), ("content-length", "7")])
            server.send_data(post, b"created")
            server.send_headers(post, [("grpc-status", "0")], end_stream=True)
        elif isinstance(event, h2.events.RequestReceived) and event.stream_id == head:
            server.send_headers(head, [(":status", "200"), ("content-length", "100")], end_stream=True)
        elif isinstance(event, h2.events.RequestReceived):
            status = "200" if event.stream_id != 3 else "503"
            server.send_headers(event.stream_id, [(":status", status)], end_stream=status != "200")
            if status == "200":
                server.send_data(event.stream_id, b"y" * 500)
    server.end_stream(1)
    server.reset_stream(5)
    server.ping(b"abcdefgh")
    wire = server.data_to_send()
    return [bytes([255]) + wire, bytes([3]) + wire]


def seeds(name: str) -> list[bytes]:
    """Inputs each target starts from: real traffic from independent peers and the
    project's own example configuration."""
    if name == "server_connection":
        return _h2_client_bytes()
    if name == "client_connection":
        return _h2_server_bytes()
    if name == "frame_decoder":
        return _h2_client_bytes() + _h2_server_bytes()
    if name == "hpack_decoder":
        headers = [(":method", "CONNECT"), (":authority", "10.0.0.2:8080"), ("x-forwarded-for", "10.0.0.9"),
                   ("baggage", "k8s.namespace.name=default")]
        encoder = hpack.Encoder()
        first = encoder.encode(headers)
        encoder.header_table_size = 256
        return [bytes([2]) + first, bytes([2]) + encoder.encode(headers, huffman=False),
                bytes([0]) + hpack.Encoder().encode(headers[:2])]
    if name == "socks5_request":
        return [b"\x05\x01\x00", b"\x05\x01\x00\x01\x0a\x00\x00\x02\x00\x50",
                b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
                b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x1f\x90"]
    if name == "node_config":
        example = ROOT / "examples" / "node-proxy"
        texts = [p.read_bytes() for p in sorted(example.glob("*.yaml"))]
        mesh = {"workloads": [{"uid": "c/default/a", "name": "a", "namespace": "default",
                               "serviceAccount": "a", "workloadIps": ["10.0.0.5"], "node": "n1",
                               "protocol": "HBONE"}],
                "services": [{"name": "s", "namespace": "default", "hostname": "s.default.svc.cluster.local",
                              "vips": ["/10.96.0.5"], "ports": {"80": 8080}}]}
        return texts + [json.dumps(mesh).encode()]
    if name == "authorization_policy":
        return [(ROOT / "examples" / "node-proxy" / "policy.yaml").read_bytes()]
    if name == "tls_records":
        # three records whole; split at every 7 bytes with close_notify; one big record
        # cut small and a forged record header after it; nothing but the handshake
        return [bytes([255, 3, 4, 0, 255]), bytes([6, 8 | 2, 10, 1]),
                bytes([2, 1, 250]) + b"\x17\x03\x03\x00\x20" + bytes(32), bytes([0, 0])]
    if name == "planted":
        return [b"\x00"]
    raise KeyError(name)
