"""HTTP/1.1 at a real waypoint (`meshcore demo`'s mesh: node-a → waypoint → node-b, an
http.server backend): each malformed or smuggling-shaped request is answered with its
status and its tunnel closed while a tunnel opened before keeps working and the
waypoint's file descriptors come back; the headers the backend sees; an upgrade as a
byte stream; bodies in both framings; a policy change applied to the next request."""
import asyncio
import os
import time

import pytest

from meshcore.localmesh import LocalMesh

pytestmark = pytest.mark.timeout(120)

HOST = "web-l7.shop.svc.cluster.local"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = LocalMesh(tmp_path_factory.mktemp("bad-input"))
    m.start()
    yield m
    codes = m.stop()
    assert codes["waypoint"] == 0, m.log("waypoint")[-3000:]


CASES = [
    ("content-length and transfer-encoding",
     b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("transfer-encoding before content-length",
     b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two different content-lengths", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
                                      b"\r\nhello!", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: web\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: web\rX-A: b\r\n\r\n", 400),
    ("no host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("a coding other than chunked", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("a bad chunk size", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
     400),
    ("a header section over 64 KiB", b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
]


async def _send(mesh, data: bytes) -> bytes:
    reader, writer = await mesh.socks5(mesh.client, HOST, 80)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 15)      # to EOF: the waypoint closes the tunnel
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_each_bad_request_gets_its_status_and_its_tunnel_closes_others_undisturbed(mesh):
    pid = mesh.processes["waypoint"].pid

    async def scenario():
        # a keep-alive tunnel opened before the attacks, used between and after them
        reader, writer = await mesh.socks5(mesh.client, HOST, 80)

        async def good(path):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = await reader.readexactly(length)
            return head.split(b" ", 2)[1], body

        status, body = await good("/before")
        # the backend saw the waypoint's own address (it dials from it)
        assert status == b"200" and body.startswith(f"hello from web: GET /before HTTP/1.1 from {mesh.waypoint}:".encode())
        # warm now: node-a's HBONE connection to the waypoint and the waypoint's to node-b
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
        results = {}
        for name, data, _ in CASES:
            results[name] = await _send(mesh, data)
        assert (await good("/after"))[0] == b"200"
        writer.close()
        return results
    fds = []
    results = asyncio.run(scenario())
    before = fds[0]
    for name, _, status in CASES:
        answer = results[name]
        assert answer and _status(answer) == status, (name, answer[:200])
        assert b"connection: close" in answer.lower(), (name, answer[:200])
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{pid}/fd")) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= before, (before, os.listdir(f"/proc/{pid}/fd"))
    log = mesh.log("waypoint")
    assert log.count("request failed") >= len(CASES), log[-3000:]


async def _exchange(mesh, data: bytes, *, until_eof: bool = True) -> bytes:
    reader, writer = await mesh.socks5(mesh.client, HOST, 80)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read() if until_eof else reader.readuntil(b"\r\n\r\n"), 15)
    finally:
        writer.close()


def test_the_backend_sees_the_headers_a_mesh_proxy_sets(mesh):
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    answer = asyncio.run(_exchange(mesh, f"GET /h HTTP/1.1\r\nHost: web\r\ntraceparent: {trace}\r\n"
                                         "Connection: close\r\n\r\n".encode())).decode()
    head = answer.lower()
    assert head.startswith("http/1.1 200")
    seen = dict(line.split(": ", 1) for line in head.split("\r\n\r\n")[0].split("\r\n")[1:])
    assert seen["x-seen-x-forwarded-proto"] == "http"
    assert len(seen["x-seen-x-request-id"]) == 36
    parts = seen["x-seen-traceparent"].split("-")
    assert parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736" and parts[2] != "00f067aa0ba902b7"


def test_an_upgrade_becomes_a_byte_stream_both_ways(mesh):
    async def scenario():
        reader, writer = await mesh.socks5(mesh.client, HOST, 80)
        writer.write(b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        frames = [os.urandom(n) for n in (1, 100, 70000)]
        echoed = []
        for frame in frames:
            writer.write(frame)
            echoed.append(await asyncio.wait_for(reader.readexactly(len(frame)), 10))
        writer.close()
        return head, frames, echoed
    head, frames, echoed = asyncio.run(scenario())
    assert head.startswith(b"HTTP/1.1 101") and b"upgrade: websocket" in head.lower()
    assert echoed == frames


def test_request_bodies_stream_through_in_both_framings(mesh):
    big = os.urandom(3 << 20)
    answer = asyncio.run(_exchange(mesh, b"PUT /up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\nConnection: close"
                                         b"\r\n\r\n%s" % (len(big), big)))
    assert answer.startswith(b"HTTP/1.1 200") and b"x-received-bytes: %d" % len(big) in answer.lower()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"a" * 1000, b"b" * 50000)) + b"0\r\n\r\n"
    answer = asyncio.run(_exchange(mesh, b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
                                         b"Connection: close\r\n\r\n" + chunked))
    assert answer.startswith(b"HTTP/1.1 200") and b"x-received-bytes: 51000" in answer.lower()


def test_a_policy_change_applies_to_the_next_request(mesh):
    assert _status(asyncio.run(_exchange(mesh, b"GET /admin/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"))) \
        == 403
    mesh.write_policy(mesh.policy_text().replace('paths: ["/admin*"]', 'paths: ["/secret*"]'))
    try:
        deadline = time.monotonic() + 10
        while _status(asyncio.run(_exchange(mesh, b"GET /admin/x HTTP/1.1\r\nHost: web\r\nConnection: close"
                                                  b"\r\n\r\n"))) != 200:
            assert time.monotonic() < deadline, mesh.log("waypoint")[-2000:]
            time.sleep(0.1)
        assert _status(asyncio.run(_exchange(mesh, b"GET /secret HTTP/1.1\r\nHost: web\r\nConnection: close"
                                                   b"\r\n\r\n"))) == 403
    finally:
        mesh.write_policy(mesh.policy_text())
        time.sleep(1.5)


def test_draining_waypoint_closes_keep_alive_connections_after_their_request(tmp_path):
    """SIGTERM: the next response on a kept-alive connection says `connection: close`,
    and the waypoint exits 0 once its tunnels end."""
    import signal
    mesh = LocalMesh(tmp_path / "drain")
    mesh.start()
    try:
        async def scenario():
            reader, writer = await mesh.socks5(mesh.client, HOST, 80)
            writer.write(b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            await reader.readexactly(int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
            mesh.processes["waypoint"].send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            writer.write(b"GET /two HTTP/1.1\r\nHost: web\r\n\r\n")
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return first, rest
        first, rest = asyncio.run(scenario())
        assert b"connection: close" not in first.lower()
        assert rest.startswith(b"HTTP/1.1 200") and b"connection: close" in rest.lower(), rest[:300]
        assert mesh.processes["waypoint"].wait(10) == 0
    finally:
        mesh.stop()
