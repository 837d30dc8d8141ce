"""The waypoint under load, as processes: wrk → SOCKS5 forwarder → node-a → waypoint →
node-b → nginx (the web workload's HTTP/1.1, keep-alive). Every request must be answered
200, each counted once in the waypoint's metrics and reaching the backend once, and the
waypoint must give back what the load took (file descriptors, memory)."""
import os
import time

import pytest

from meshcore.localmesh import LocalMesh
from waypoint_load import NginxMesh, open_fds, requests_total, rss_kib, wrk
from waypoint_mesh import running

pytestmark = [pytest.mark.timeout(90), pytest.mark.needs_tool("wrk"), pytest.mark.needs_tool("nginx")]

CONNECTIONS = 16
SECONDS = 3
# what a few thousand requests may leave behind in the waypoint's heap (pymalloc arenas,
# the event loop's free lists, the metrics' one series): measured at about 1.5 MiB; a
# leak of one object per request would pass this only below ~1 KiB a request
RSS_GROWTH_KIB = 8 * 1024
# the connections the waypoint may hold after the load beyond those it held before:
# pooled HBONE connections (upstream to node-b, and node-a's to the waypoint) are kept
# while idle, and load can make either pool open one more
POOLED_FDS = 2


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(NginxMesh(tmp_path_factory.mktemp("waypoint-load"))) as m:
        yield m


def _waypoint_requests(mesh, **labels) -> int:
    status, metrics = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")
    assert status == 200, metrics
    return requests_total(metrics, **labels)


def _settled(read, timeout=5.0):
    """`read()` once it stops changing (the waypoint finishes what was in flight when
    wrk stopped)."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = read()
        if again == value:
            return value
        value = again
    return value


def test_wrk_through_the_waypoint_without_failures_or_leaks(mesh):
    pid = mesh.processes["waypoint"].pid
    forwarder = mesh.forwarder(mesh.vip_l7)
    try:
        # warm: certificates, pooled HBONE connections on both sides, the loop's buffers
        warm = wrk(forwarder.url, seconds=1, connections=CONNECTIONS)
        assert warm["failures"] == 0, warm["output"]
        count0 = _settled(lambda: _waypoint_requests(mesh))
        left0 = _waypoint_requests(mesh, response_code="0", response_flags="DC")     # the warm run's
        backend0 = mesh.backend_requests()
        fds0 = _settled(lambda: open_fds(pid))
        rss0 = rss_kib(pid)

        run = wrk(forwarder.url, seconds=SECONDS, connections=CONNECTIONS)
        assert run["failures"] == 0, run["output"]          # socket errors and non-2xx alike
        assert run["requests"] > 500, run["output"]

        counted = _settled(lambda: _waypoint_requests(mesh)) - count0
        ok = _waypoint_requests(mesh, response_code="200", reporter="waypoint",
                                destination_service="web-l7.shop.svc.cluster.local")
        # a request still in flight when wrk closed its connection is given up with it
        # (response_code 0, DC, as Envoy reports it): at most one per connection
        given_up = _waypoint_requests(mesh, response_code="0", response_flags="DC")
        left = given_up - left0
        assert left <= CONNECTIONS and ok + given_up == _waypoint_requests(mesh), \
            ("the waypoint answered something other than 200", left, ok, given_up)
        # wrk counts the responses it read before its clock stopped; the waypoint had
        # also answered those still in flight then, at most one per connection
        assert run["requests"] <= counted <= run["requests"] + CONNECTIONS, (run["requests"], counted)
        # each request the waypoint answered reached the backend exactly once (one given
        # up may or may not have)
        assert counted - left <= mesh.backend_requests() - backend0 <= counted

        # wrk closed its connections: their tunnels and upstream streams end with them
        deadline = time.monotonic() + 10
        while (fds := open_fds(pid)) > fds0 + POOLED_FDS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fds <= fds0 + POOLED_FDS, (fds0, fds, sorted(_fd_targets(pid)))
        rss = rss_kib(pid)
        assert rss - rss0 <= RSS_GROWTH_KIB, f"waypoint RSS {rss0} KiB before, {rss} KiB after"
    finally:
        forwarder.stop()
    log = mesh.log("waypoint")
    failed = [line for line in log.splitlines() if "request failed" in line and "DC" not in line]
    assert not failed, failed[:5]
    assert "Traceback" not in log, log[-3000:]


def _fd_targets(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_upstream_tunnels_end_cleanly_when_clients_leave(mesh):
    before = mesh.log("node-b").count("connection failed")
    forwarder = mesh.forwarder(mesh.vip_l7)
    try:
        run = wrk(forwarder.url, seconds=1, connections=CONNECTIONS)
        assert run["failures"] == 0, run["output"]
    finally:
        forwarder.stop()
    time.sleep(1.0)
    failed = [line for line in mesh.log("node-b").splitlines() if "connection failed" in line][before:]
    assert not failed, f"{len(failed)} of the waypoint's upstream tunnels ended as failed at node-b: {failed[0]}"
