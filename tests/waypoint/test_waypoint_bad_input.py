"""Hostile HTTP/1.1 at a real waypoint (`meshcore demo`'s mesh: node-a → waypoint →
node-b): each malformed or smuggling-shaped request is answered with its status and
its tunnel closed; a tunnel opened before them keeps working, and the waypoint's file
descriptors come back to where they were."""
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
