"""Two node proxies as real processes (meshcore.localmesh: CA, node-a, node-b, workloads),
driven from outside by curl and by plain sockets through SOCKS5."""
import asyncio
import base64
import hashlib
import os
import re
import subprocess
import time

import pytest

from meshcore.localmesh import LocalMesh

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = LocalMesh(tmp_path_factory.mktemp("mesh"))
    m.start()
    yield m
    codes = m.stop()
    assert codes == {"web": 0, "outside": 0, "node-a": 0, "node-b": 0, "waypoint": 0}, (m.log("node-a")[-3000:],
                                                                          m.log("node-b")[-3000:])


def curl(mesh, source, url, *, hostname=True, timeout=10):
    socks = "--socks5-hostname" if hostname else "--socks5"
    return subprocess.run(["curl", "-sS", "-m", str(timeout), "--interface", source, socks,
                           f"{mesh.node['node-a']}:15080", url], capture_output=True, text=True)


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def access_lines(mesh, node, pattern):
    return [line for line in mesh.log(node).splitlines() if "\taccess\t" in line and re.search(pattern, line)]


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.needs_tool("curl")
@pytest.mark.parametrize("target, hostname", [
    ("http://web.shop.svc.cluster.local/", True),          # mesh hostname, resolved by node-a to the VIP
    ("http://{vip}:80/", False),                           # the service VIP
    ("http://{web}:8080/", False),                         # the workload's own address
])
def test_curl_through_socks5_reaches_the_workload(mesh, target, hostname):
    url = target.format(vip=mesh.vip, web=mesh.web)
    proc = curl(mesh, mesh.client, url, hostname=hostname)
    assert proc.returncode == 0, proc.stderr
    # the workload saw the client's own address: node-a dialed from it, node-b kept it
    assert proc.stdout.startswith(f"hello from web: GET / HTTP/1.1 from {mesh.client}:")
    line = wait_for(lambda: access_lines(mesh, "node-b", rf'src.addr={re.escape(mesh.client)}:\d+ .*'
                                                         r'connection complete|connection complete.*'
                                                         rf'src.addr={re.escape(mesh.client)}'))
    assert line and 'src.identity="spiffe://cluster.local/ns/shop/sa/client"' in line[-1]


@pytest.mark.needs_tool("curl")
def test_policy_denies_and_both_nodes_say_why(mesh):
    proc = curl(mesh, mesh.batch, "http://web.shop.svc.cluster.local/")
    assert proc.returncode == 97, (proc.returncode, proc.stderr)        # curl: SOCKS5 refused
    denied = wait_for(lambda: access_lines(mesh, "node-b", r"denied by DENY policy shop/deny-jobs"))
    assert denied and 'src.identity="spiffe://cluster.local/ns/jobs/sa/batch"' in denied[-1]
    assert "\twarn\taccess\tconnection failed\t" in denied[-1]
    assert wait_for(lambda: access_lines(mesh, "node-a", r'src.workload="batch".*error="http status: 401"'))


@pytest.mark.needs_tool("curl")
def test_non_mesh_destination_passes_through(mesh):
    proc = curl(mesh, mesh.client, f"http://{mesh.outside}:8080/", hostname=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"hello from outside: GET / HTTP/1.1 from {mesh.client}:")
    line = wait_for(lambda: access_lines(mesh, "node-a", rf"dst.addr={re.escape(mesh.outside)}:8080"))
    assert line and "dst.hbone_addr" not in line[-1]


@pytest.mark.needs_tool("curl")
def test_unknown_source_is_refused(mesh):
    proc = curl(mesh, "127.0.0.1", "http://web.shop.svc.cluster.local/")
    assert proc.returncode == 97
    assert wait_for(lambda: access_lines(mesh, "node-a", r"source 127\.0\.0\.1 is not a workload of node"))


async def _echo(mesh, size, source=None, port=9000):
    payload = os.urandom(size)
    reader, writer = await mesh.socks5(source or mesh.client, "web.shop.svc.cluster.local", port)

    async def send():
        for i in range(0, size, 1 << 16):
            writer.write(payload[i:i + (1 << 16)])
            await writer.drain()
        writer.write_eof()
    sender = asyncio.ensure_future(send())
    digest, got = hashlib.sha256(), 0
    while chunk := await reader.read(1 << 16):
        digest.update(chunk)
        got += len(chunk)
    await sender
    writer.close()
    return got == size and digest.digest() == hashlib.sha256(payload).digest()


def test_concurrent_tunnels_arrive_intact_and_descriptors_come_back(mesh):
    pids = {n: mesh.processes[n].pid for n in ("node-a", "node-b")}
    asyncio.run(_echo(mesh, 1000))                    # warm: pooled connection, certificates
    before = {n: open_fds(p) for n, p in pids.items()}
    sizes = [1, 1000, 65536, 1 << 20, 3 << 20] * 6

    async def many():
        return await asyncio.gather(*(_echo(mesh, s) for s in sizes))
    assert all(asyncio.run(many()))
    # none more than before (a connection of an earlier test may still have been closing then)
    settled = wait_for(lambda: all(open_fds(p) <= before[n] for n, p in pids.items()), timeout=5)
    assert settled, ({n: open_fds(p) for n, p in pids.items()}, before)


def test_metrics_config_dump_readiness_and_logging(mesh):
    asyncio.run(_echo(mesh, 100))
    status, text = mesh.http_get(mesh.node["node-b"], 15020, "/metrics")
    assert status == 200
    opened = [l for l in text.splitlines() if l.startswith("istio_tcp_connections_opened_total{")
              and 'source_principal="spiffe://cluster.local/ns/shop/sa/client"' in l]
    assert opened and all('reporter="destination"' in l and 'connection_security_policy="mutual_tls"' in l
                          and 'destination_workload="web"' in l and 'destination_canonical_revision="v1"' in l
                          for l in opened)
    assert re.search(r'istio_tcp_received_bytes_total\{[^}]*source_workload="client"[^}]*\} [1-9]', text)
    assert "process_open_fds" in text and 'istio_build{component="ztunnel"' in text
    assert "_created" not in text
    status, same = mesh.http_get(mesh.node["node-b"], 15020, "/stats/prometheus")
    assert status == 200 and "istio_tcp_connections_opened_total" in same
    status, text = mesh.http_get(mesh.node["node-a"], 15020, "/metrics")
    assert [l for l in text.splitlines() if l.startswith("istio_tcp_connections_opened_total{")
            and 'reporter="source"' in l and 'destination_service="web.shop.svc.cluster.local"' in l]

    import json
    status, text = mesh.http_get(mesh.node["node-a"], 15000, "/config_dump")
    dump = json.loads(text)
    assert {"workloads", "services", "policies", "certificates", "config", "version"} <= set(dump)
    assert {w["name"] for w in dump["workloads"]} == {"client", "batch", "web", "waypoint"}
    assert dump["services"][0]["vips"] == [f"/{mesh.vip}"]
    certs = {c["identity"]: c for c in dump["certificates"]}
    assert set(certs) == {"spiffe://cluster.local/ns/shop/sa/client", "spiffe://cluster.local/ns/jobs/sa/batch"}
    chain = certs["spiffe://cluster.local/ns/shop/sa/client"]["certChain"][0]
    # base64 of the PEM text, as ztunnel writes it
    assert base64.b64decode(chain["pem"]).startswith(b"-----BEGIN CERTIFICATE-----")
    assert chain["expirationTime"].endswith("Z")

    assert mesh.http_get(mesh.node["node-a"], 15021, "/healthz/ready") == (200, "ready\n")
    assert mesh.http_get(mesh.node["node-a"], 15000, "/logging")[0] == 405
    assert mesh.http_get(mesh.node["node-a"], 15000, "/logging?level=loud", "POST")[0] == 400
    assert mesh.http_get(mesh.node["node-a"], 15000, "/logging?level=info", "POST") == (
        200, "current log level is info\n")
    assert mesh.http_get(mesh.node["node-a"], 15000, "/quitquitquit")[0] == 405     # GET does not stop it


def test_config_reload_bad_kept_good_applied_revoked_tunnels_closed(mesh):
    async def scenario():
        # a long-lived tunnel from client stays open across the reloads
        reader, writer = await mesh.socks5(mesh.client, "web.shop.svc.cluster.local", 9000)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"

        # 1. a broken policy file: refused with where and why, the running policy kept
        mesh.write_policy(mesh.policy_text() + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                          "metadata: {name: broken, namespace: shop}\nspec: {action: ALLOW, rules: "
                          "[{from: [{source: {principal: [x]}}]}]}\n")
        for node in ("node-a", "node-b"):
            assert await asyncio.to_thread(wait_for, lambda: re.search(
                r"configuration refused \(files changed\).*policy\.yaml, document \d+, at "
                r"spec\.rules\[0\]\.from\[0\]\.source\.principal: unknown field", mesh.log(node)))
        assert await _echo(mesh, 10000)                      # still allowed
        writer.write(b"during")
        assert await reader.readexactly(6) == b"during"

        # 2. a good one: batch allowed (the DENY dropped), applied to new connections
        mesh.write_policy(mesh.policy_text(allowed=["cluster.local/ns/shop/sa/client",
                                                    "cluster.local/ns/jobs/sa/batch"], denied_namespaces=()))

        async def batch_allowed():
            try:
                return await _echo(mesh, 1000, source=mesh.batch)
            except ConnectionRefusedError:
                return False
        for _ in range(100):
            if await batch_allowed():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the new policy did not take effect")
        writer.write(b"after")
        assert await reader.readexactly(5) == b"after"

        # 3. a policy that no longer admits client: its open tunnel is closed, new ones denied
        mesh.write_policy(mesh.policy_text(allowed=["cluster.local/ns/jobs/sa/batch"], denied_namespaces=()))
        ended = await asyncio.wait_for(reader.read(100), 10)
        assert ended == b""
        with pytest.raises(ConnectionRefusedError):
            await _echo(mesh, 10)
        writer.close()
    try:
        asyncio.run(scenario())
        assert "tunnels no longer allowed were closed" in mesh.log("node-b")
        status, text = mesh.http_get(mesh.node["node-b"], 15020, "/metrics")
        assert re.search(r'meshcore_config_reloads_total\{outcome="refused"\} [1-9]', text)
    finally:
        mesh.write_policy(mesh.policy_text())
        time.sleep(1.5)                                      # let both nodes pick the original back up


def test_sigterm_and_quitquitquit_drain_a_transfer_in_flight(tmp_path):
    mesh = LocalMesh(tmp_path / "drain")
    mesh.start()
    try:
        async def scenario():
            size = 24 << 20
            payload = os.urandom(size)
            reader, writer = await mesh.socks5(mesh.client, "web.shop.svc.cluster.local", 9000)
            digest, got = hashlib.sha256(), 0

            async def send():
                for i in range(0, size, 1 << 16):
                    writer.write(payload[i:i + (1 << 16)])
                    await writer.drain()
                    await asyncio.sleep(0.002)               # ~1 s of transfer, paced
                writer.write_eof()
            sender = asyncio.ensure_future(send())
            while got < (1 << 20):
                chunk = await reader.read(1 << 16)
                digest.update(chunk)
                got += len(chunk)
            mesh.processes["node-a"].terminate()              # SIGTERM mid-transfer
            status, body = await asyncio.to_thread(mesh.http_get, mesh.node["node-b"], 15000, "/quitquitquit",
                                                   "POST")
            assert (status, body) == (200, "shutdown now\n")
            await asyncio.sleep(0.3)
            with pytest.raises(OSError):                     # no longer accepting
                await mesh.socks5(mesh.client, "web.shop.svc.cluster.local", 9000)
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
                got += len(chunk)
            await sender
            return got == size and digest.digest() == hashlib.sha256(payload).digest()
        assert asyncio.run(scenario())
        for name in ("node-a", "node-b"):
            assert mesh.processes[name].wait(10) == 0, mesh.log(name)[-2000:]
    finally:
        mesh.stop()


def test_service_with_a_waypoint_is_sent_to_it_with_the_vip_as_authority(mesh):
    """A service that names a waypoint: node-a tunnels to the waypoint (expecting its
    identity) with the original VIP:port as the CONNECT authority (docs/hbone.md, The
    CONNECT request); the waypoint (`meshcore waypoint`) answers from web through node-b."""
    async def scenario():
        reader, writer = await mesh.socks5(mesh.client, "web-l7.shop.svc.cluster.local", 80)
        writer.write(b"GET / HTTP/1.1\r\nHost: web-l7\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer
    answer = asyncio.run(scenario())
    assert b"hello from web" in answer
    line = wait_for(lambda: access_lines(mesh, "node-a", rf"dst.hbone_addr={re.escape(mesh.vip_l7)}:80"))
    assert line and 'dst.identity="spiffe://cluster.local/ns/shop/sa/waypoint"' in line[-1]
    # the waypoint served the request for the client, and node-b saw the waypoint
    assert wait_for(lambda: re.search(r'request complete.*src.identity="spiffe://cluster.local/ns/shop/sa/client"'
                                      r'.*dst.service="web-l7.shop.svc.cluster.local"', mesh.log("waypoint")))
    assert wait_for(lambda: access_lines(mesh, "node-b", r'src.identity="spiffe://cluster.local/ns/shop/sa/waypoint"'))


def test_inbound_answers_400_and_503_as_hbone_says(mesh):
    """An HBONE client of the test's own (the client workload's certificate from the
    mesh's CA) asks node-b directly: an authority naming another address than the one
    dialed is 400; a port where the workload does not listen is 503."""
    from meshcore import Mesh
    from meshcore.errors import TunnelError
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId

    async def scenario():
        store = CertificateStore(CertificateAuthority.load(mesh.dir / "ca"))
        web = SpiffeId("cluster.local", "shop", "web")
        statuses = []
        async with Mesh(SpiffeId("cluster.local", "shop", "client"), store) as client:
            for address, port in ((mesh.outside, 8080), (mesh.web, 1)):
                try:
                    await client.open_tunnel(address, port, web, via=(mesh.web, 15008))
                    statuses.append(200)
                except TunnelError as exc:
                    statuses.append(exc.status)
            reader, writer = await client.open_tunnel(mesh.web, 9000, web, via=(mesh.web, 15008))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"      # the same connection still serves
            writer.close()
        return statuses
    assert asyncio.run(scenario()) == [400, 503]
    log = mesh.log("node-b")
    assert f"400: authority {mesh.outside}:8080 is not the address the connection was made to ({mesh.web})" in log
    assert re.search(rf"error=\"upstream {re.escape(mesh.web)}:1 unreachable: .*refused", log)


def test_sighup_reloads_and_debug_endpoints_report(mesh):
    import json
    import signal
    holdings = lambda: json.loads(mesh.http_get(mesh.node["node-a"], 15000, "/debug/holdings")[1])  # noqa: E731
    frozen_at_start = holdings()["gc_frozen_objects"]
    asyncio.run(_echo(mesh, 1000))
    os.kill(mesh.processes["node-a"].pid, signal.SIGHUP)
    assert wait_for(lambda: re.search(r"configuration \w+ applied \(SIGHUP\)", mesh.log("node-a")))
    assert wait_for(lambda: holdings()["relayed_connections"] == 0)
    h = holdings()
    assert h["hbone_outbound_connections"] >= 1 and h["certificates"] == 2
    # what start-up loaded is frozen once; a reload freezes nothing more (what it froze,
    # open tunnels included, would never be freed); frozen objects a reload replaced go
    assert 0 < h["gc_frozen_objects"] <= frozen_at_start
    status, tasks = mesh.http_get(mesh.node["node-a"], 15000, "/debug/tasks")
    assert status == 200 and json.loads(tasks)["tasks"] >= 1
    status, profile = mesh.http_get(mesh.node["node-a"], 15000, "/debug/pprof/profile?seconds=0.3")
    lines = profile.splitlines()
    assert status == 200 and lines and all(re.fullmatch(r"\S.* \d+", line) for line in lines)
