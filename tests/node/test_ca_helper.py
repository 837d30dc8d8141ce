"""The node's CA in a helper process (meshcore/identity/helper.py): what it signs is what
the CA in this process signs, it starts again after its idle exit or when killed, and
a CA that cannot serve is refused at construction with the CA's own words."""
import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509

from meshcore.errors import IdentityError
from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId, identity_of
from meshcore.identity.helper import CaHelper
from meshcore.identity.tls import client_context, server_context, verify_client, verify_server

WEB = SpiffeId("cluster.local", "shop", "web")
API = SpiffeId("cluster.local", "shop", "api")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    CertificateAuthority.create("cluster.local").save(d)
    return d


def test_it_signs_what_the_ca_signs_and_the_contexts_hand_shake(ca_dir):
    helper = CaHelper(ca_dir=str(ca_dir), state_dir=None, trust_domain="ignored")
    try:
        assert helper.trust_domain == "cluster.local"
        ca = CertificateAuthority.load(ca_dir)
        assert helper.bundle.der == tuple(r.public_bytes(ssl_der()) for r in ca.roots)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        creds = helper.issue(WEB, lifetime=dt.timedelta(hours=2), now=now)
        leaf = x509.load_pem_x509_certificate(creds.chain_pem())
        assert identity_of(leaf) == WEB and creds.identity == WEB
        assert creds.not_after == leaf.not_valid_after_utc == now + dt.timedelta(hours=2)
        assert creds.not_before == leaf.not_valid_before_utc
        assert creds.certificate == leaf and creds.key.public_key() == leaf.public_key()
        expected = ca.issue(WEB, lifetime=dt.timedelta(hours=2), now=now).certificate
        assert [e.oid for e in leaf.extensions] == [e.oid for e in expected.extensions]
        assert [e.critical for e in leaf.extensions] == [e.critical for e in expected.extensions]
        assert leaf.issuer == expected.issuer
        assert handshake(server_context(creds, helper.bundle), client_context(helper.issue(API), helper.bundle))
        with pytest.raises(IdentityError, match="cannot issue for spiffe://other.td"):
            helper.issue(SpiffeId("other.td", "shop", "web"))
    finally:
        asyncio.run(helper.close())
    assert not helper.running


def ssl_der():
    from cryptography.hazmat.primitives.serialization import Encoding
    return Encoding.DER


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    server_in, server_out, client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    client = client_ctx.wrap_bio(client_in, client_out, server_side=False)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        try:
            client.do_handshake()
            server.do_handshake()
        except ssl.SSLWantReadError:
            continue
        # the identities as the proxies check them: from the verified peer certificates
        return verify_server(client, [WEB]) == WEB and verify_client(server, "cluster.local") == API
    return False


def test_it_exits_when_idle_and_starts_again_for_the_next_request(ca_dir):
    async def scenario():
        helper = CaHelper(ca_dir=str(ca_dir), state_dir=None, trust_domain="", idle_exit=0.2)
        try:
            store = CertificateStore(helper)
            assert store.remote and store.bundle is helper.bundle
            await store.get(WEB)
            assert helper.running
            await asyncio.sleep(0.6)
            assert not helper.running                      # exited, and reaped
            await store.get(API)                           # started again
            assert helper.starts == 2 and helper.running
            helper._proc.kill()                            # ended under our feet: started again
            helper._proc.wait()
            creds = await helper.issue_async(WEB)
            assert creds.identity == WEB and helper.starts == 3
        finally:
            await helper.close()
        assert not helper.running
    asyncio.run(scenario())


def test_a_ca_that_cannot_serve_is_refused_with_its_reason(tmp_path):
    with pytest.raises(IdentityError, match="ca-cert.pem: missing"):
        CaHelper(ca_dir=str(tmp_path), state_dir=None, trust_domain="cluster.local")


def test_the_built_in_ca_is_created_in_the_state_directory(tmp_path):
    helper = CaHelper(ca_dir=None, state_dir=tmp_path / "state", trust_domain="example.org")
    try:
        assert helper.trust_domain == "example.org"
        assert (tmp_path / "state" / "ca" / "ca-key.pem").exists()
        assert helper.issue(SpiffeId("example.org", "a", "b")).identity.trust_domain == "example.org"
    finally:
        asyncio.run(helper.close())
    again = CaHelper(ca_dir=None, state_dir=tmp_path / "state", trust_domain="ignored.once.created")
    try:
        assert again.trust_domain == "example.org" and again.bundle.der == helper.bundle.der
    finally:
        asyncio.run(again.close())
