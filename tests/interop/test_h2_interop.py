"""Our HTTP/2 engine against python-hyper's independent h2, in memory.

Every scenario runs with meshcore as client against an h2 server, an h2 client
against meshcore as server, and meshcore on both ends; payloads are random,
chunked at random split points, and checked by SHA-256 on arrival.
"""
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from peers import H2Peer, OursPeer, TunnelWorkload, open_answered, random_chunker, whole

PAIRS = [(OursPeer, H2Peer), (H2Peer, OursPeer), (OursPeer, OursPeer)]
PAIR_IDS = ["meshcore-client/h2-server", "h2-client/meshcore-server", "meshcore/meshcore"]


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n_tunnels=st.integers(1, 6),
       max_payload=st.sampled_from([0, 1, 100, 70_000, 300_000]),
       max_chunk=st.sampled_from([1, 7, 1000, 65536, 1 << 22]),
       half_close_first=st.sampled_from(["client", "server"]))
def test_random_tunnels_are_byte_exact(client_cls, server_cls, seed, n_tunnels, max_payload,
                                       max_chunk, half_close_first):
    rng = random.Random(seed)
    max_write = rng.choice([7, 1000, 16384, 1 << 20])
    if max_chunk <= 7 or max_write <= 7:
        max_payload = min(max_payload, 3000)  # byte-sized frames are slow in pure-Python h2
    w = TunnelWorkload(client_cls(True), server_cls(False), rng, n_tunnels, max_payload,
                       max_write=max_write,
                       half_close_first=half_close_first)
    w.run(random_chunker(rng, max_chunk))
    w.check()


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
def test_150_concurrent_tunnels_on_one_connection(client_cls, server_cls):
    rng = random.Random(150)
    w = TunnelWorkload(client_cls(True), server_cls(False), rng, 150, 20_000)
    w.run(whole)
    w.check()


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
def test_windows_exhausted_and_reopened(client_cls, server_cls):
    """12 MiB on 3 streams exceeds both the 4 MiB stream windows and (with the
    return traffic) the 16 MiB connection window several times over."""
    rng = random.Random(7)
    w = TunnelWorkload(client_cls(True), server_cls(False), rng, 3, 0, max_write=1 << 20)
    for sid in list(w.up):
        w.up[sid].payload = rng.randbytes(12 * 1024 * 1024)
        w.down[sid].payload = rng.randbytes(2 * 1024 * 1024)
    w.run(whole)
    w.check()


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
def test_slow_consumer_holds_sender_at_the_window(client_cls, server_cls):
    """A receiver that never acknowledges caps what the sender may queue at the
    initial stream window: nothing is buffered beyond flow control."""
    client, server = client_cls(True), server_cls(False)
    sid = open_answered(client, server)
    server.receive(client.out())
    client.receive(server.out())
    sent = 0
    for _ in range(20):
        n = min(client.window(sid), 1 << 20)
        if n == 0:
            break
        client.send(sid, b"x" * n)
        sent += n
        for e in server.receive(client.out()):
            assert e[0] in ("data",), e   # received but never acknowledged
        client.receive(server.out())
    assert client.window(sid) == 0
    assert sent == 4 * 1024 * 1024


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
def test_refused_tunnel_reports_status(client_cls, server_cls):
    client, server = client_cls(True), server_cls(False)
    sid = client.open("10.0.0.9:9999")
    for e in server.receive(client.out()):
        if e[0] == "request":
            server.respond(e[1], 503)
    events = client.receive(server.out())
    assert ("response", sid, 503) in events
    assert ("end", sid) in events


@pytest.mark.parametrize("client_cls,server_cls", PAIRS, ids=PAIR_IDS)
def test_reset_mid_stream_reaches_the_other_side(client_cls, server_cls):
    client, server = client_cls(True), server_cls(False)
    sid = open_answered(client, server)
    client.send(sid, b"partial")
    client.reset(sid, 8)
    events = server.receive(client.out())
    assert ("data", sid, b"partial", 7) in events
    assert ("reset", sid, 8) in events
