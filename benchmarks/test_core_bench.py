"""Core micro-benchmarks: meshcore's compiled core and python-hyper's pure-Python
libraries doing the same work, side by side in one run (groups pair them).

    pip install ".[bench]" && python benchmarks/report.py
"""
import h2.events
import hpack
import pytest
from hyperframe.frame import DataFrame, Frame

from meshcore import events as ev
from meshcore._core import frames as mf
from meshcore._core.hpack import HeaderDecoder, HeaderEncoder

from peers import H2Peer, OursPeer, handshake

SIZES = {"16KiB": 16 * 1024, "1MiB": 1024 * 1024}

# what a ztunnel client sends (docs/hbone.md, The CONNECT request)
CONNECT_HEADERS = [
    (b":method", b"CONNECT"),
    (b":authority", b"10.244.1.17:8080"),
    (b"forwarded", b'for="10.244.2.9:43872";host=reviews.bookinfo.svc.cluster.local'),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    (b"baggage", b"k8s.cluster.name=Kubernetes,k8s.namespace.name=bookinfo,"
                 b"k8s.deployment.name=productpage-v1,service.name=productpage,service.version=v1"),
]


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("impl", ["meshcore", "hyperframe"])
def test_frame_encode(benchmark, impl, size):
    benchmark.group = f"frame encode DATA {size}"
    payload = b"x" * SIZES[size]
    if impl == "meshcore":
        benchmark(mf.encode_data, 1, payload)
    else:
        benchmark(lambda: DataFrame(1, payload).serialize())


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("impl", ["meshcore", "hyperframe"])
def test_frame_decode(benchmark, impl, size):
    benchmark.group = f"frame decode DATA {size}"
    wire = mf.encode_data(1, b"x" * SIZES[size])
    if impl == "meshcore":
        decoder = mf.FrameDecoder((1 << 24) - 1)
        benchmark(lambda: decoder.feed(wire)[0].data)
    else:
        def parse():
            f, length = Frame.parse_frame_header(memoryview(wire)[:9])
            f.parse_body(memoryview(wire)[9:9 + length])
            return f.data
        benchmark(parse)


@pytest.mark.parametrize("impl", ["meshcore", "hpack"])
def test_hpack_encode_connect(benchmark, impl):
    """A fresh encoder per block: the first CONNECT on a new connection."""
    benchmark.group = "HPACK encode CONNECT block"
    if impl == "meshcore":
        benchmark(lambda: HeaderEncoder().encode(CONNECT_HEADERS))
    else:
        benchmark(lambda: hpack.Encoder().encode(CONNECT_HEADERS))


@pytest.mark.parametrize("impl", ["meshcore", "hpack"])
def test_hpack_decode_connect(benchmark, impl):
    benchmark.group = "HPACK decode CONNECT block"
    block = hpack.Encoder().encode(CONNECT_HEADERS)
    if impl == "meshcore":
        benchmark(lambda: HeaderDecoder().decode(block))
    else:
        benchmark(lambda: hpack.Decoder().decode(block, raw=True))


def _tunnel(cls):
    client, server = cls(True), cls(False)
    handshake(client, server)
    sid = client.open("10.0.0.1:8080")
    for e in server.receive(client.out()):
        if e[0] == "request":
            server.respond(e[1], 200)
    client.receive(server.out())
    return client.conn, server.conn, sid


def _step_meshcore(client, server, sid, chunk):
    client.send_data(sid, chunk)
    for e in server.receive_data(client.data_to_send()):
        if type(e) is ev.DataReceived:
            server.acknowledge_received_data(e.stream_id, len(e.data))
    back = server.data_to_send()
    if back:
        client.receive_data(back)


def _step_h2(client, server, sid, chunk):
    client.send_data(sid, chunk)
    for e in server.receive_data(client.data_to_send()):
        if isinstance(e, h2.events.DataReceived):
            server.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
    back = server.data_to_send()
    if back:
        client.receive_data(back)


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("impl", ["meshcore", "h2"])
def test_tunnel_step(benchmark, impl, size):
    """Client sends one write, server receives and acknowledges it, client takes the
    WINDOW_UPDATEs: the sans-IO work per write of a tunnel, both ends."""
    benchmark.group = f"in-memory tunnel step {size}"
    benchmark.extra_info["bytes"] = SIZES[size]
    chunk = b"x" * SIZES[size]
    if impl == "meshcore":
        client, server, sid = _tunnel(OursPeer)
        benchmark(_step_meshcore, client, server, sid, chunk)
    else:
        client, server, sid = _tunnel(H2Peer)
        benchmark(_step_h2, client, server, sid, chunk)
