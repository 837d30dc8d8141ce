"""A row of the README's security table: half-open TLS / stalled handshakes. A burst of connections that never
start TLS is bounded while it lasts (a cap on concurrent handshakes per listener; the
rest wait in the kernel's backlog) and its memory is given back once it is over. The
server runs in its own process so its RSS is its own."""
import socket
import subprocess
import sys
import time

SERVER = """
import asyncio, sys, uvloop
from meshcore.aio import HboneServer
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
async def main():
    store = CertificateStore(CertificateAuthority.create("cluster.local"))
    server = HboneServer(store.server_context(SpiffeId("cluster.local", "ns", "db")), "cluster.local",
                         handshake_timeout=1.0, max_pending_handshakes=256,
                         max_pending_per_source=1 << 20)    # the listener-wide cap is under test here
    await server.start()
    print(server.address[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_stalled_handshake_burst_is_bounded_and_its_memory_comes_back(tmp_path):
    # run outside the checkout: its meshcore/ folder must not shadow the installed package
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    socks = []
    try:
        port = int(server.stdout.readline())
        time.sleep(0.5)
        base = peak = rss_kib(server.pid)
        for _ in range(1500):                   # never send a ClientHello
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        deadline = time.monotonic() + 10        # 6 rounds of 256 at a 1 s timeout, and a quiet second
        while time.monotonic() < deadline:
            time.sleep(0.2)
            peak = max(peak, rss_kib(server.pid))
        after = rss_kib(server.pid)
        # every stalled socket was closed by the server (reads see EOF or a reset)
        closed = 0
        for s in socks:
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except BlockingIOError:
                pass
        assert closed == len(socks), f"{len(socks) - closed} stalled connections still open"
        # 256 handshakes at ~50 KiB each at most at once (1500 unbounded would be ~75 MB)
        assert peak - base < 40 * 1024, f"peak +{(peak - base) // 1024} MiB"
        assert after - base < 8 * 1024, f"+{(after - base) // 1024} MiB kept after the burst"
    finally:
        for s in socks:
            s.close()
        server.kill()
        server.wait()


def test_one_address_cannot_hold_every_handshake_slot():
    """Stalled connections from one client address are capped per address, so another
    client's handshake goes through at once instead of after the handshake timeout."""
    import asyncio

    from meshcore import Mesh
    from meshcore.aio import HboneServer
    from meshcore.aio.pool import PoolKey
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId

    async def go():
        store = CertificateStore(CertificateAuthority.create("cluster.local"))
        db, web = SpiffeId("cluster.local", "ns", "db"), SpiffeId("cluster.local", "ns", "web")
        server = HboneServer(store.server_context(db), "cluster.local", handshake_timeout=10.0,
                             max_pending_handshakes=32, max_pending_per_source=8)
        await server.start("127.0.0.1", 0)
        stalled = []
        for _ in range(100):                       # never start TLS, from 127.0.0.2
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            s.connect_ex(server.address)
            stalled.append(s)
        await asyncio.sleep(0.5)
        try:
            started = time.monotonic()
            async with Mesh(web, store) as mesh:   # from 127.0.0.1
                conn = await asyncio.wait_for(mesh.pool._connect(PoolKey(web, (db,), server.address)), 5)
                conn.transport.abort()
            assert time.monotonic() - started < 3
            assert server.stats["refused_per_source"] >= 100 - 8 - 5
        finally:
            for s in stalled:
                s.close()
            await server.close()
    asyncio.run(go())
