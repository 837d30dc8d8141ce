"""Stream setup micro-benchmarks: a CONNECT tunnel opened and answered (HBONE's fast
path) and a GET request answered with a small body, both ends in memory; meshcore's
compiled core and python-hyper's h2 side by side (groups pair them).

    pytest benchmarks/test_request_bench.py
"""
import h2.events

from meshcore import H2Connection
from meshcore import events as ev

from peers import H2Peer, handshake

# what a ztunnel client sends (docs/hbone.md, The CONNECT request)
CONNECT_FIELDS = [
    (b"forwarded", b'for="10.244.2.9:43872";host=reviews.bookinfo.svc.cluster.local'),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    (b"baggage", b"k8s.cluster.name=Kubernetes,k8s.namespace.name=bookinfo"),
]
GET_FIELDS = [(b"user-agent", b"bench/1"), (b"accept", b"application/json")]
BODY = b"{" + b"x" * 510 + b"}"


class _Pair:
    """A connected pair of our engine, renewed before stream ids run out."""

    def __init__(self):
        self.renew()

    def renew(self):
        self.client, self.server = H2Connection(client=True), H2Connection(client=False)
        for _ in range(2):
            self.server.receive_data(self.client.data_to_send())
            self.client.receive_data(self.server.data_to_send())
        self.opened = 0


def _h2_pair():
    client, server = H2Peer(True), H2Peer(False)
    handshake(client, server)
    return client.conn, server.conn


def test_tunnel_open(benchmark):
    """open_tunnel -> TunnelRequested -> accept_tunnel -> TunnelAccepted -> CANCEL."""
    benchmark.group = "CONNECT opened and answered"
    p = _Pair()

    def once():
        sid = p.client.open_tunnel("10.244.1.17:8080", CONNECT_FIELDS)
        for e in p.server.receive_data(p.client.data_to_send()):
            if type(e) is ev.TunnelRequested:
                p.server.accept_tunnel(e.stream_id)
        p.client.receive_data(p.server.data_to_send())
        p.client.reset_stream(sid)
        p.server.receive_data(p.client.data_to_send())
        p.opened += 1
        if p.opened > 50_000:
            p.renew()
    benchmark(once)


def test_tunnel_open_h2(benchmark):
    benchmark.group = "CONNECT opened and answered"
    state = {"pair": _h2_pair(), "opened": 0}

    def once():
        client, server = state["pair"]
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.244.1.17:8080"), *CONNECT_FIELDS])
        for e in server.receive_data(client.data_to_send()):
            if isinstance(e, h2.events.RequestReceived):
                server.send_headers(e.stream_id, [(b":status", b"200")])
        client.receive_data(server.data_to_send())
        client.reset_stream(sid, 8)
        server.receive_data(client.data_to_send())
        state["opened"] += 1
        if state["opened"] > 50_000:
            state["pair"], state["opened"] = _h2_pair(), 0
    benchmark(once)


def _answer(p):
    for e in p.server.receive_data(p.client.data_to_send()):
        if type(e) is ev.RequestReceived:
            p.server.send_response(e.stream_id, 200, [(b"content-type", b"application/json"),
                                                      (b"content-length", b"512")])
            p.server.send_data(e.stream_id, BODY, True)


def test_get_request(benchmark):
    """send_request -> RequestReceived -> response with a 512-byte body -> ResponseReceived,
    DataReceived (acknowledged), StreamEnded."""
    benchmark.group = "GET answered with 512 bytes"
    p = _Pair()

    def once():
        p.client.send_request(b"GET", b"https", b"reviews.bookinfo:9080", b"/ratings/7", GET_FIELDS, True)
        _answer(p)
        for e in p.client.receive_data(p.server.data_to_send()):
            if type(e) is ev.DataReceived:
                p.client.acknowledge_received_data(e.stream_id, len(e.data))
        p.opened += 1
        if p.opened > 50_000:
            p.renew()
    benchmark(once)


def test_get_request_h2(benchmark):
    benchmark.group = "GET answered with 512 bytes"
    state = {"pair": _h2_pair(), "opened": 0}

    def once():
        client, server = state["pair"]
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"reviews.bookinfo:9080"), (b":path", b"/ratings/7"),
                                  *GET_FIELDS], end_stream=True)
        for e in server.receive_data(client.data_to_send()):
            if isinstance(e, h2.events.RequestReceived):
                server.send_headers(e.stream_id, [(b":status", b"200"), (b"content-type", b"application/json"),
                                                  (b"content-length", b"512")])
                server.send_data(e.stream_id, BODY, end_stream=True)
        for e in client.receive_data(server.data_to_send()):
            if isinstance(e, h2.events.DataReceived):
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        state["opened"] += 1
        if state["opened"] > 50_000:
            state["pair"], state["opened"] = _h2_pair(), 0
    benchmark(once)


def test_pairs_are_sound():
    """The benchmarked exchanges do what they claim (run as a plain test)."""
    p = _Pair()
    p.client.send_request(b"GET", b"https", b"a", b"/", (), True)
    _answer(p)
    kinds = [type(e) for e in p.client.receive_data(p.server.data_to_send())]
    assert kinds == [ev.ResponseReceived, ev.DataReceived, ev.StreamEnded]
