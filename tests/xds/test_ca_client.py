"""meshcore's client of istiod's CA against a test istiod (tests/support/ca_server.py):
what it asks for, every answer it refuses, the token and roots files read again, and a
node's certificates arriving, rotating and surviving a CA that is down."""
import asyncio
import datetime as dt
import socket

import grpc
import pytest

from ca_server import IstioCa
from istiod_tls import IstiodTls, start_grpc_server
from meshcore.errors import IdentityError
from meshcore.identity import CertificateStore, SpiffeId
from meshcore.identity.spiffe import identity_of
from meshcore.identity.store import Backoff
from meshcore.identity.x509util import same_public_key
from meshcore.node.certificates import LocalCertificates
from meshcore.node.context import ProxyContext, ProxySettings
from meshcore.node.dump import certificates as dump_certificates
from meshcore.xds.ca import IstioCaClient
from meshcore.xds.settings import BearerToken, ControlPlane, RootCertificates

ALICE = SpiffeId("cluster.local", "shop", "alice")
BOB = SpiffeId("cluster.local", "shop", "bob")
NODE = SpiffeId("cluster.local", "istio-system", "ztunnel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def istiod(tmp_path):
    tls = IstiodTls.create(tmp_path / "istiod")
    token = tmp_path / "istio-token"
    token.write_text("istio-token\n")
    return tls, token


def plane_for(tls: IstiodTls, token, port: int) -> ControlPlane:
    return ControlPlane(xds_address=None, ca_address=f"localhost:{port}",
                        ca_roots=RootCertificates(path=str(tls.root_path)),
                        token=BearerToken(path=str(token)), cluster_id="east")


async def serve(tls, ca: IstioCa, port: int = 0):
    return await start_grpc_server(tls, [ca.handler()], port)


def test_a_workload_certificate_is_asked_for_with_impersonation_and_the_own_one_without(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local", own_identity=NODE)
        try:
            alice = await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            own = await client.issue_async(NODE, lifetime=dt.timedelta(0))
            return alice, own, client.bundle
        finally:
            await client.close()
            await server.stop(None)
    alice, own, bundle = run(scenario())
    assert identity_of(alice.certificate) == ALICE and identity_of(own.certificate) == NODE
    assert same_public_key(alice.key, alice.certificate)
    assert alice.chain == (alice.certificate,)                 # the root is not part of the chain presented
    assert list(bundle) == list(tls.ca.roots)
    first, second = ca.seen
    assert (first.impersonated, first.csr_san, first.validity) == (ALICE.uri, [ALICE.uri], 3600)
    assert (second.impersonated, second.csr_san) == (None, [NODE.uri])
    assert first.authorization == "Bearer istio-token" and first.clusterid == "east"
    # istiod's 0 → 24 h
    assert own.not_after - own.not_before == dt.timedelta(hours=24, minutes=2)
    with pytest.raises(IdentityError, match="asynchronously only"):
        IstioCaClient(plane_for(tls, token, 1), "cluster.local").issue(ALICE, lifetime=dt.timedelta(hours=1))


REFUSALS = {
    "wrong-identity": r"issued a certificate for spiffe://cluster.local/ns/shop/sa/someone-else, "
                      r"asked for spiffe://cluster.local/ns/shop/sa/alice",
    "wrong-key": r"public key that is not the one in the request",
    "other-root": r"does not verify up to the root it was sent with",
    "expired": r"not valid now",
    "empty": r"empty certificate chain",
    "garbage": r"entry 0 of the chain for .* is not a PEM certificate",
    "no-root": r"without its root",
}


@pytest.mark.parametrize("answer", sorted(REFUSALS))
def test_a_wrong_answer_is_refused_saying_what_is_wrong(istiod, answer):
    tls, token = istiod
    ca = IstioCa(tls.ca, answer=answer)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            with pytest.raises(IdentityError, match=REFUSALS[answer]) as err:
                await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            assert f"istiod at localhost:{port}" in str(err.value)
            assert client.bundle is None
        finally:
            await client.close()
            await server.stop(None)
    asyncio.run(scenario())


@pytest.mark.parametrize("case, expected", [
    ("token", r"UNAUTHENTICATED: authenticate failure"),
    ("lifetime", r"INVALID_ARGUMENT: requested TTL"),
    ("impersonation", r"PERMISSION_DENIED: impersonation not allowed"),
    ("failing", r"UNAVAILABLE: istiod is restarting"),
    ("unreachable", r"UNAVAILABLE"),
])
def test_grpc_failures_name_the_address_and_the_status(istiod, case, expected):
    tls, token = istiod
    ca = IstioCa(tls.ca, token="another" if case == "token" else "istio-token",
                 allow_impersonation=case != "impersonation")
    if case == "failing":
        ca.fail_next(1)
    lifetime = dt.timedelta(days=100 if case == "lifetime" else 1)
    identity = ALICE

    async def scenario():
        server, port = await serve(tls, ca)
        if case == "unreachable":
            await server.stop(None)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local", timeout=3)
        try:
            with pytest.raises(IdentityError, match=expected) as err:
                await client.issue_async(identity, lifetime=lifetime)
            assert f"localhost:{port}" in str(err.value)
        finally:
            await client.close()
            await server.stop(None)
    asyncio.run(scenario())


def test_a_workload_of_another_trust_domain_gets_its_own_identity(istiod):
    tls, token = istiod
    ca = IstioCa(tls.ca)
    other = SpiffeId("other.td", "shop", "alice")

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local", own_identity=NODE)
        try:
            return await client.issue_async(other, lifetime=dt.timedelta(hours=1))
        finally:
            await client.close()
            await server.stop(None)
    creds = asyncio.run(scenario())
    assert identity_of(creds.certificate) == other
    assert ca.seen[0].impersonated == other.uri


def test_the_token_file_is_read_for_every_call(istiod):
    tls, token = istiod
    ca = IstioCa(tls.ca, token="first")
    token.write_text("first")

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            token.write_text("second")                     # the kubelet rotated the projected token
            ca.token = "second"
            await client.issue_async(BOB, lifetime=dt.timedelta(hours=1))
        finally:
            await client.close()
            await server.stop(None)
    asyncio.run(scenario())
    assert [s.authorization for s in ca.seen] == ["Bearer first", "Bearer second"]


def test_a_new_roots_file_rebuilds_the_channel(istiod, tmp_path):
    tls, token = istiod
    ca = IstioCa(tls.ca)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            # istiod moves to a new root: serving with it, the old roots cannot reach it
            await server.stop(None)
            rotated = IstiodTls.create(tmp_path / "rotated")
            server, _ = await serve(rotated, IstioCa(rotated.ca), port)
            with pytest.raises(IdentityError, match="UNAVAILABLE"):
                await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            tls.root_path.write_bytes(rotated.root_path.read_bytes())    # the configmap update
            creds = await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            return creds, rotated, client.bundle
        finally:
            await client.close()
            await server.stop(None)
    creds, rotated, bundle = asyncio.run(scenario())
    creds.certificate.verify_directly_issued_by(rotated.ca.cert)
    assert list(bundle) == list(rotated.ca.roots)


def test_new_roots_do_not_cancel_a_call_under_way_on_the_previous_channel(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca, delay=0.5)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            first = asyncio.ensure_future(client.issue_async(ALICE, lifetime=dt.timedelta(hours=1)))
            await asyncio.sleep(0.2)                           # on the wire
            tls.root_path.write_bytes(tls.root_path.read_bytes() + b"\n")   # the configmap rewritten
            assert client.channels.stale()
            # this call builds the new channel; the one in flight finishes on the old
            bob = await client.issue_async(BOB, lifetime=dt.timedelta(hours=1))
            alice = await first
            await asyncio.sleep(0.1)
            return alice, bob, dict(client.channels._retiring)
        finally:
            await client.close()
            await server.stop(None)
    alice, bob, retiring = run(scenario())
    assert identity_of(alice.certificate) == ALICE and identity_of(bob.certificate) == BOB
    assert retiring == {}                                      # closed once its call had finished


def test_a_call_ended_by_its_channel_closing_fails_and_does_not_look_like_a_cancellation(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca, delay=1.0)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            call = asyncio.ensure_future(client.issue_async(ALICE, lifetime=dt.timedelta(hours=1)))
            await asyncio.sleep(0.2)
            await client.channels.close()                      # grpc.aio cancels the calls on it
            with pytest.raises(IdentityError, match=rf"localhost:{port}: the call for {ALICE} was cancelled"):
                await call
            # a caller that is itself cancelled still unwinds as cancelled
            call = asyncio.ensure_future(client.issue_async(BOB, lifetime=dt.timedelta(hours=1)))
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await client.close()
            await server.stop(None)
    run(scenario())


def test_a_roots_file_briefly_missing_keeps_the_working_channel(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        try:
            await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            saved = tls.root_path.read_bytes()
            tls.root_path.unlink()                             # the configmap being replaced
            await client.issue_async(BOB, lifetime=dt.timedelta(hours=1))
            error, stale = client.channels.error, client.channels.stale()
            tls.root_path.write_bytes(saved + b"\n")
            assert client.channels.stale()                     # back: used again
            await client.issue_async(ALICE, lifetime=dt.timedelta(hours=1))
            return error, stale, client.channels.error
        finally:
            await client.close()
            await server.stop(None)
    error, stale, after = run(scenario())
    assert "cannot read the root certificates" in error and str(tls.root_path) in error
    assert not stale and after is None


def test_backoff_is_ztunnels():
    class Fixed:
        def __init__(self, f):
            self.f = f

        def uniform(self, a, b):
            return a if self.f == "low" else b
    low = Backoff(Fixed("low"))
    assert [round(low.next(), 3) for _ in range(11)] == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 120.0, 120.0]
    high = Backoff(Fixed("high"))
    assert [round(high.next(), 3) for _ in range(10)][-2:] == [150.0, 150.0]


def local_certificates(client, lifetime=dt.timedelta(hours=24), **options):
    from meshcore.node.metrics import NodeMetrics
    from meshcore.node.netaddr import SourceBinder
    from meshcore.node.telemetry import Telemetry
    from meshcore.state import MeshStore
    certs = CertificateStore(client, lifetime=lifetime)
    ctx = ProxyContext(ProxySettings(node_name="n1", own_identity=ALICE), MeshStore(), certs,
                       Telemetry(NodeMetrics("test")), SourceBinder(False))
    return LocalCertificates(ctx, **options), certs


def local_workload(n: int, sa: str):
    import ipaddress
    from meshcore.state import Workload
    return Workload(uid=f"w{n}", name=f"w{n}", namespace="shop", ips=(ipaddress.ip_address(f"10.9.0.{n}"),),
                    service_account=sa, node="n1")


def test_new_local_workloads_do_not_hold_up_the_store_and_are_fetched_concurrently(istiod, run):
    from meshcore.state import Upsert
    tls, token = istiod
    ca = IstioCa(tls.ca, delay=1.0)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        local, certs = local_certificates(client)
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            await local.start()
            start_took = loop.time() - started
            assert local.missing == {ALICE: "Initializing"}
            started = loop.time()
            await local.ctx.store.apply_async("xds", [Upsert(local_workload(n, f"sa{n}")) for n in range(1, 7)])
            apply_took = loop.time() - started
            assert len(local.missing) == 7                     # readiness waits for them
            while local.missing:
                await asyncio.sleep(0.05)
            return start_took, apply_took, loop.time() - started, certs.known
        finally:
            await local.close()
            await client.close()
            await server.stop(None)
    start_took, apply_took, all_took, known = run(scenario(), timeout=30)
    assert start_took < 0.5 and apply_took < 0.5              # the CA takes 1 s per answer
    assert all_took < 3.0                                      # one after the other: 6 s
    assert len(known) == 7


def test_fetches_are_capped_and_end_with_close(ca, run):
    from meshcore.state import Upsert

    class Slow:
        bundle = None

        def __init__(self):
            self.running = self.most = self.cancelled = 0

        async def issue_async(self, identity, *, lifetime, now):
            self.running += 1
            self.most = max(self.most, self.running)
            try:
                await asyncio.sleep(60 if identity == BOB else 0.2)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.running -= 1
            return ca.issue(identity, lifetime=lifetime, now=now)
    issuer = Slow()

    async def scenario():
        local, certs = local_certificates(issuer, concurrency=2)
        await local.start()
        await local.ctx.store.apply_async("xds", [Upsert(local_workload(n, f"sa{n}")) for n in range(1, 6)]
                                          + [Upsert(local_workload(9, "bob"))])
        while len(local.missing) > 1:
            await asyncio.sleep(0.02)
        await local.close()
        return local.missing
    missing = run(scenario(), timeout=30)
    assert issuer.most == 2
    assert set(missing) == {BOB} and issuer.cancelled == 1 and issuer.running == 0


def test_an_identity_that_never_got_a_certificate_is_forgotten_with_its_workload(istiod, run):
    from meshcore.state import Kind, Remove, Upsert
    tls, token = istiod
    ca = IstioCa(tls.ca)
    ca.fail_next(10_000)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        local, certs = local_certificates(client)
        try:
            await local.start()
            await local.ctx.store.apply_async("xds", [Upsert(local_workload(1, "bob"))])
            while BOB not in certs._failures:
                await asyncio.sleep(0.02)
            await local.ctx.store.apply_async("xds", [Remove(Kind.WORKLOAD, "w1")])
            asked = sum(s.impersonated == BOB.uri for s in ca.seen)
            await asyncio.sleep(2.0)                           # retries for ALICE go on meanwhile
            return certs.known, asked, sum(s.impersonated == BOB.uri for s in ca.seen), local.missing
        finally:
            await local.close()
            await client.close()
            await server.stop(None)
    known, asked, asked_later, missing = run(scenario(), timeout=30)
    assert known == {ALICE} and set(missing) == {ALICE}
    assert asked_later == asked


def test_a_ca_down_at_start_is_retried_with_backoff_and_readiness_follows(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca)
    port = free_port()

    async def scenario():
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local", timeout=3)
        local, certs = local_certificates(client)
        server = None
        try:
            await local.start()
            assert local.missing == {ALICE: "Initializing"}       # start does not wait for the CA
            while "UNAVAILABLE" not in local.missing[ALICE]:
                await asyncio.sleep(0.02)
            assert dump_certificates(certs, [ALICE])[0]["state"].startswith("Unavailable: istiod's CA at")
            await asyncio.sleep(1.0)
            server, _ = await serve(tls, ca, port)
            started = asyncio.get_running_loop().time()
            while local.missing:
                await asyncio.sleep(0.05)
            waited = asyncio.get_running_loop().time() - started
            dumped = dump_certificates(certs, [ALICE])[0]
            return waited, dumped, certs._failures
        finally:
            await local.close()
            await client.close()
            if server is not None:
                await server.stop(None)
    waited, dumped, failures = run(scenario(), timeout=30)
    # retries at ~0.5, 1.5, 3.5 s from the start: the CA, up after 1 s, is reached by the third
    assert waited < 4.0
    assert dumped["state"] == "Available" and dumped["certChain"][0]["validFrom"] and dumped["rootCerts"]
    assert failures == {}
    assert len(ca.seen) >= 1


def test_rotation_at_half_life_keeps_old_connections_and_a_failed_one_keeps_the_old_certificate(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        local, certs = local_certificates(client, lifetime=dt.timedelta(seconds=4))
        # a peer of the same mesh (certificate from the same root, issued locally)
        peer_ctx = CertificateStore(tls.ca).client_context(BOB)
        seen_serials = []

        async def on_connection(reader, writer):
            while data := await reader.read(100):
                writer.write(data)
                await writer.drain()
            writer.close()
        try:
            await local.start()
            await local.settled()
            first = certs.current(ALICE)
            srv = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=certs.server_context(ALICE))
            tls_port = srv.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=peer_ctx, server_hostname="")
            seen_serials.append(writer.get_extra_info("ssl_object").getpeercert(True))
            # half-life of 4 s: renewed about 2 s after it was asked for, by the loop itself
            while certs.current(ALICE) is first:
                await asyncio.sleep(0.05)
            second = certs.current(ALICE)
            writer.write(b"still up")
            await writer.drain()
            assert await reader.readexactly(8) == b"still up"
            srv2 = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=certs.server_context(ALICE))
            r2, w2 = await asyncio.open_connection("127.0.0.1", srv2.sockets[0].getsockname()[1], ssl=peer_ctx,
                                                 server_hostname="")
            seen_serials.append(w2.get_extra_info("ssl_object").getpeercert(True))
            # the CA fails: the renewal at the next half-life fails, the current certificate stays
            ca.fail_next(1000)
            while not certs._failures:
                await asyncio.sleep(0.05)
            assert certs.current(ALICE) is second and dump_certificates(certs, [ALICE])[0]["state"] == "Available"
            assert not local.missing
            for w in (writer, w2):
                w.close()
            srv.close()
            srv2.close()
            return first, second, seen_serials
        finally:
            await local.close()
            await client.close()
            await server.stop(None)
    first, second, seen = run(scenario(), timeout=30)
    from cryptography import x509
    assert x509.load_der_x509_certificate(seen[0]).serial_number == first.certificate.serial_number
    assert x509.load_der_x509_certificate(seen[1]).serial_number == second.certificate.serial_number
    assert first.certificate.serial_number != second.certificate.serial_number


def test_the_dump_shows_a_certificate_being_fetched_as_initializing(istiod, run):
    tls, token = istiod
    ca = IstioCa(tls.ca, delay=0.5)

    async def scenario():
        server, port = await serve(tls, ca)
        client = IstioCaClient(plane_for(tls, token, port), "cluster.local")
        certs = CertificateStore(client)
        try:
            fetching = asyncio.ensure_future(certs.get(ALICE))
            await asyncio.sleep(0.1)
            during = dump_certificates(certs, [ALICE])[0]
            await fetching
            after = dump_certificates(certs, [ALICE])[0]
            return during, after
        finally:
            await client.close()
            await server.stop(None)
    during, after = run(scenario())
    assert during == {"identity": ALICE.uri, "state": "Initializing", "certChain": [], "rootCerts": []}
    assert after["state"] == "Available" and len(after["certChain"]) == 1 and len(after["rootCerts"]) == 1
    leaf = after["certChain"][0]
    assert set(leaf) == {"pem", "serialNumber", "validFrom", "expirationTime"}
