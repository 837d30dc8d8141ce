"""HTTP/2 load through the waypoint, as processes: h2load (h2c, prior knowledge) → TCP
forwarder → node-a's SOCKS5 → waypoint → node-b → nginx's h2c port. Several connections,
each with streams side by side: every request must be answered, each counted once in
the waypoint's metrics, and the waypoint must give back the connections the load took."""
import re
import subprocess
import time

import pytest

from meshcore.localmesh import LocalMesh
from waypoint_load import NginxMesh, open_fds, requests_total
from waypoint_mesh import running

pytestmark = [pytest.mark.timeout(90), pytest.mark.needs_tool("h2load"), pytest.mark.needs_tool("nginx")]

CLIENTS = 8
STREAMS = 32            # concurrent streams on each connection: 256 in all, past the 128
# nginx allows on the one upstream connection the waypoint multiplexes them on
REQUESTS = 8000
# pooled HBONE connections (node-a's to the waypoint, the waypoint's to node-b) are kept
# while idle, and load can make either pool open one more
POOLED_FDS = 2


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(NginxMesh(tmp_path_factory.mktemp("waypoint-h2load"))) as m:
        yield m


def h2load(url: str, *, requests: int, clients: int, streams: int) -> dict:
    cmd = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), "-t", "1",
           "-T", "20", "-N", "20", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = proc.stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m is None:
        raise RuntimeError(f"{' '.join(cmd)} gave no summary ({proc.returncode}): {out}{proc.stderr}")
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return dict(zip(keys, map(int, m.groups()))) | {"2xx": int(codes.group(1)), "output": out + proc.stderr,
                                                    "protocol": "h2c" if "Application protocol: h2c" in out else None}


def _waypoint_requests(mesh, **labels) -> int:
    status, text = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")
    assert status == 200, text
    return requests_total(text, **labels)


def _settled(read, timeout=5.0):
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (again := read()) == value:
            return value
        value = again
    return value


def test_h2load_through_the_waypoint_completes_every_request(mesh):
    pid = mesh.processes["waypoint"].pid
    forwarder = mesh.forwarder(mesh.vip_l7, NginxMesh.H2_PORT)
    try:
        # warm: certificates and the pooled HBONE connections on both sides
        warm = h2load(forwarder.url, requests=50, clients=2, streams=4)
        assert warm["failed"] == warm["errored"] == warm["timeout"] == 0, warm["output"]
        count0 = _settled(lambda: _waypoint_requests(mesh))
        backend0 = mesh.backend_requests()
        fds0 = _settled(lambda: open_fds(pid))

        run = h2load(forwarder.url, requests=REQUESTS, clients=CLIENTS, streams=STREAMS)
        assert run["protocol"] == "h2c", run["output"]
        assert (run["failed"], run["errored"], run["timeout"]) == (0, 0, 0), run["output"]
        assert run["done"] == run["succeeded"] == run["2xx"] == REQUESTS, run["output"]

        # h2load waits for every response: the waypoint counted each once, all 200
        counted = _settled(lambda: _waypoint_requests(mesh)) - count0
        assert counted == REQUESTS, counted
        ok = _waypoint_requests(mesh, response_code="200", reporter="waypoint", request_protocol="http",
                                destination_service="web-l7.shop.svc.cluster.local")
        assert ok == _waypoint_requests(mesh), "the waypoint answered something other than 200"
        assert mesh.backend_requests() - backend0 == REQUESTS

        # h2load closed its connections: their tunnels end with them
        deadline = time.monotonic() + 10
        while (fds := open_fds(pid)) > fds0 + POOLED_FDS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fds <= fds0 + POOLED_FDS, (fds0, fds)
    finally:
        forwarder.stop()
    log = mesh.log("waypoint")
    assert "request failed" not in log, [line for line in log.splitlines() if "request failed" in line][:5]
    assert "Traceback" not in log, log[-3000:]
