"""A row of the README's security table: settings / ping / reset floods (CVE-2019-9512/9514/9515) against the
real listener, from a peer that never reads what we answer."""
import asyncio
import hashlib
import os
import resource
import ssl
import threading
import time

from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER, exchange, port_of, relay_setup
from rawtls import RawTlsPeer, ping


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def flood(address, context, outcome: dict, seconds: float) -> None:
    """Paced PINGs, a few per write (under any per-read limit), never reading."""
    peer = RawTlsPeer(address, context, rcvbuf=4096)
    sent, start = 0, time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            peer.send(ping() * 20)
            sent += 20
    except (OSError, ssl.SSLError) as exc:
        outcome["cut_after"] = time.monotonic() - start
        outcome["error"] = repr(exc)
    outcome["sent"] = sent
    peer.close()


def test_paced_ping_flood_from_a_peer_that_never_reads_is_cut_off(run, ca):
    async def scenario():
        async with relay_setup(ca) as (server, echo, mesh):
            honest = await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER, via=server.address)
            baseline = rss_mib()
            outcome: dict = {}
            ctx = CertificateStore(ca).client_context(CLIENT)
            attacker = threading.Thread(target=flood, args=(server.address, ctx, outcome, 30), daemon=True)
            attacker.start()
            # while the flood goes on, the honest tunnel on its own connection keeps flowing
            payload = os.urandom(1 << 20)
            for _ in range(5):
                assert await exchange(*await mesh.open_tunnel("127.0.0.1", port_of(echo), SERVER,
                                                              via=server.address), payload)
            await asyncio.get_running_loop().run_in_executor(None, attacker.join, 35)
            assert "cut_after" in outcome, f"the flood was never cut off: {outcome}"
            assert outcome["cut_after"] < 5, outcome
            assert rss_mib() - baseline < 64, "memory grew with the flood"
            await asyncio.sleep(1.5)              # the close deadline
            assert len(server.connections) == 1   # only the honest client's connection is left
            r, w = honest
            assert await exchange(r, w, b"after") == (5, hashlib.sha256(b"after").hexdigest())
    run(scenario(), timeout=90)
