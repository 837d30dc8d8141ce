"""Every identity and TLS refusal, with meshcore's TLS engine on the refusing side:
dial() refusing servers, HboneServer refusing clients (meshcore's own, or Python's
ssl for what meshcore never sends: no certificate, TLS 1.2 only, no h2). The reasons
are those tests/identity checks on Python's ssl; a broken connection gives its socket
back."""
import asyncio
import datetime as dt
import os
import socket
import ssl
import threading

import pytest
from cryptography import x509

from meshcore.aio import HboneServer, dial
from meshcore.aio.tls import start_tls
from meshcore.errors import IdentityError
from meshcore.identity import CertificateAuthority, SpiffeId, TrustBundle, client_context, server_context
from meshcore.identity.tls import refusals

from helpers import CLIENT, SERVER, cert_with_sans, wait_until

OLD = dt.timedelta(days=-3)
FUTURE = dt.timedelta(days=2)


@pytest.fixture(scope="module")
def other_ca():
    return CertificateAuthority.create("cluster.local")


def issued(ca, identity, shift=None):
    return ca.issue(identity) if shift is None else ca.issue(identity, now=dt.datetime.now(dt.timezone.utc) + shift)


async def dial_refusal(server_ctx, client_ctx, expected=(SERVER,)) -> IdentityError:
    async with HboneServer(server_ctx, "cluster.local", handshake_timeout=5) as server:
        await server.start()
        with pytest.raises(IdentityError) as err:
            conn = await dial(*server.address, client_ctx, expected, handshake_timeout=5)
            conn.transport.abort()
        return err.value


@pytest.mark.parametrize("case,reason", [
    ("another-ca", "untrusted_chain"),
    ("expired", "expired"),
    ("not-yet-valid", "not_yet_valid"),
    ("unexpected", "unexpected_identity"),
    ("alpn", "alpn"),
])
def test_dial_refuses_the_server(run, ca, other_ca, case, reason):
    bundle = TrustBundle(ca.roots)
    server_creds = {"another-ca": lambda: other_ca.issue(SERVER), "expired": lambda: issued(ca, SERVER, OLD),
                    "not-yet-valid": lambda: issued(ca, SERVER, FUTURE)}.get(case, lambda: ca.issue(SERVER))()
    server_ctx = server_context(server_creds, TrustBundle(ca.roots + other_ca.roots))
    if case == "alpn":
        server_ctx.set_alpn_protocols(["http/1.1"])     # the engine's context follows the change
    expected = (SpiffeId("cluster.local", "shop", "payments"),) if case == "unexpected" else (SERVER,)
    before = refusals[reason]
    err = run(dial_refusal(server_ctx, client_context(ca.issue(CLIENT), bundle), expected))
    assert err.reason == reason, err
    assert refusals[reason] > before


async def server_refusal(server_ctx, client, reason: str) -> dict:
    """Runs `client(address)` against an HboneServer; waits for the server to count
    the refusal by `reason`."""
    before = refusals[reason]
    async with HboneServer(server_ctx, "cluster.local", handshake_timeout=5) as server:
        await server.start()
        await client(server.address)
        await wait_until(lambda: refusals[reason] > before, 5)
        return dict(server.stats)


def engine_client(ctx):
    async def connect(address):
        try:
            conn = await dial(*address, ctx, [SERVER], handshake_timeout=2)
        except (IdentityError, ConnectionError, OSError):
            return
        conn.transport.abort()
    return connect


def python_client(ctx):
    def connect(address):
        with socket.create_connection(address, timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname=None) as s:
                    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    s.recv(100)
            except (ssl.SSLError, OSError):
                pass
    return lambda address: asyncio.to_thread(connect, address)


@pytest.mark.parametrize("case,reason", [
    ("expired", "expired"),
    ("another-ca", "untrusted_chain"),
    ("trust-domain", "trust_domain"),
    ("no-certificate", "no_client_certificate"),
    ("tls12", "tls_version"),
    ("alpn", "alpn"),
])
def test_the_server_refuses_the_client(run, ca, other_ca, case, reason):
    bundle = TrustBundle(ca.roots)
    server_ctx = server_context(ca.issue(SERVER), bundle)
    if case == "expired":
        client = engine_client(client_context(issued(ca, CLIENT, OLD), bundle))
    elif case == "another-ca":
        client = engine_client(client_context(other_ca.issue(CLIENT), bundle))
    elif case == "trust-domain":
        foreign = CertificateAuthority.create("other.local")
        server_ctx = server_context(ca.issue(SERVER), TrustBundle(ca.roots + foreign.roots))
        client = engine_client(client_context(foreign.issue(SpiffeId("other.local", "shop", "web")),
                                              TrustBundle(ca.roots + foreign.roots)))
    elif case == "no-certificate":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=bundle.pem().decode())
        ctx.set_alpn_protocols(["h2"])
        client = python_client(ctx)
    elif case == "tls12":
        ctx = client_context(ca.issue(CLIENT), bundle, allow_tls12=True)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        client = python_client(ctx)
    else:
        ctx = client_context(ca.issue(CLIENT), bundle)
        ctx.set_alpn_protocols(["http/1.1"])
        client = python_client(ctx)
    stats = run(server_refusal(server_ctx, client, reason))
    assert stats["handshake_failed"] >= 1 and stats["accepted"] == 0, stats


@pytest.mark.parametrize("sans", [
    None,
    [x509.DNSName("frontend.shop.svc")],
    [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/frontend")],
    [x509.UniformResourceIdentifier("spiffe://cluster.local/namespace/shop/sa/frontend")],
], ids=["no-san", "dns-only", "wrong-segment-count", "not-ns-sa"])
def test_the_server_refuses_a_client_without_a_valid_spiffe_id(run, ca, sans):
    bundle = TrustBundle(ca.roots)
    client = engine_client(client_context(cert_with_sans(ca, sans), bundle))
    stats = run(server_refusal(server_context(ca.issue(SERVER), bundle), client, "no_spiffe_id"))
    assert stats["handshake_failed"] >= 1 and stats["accepted"] == 0, stats


def test_tls12_when_both_opt_in(run, ca):
    bundle = TrustBundle(ca.roots)
    server_ctx = server_context(ca.issue(SERVER), bundle, allow_tls12=True)
    client_ctx = client_context(ca.issue(CLIENT), bundle, allow_tls12=True)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def scenario():
        async with HboneServer(server_ctx, "cluster.local") as server:
            await server.start()
            conn = await dial(*server.address, client_ctx, [SERVER])
            tls = conn.transport.get_extra_info("ssl_object")
            try:
                return conn.peer_identity, tls.version(), tls.cipher()[0]
            finally:
                conn.transport.abort()
    identity, version, cipher = run(scenario())
    assert identity == SERVER and version == "TLSv1.2" and "GCM" in cipher


def test_a_plain_ssl_context_is_refused_loudly(run, ca):
    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            with pytest.raises(TypeError, match="meshcore.identity"):
                await dial(*listener.getsockname(), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), [SERVER])
        finally:
            listener.close()
    run(scenario())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("garbage", [b"\x17\x03\x03\x00\x20" + bytes(32), b"GET / HTTP/1.1\r\n\r\n"],
                         ids=["bad-record", "plaintext"])
def test_garbage_after_the_handshake_ends_the_connection(run, ca, garbage):
    bundle = TrustBundle(ca.roots)
    listener = socket.create_server(("127.0.0.1", 0))
    server_ctx = server_context(ca.issue(SERVER), bundle)
    def peer():
        raw, _ = listener.accept()
        with server_ctx.wrap_socket(raw, server_side=True) as s:
            socket.socket.send(s, garbage)          # past TLS: raw bytes on the wire
    thread = threading.Thread(target=peer, daemon=True)
    thread.start()

    async def scenario():
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class Recorder(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)
        before = open_fds()
        sock = socket.create_connection(listener.getsockname())
        sock.setblocking(False)
        await start_tls(loop, sock, client_context(ca.issue(CLIENT), bundle), Recorder, server_side=False, timeout=5)
        exc = await asyncio.wait_for(lost, 5)
        await asyncio.to_thread(thread.join, 5)      # the peer's socket is closed too
        return exc, open_fds() - before
    try:
        exc, fds = run(scenario())
    finally:
        thread.join(5)
        listener.close()
    assert isinstance(exc, ssl.SSLError) and exc.reason, exc
    assert fds == 0
