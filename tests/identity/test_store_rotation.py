"""Certificate store: on-demand issuance, rotation without dropping connections,
CA rotation with an overlapping bundle, file credentials reloaded on change."""
import asyncio
import datetime as dt

import pytest
from cryptography import x509

from meshcore.errors import IdentityError
from meshcore.identity import (CertificateAuthority, CertificateStore, FileCredentials, SpiffeId,
                               TrustBundle, verify_client, verify_server)
from meshcore.identity.x509util import certs_pem, key_pem

from tlspeers import handshake


class Clock:
    def __init__(self):
        self.now = dt.datetime.now(dt.timezone.utc)

    def __call__(self):
        return self.now


def test_issues_on_demand_and_caches(ca, alice, bob):
    store = CertificateStore(ca)
    a1 = store.credentials(alice)
    assert store.credentials(alice) is a1
    assert store.credentials(bob).identity == bob
    assert store.identities == sorted([alice, bob])
    assert store.server_context(alice) is store.server_context(alice)


def test_rotation_at_half_lifetime(ca, alice):
    clock = Clock()
    store = CertificateStore(ca, lifetime=dt.timedelta(hours=2), clock=clock)
    first = store.credentials(alice)
    clock.now += dt.timedelta(minutes=50)
    assert store.rotate_due() == []
    clock.now += dt.timedelta(minutes=15)          # past 1 h of a 2 h lifetime
    assert store.rotate_due() == [alice]
    assert store.credentials(alice).certificate.serial_number != first.certificate.serial_number
    assert store.next_rotation() > clock.now


def test_rotation_keeps_established_connections(ca, bundle, alice, bob):
    """Rotate the server's certificate while a connection is open: it keeps carrying
    data, and a new connection is served the new certificate."""
    async def scenario():
        clock = Clock()
        clock.now -= dt.timedelta(minutes=70)   # so the rotated certificate is valid in real time
        store = CertificateStore(ca, lifetime=dt.timedelta(hours=2), clock=clock)
        client_store = CertificateStore(ca)

        async def serve(reader, writer):
            await writer.start_tls(store.server_context(bob))      # context chosen per connection
            verify_client(writer.get_extra_info("ssl_object"), "cluster.local")
            while data := await reader.read(100):
                writer.write(data.upper())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def connect():
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_store.client_context(alice),
                                                 server_hostname="")
            verify_server(w.get_extra_info("ssl_object"), [bob])
            der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
            return r, w, x509.load_der_x509_certificate(der).serial_number

        r1, w1, serial1 = await connect()
        w1.write(b"before")
        assert await r1.read(100) == b"BEFORE"
        clock.now += dt.timedelta(hours=1, minutes=1)
        assert store.rotate_due() == [bob]
        r2, w2, serial2 = await connect()
        assert serial2 != serial1
        w1.write(b"after rotation")                     # the old connection still works
        assert await r1.read(100) == b"AFTER ROTATION"
        w2.write(b"new")
        assert await r2.read(100) == b"NEW"
        for w in (w1, w2):
            w.close()
        server.close()

    asyncio.run(scenario())


def test_ca_rotation_with_overlapping_bundle(ca, alice, bob):
    """Old and new roots in every bundle: workloads on either CA talk to each other."""
    new_ca = CertificateAuthority.create("cluster.local")
    both = TrustBundle(ca.roots).merged(TrustBundle(new_ca.roots))
    assert len(both) == 2
    old_store = CertificateStore(ca, both)
    new_store = CertificateStore(new_ca, both)
    for server_store, client_store in ((old_store, new_store), (new_store, old_store)):
        server_saw, client_saw = asyncio.run(handshake(
            server_store.server_context(bob), client_store.client_context(alice), expected=[bob]))
        assert (server_saw, client_saw) == (alice, bob)
    # once the old root is dropped, old certificates are refused
    new_only = CertificateStore(new_ca, TrustBundle(new_ca.roots))
    server_saw, _ = asyncio.run(handshake(new_only.server_context(bob), old_store.client_context(alice),
                                          expected=[bob]))
    assert isinstance(server_saw, IdentityError) and server_saw.reason == "untrusted_chain"


def test_set_trust_bundle_rebuilds_contexts(ca, alice):
    store = CertificateStore(ca)
    ctx = store.server_context(alice)
    store.set_trust_bundle(TrustBundle(ca.roots).merged(TrustBundle(CertificateAuthority.create("cluster.local").roots)))
    assert store.server_context(alice) is not ctx


def write_spire_layout(directory, creds, roots):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "svid.pem").write_bytes(creds.chain_pem())
    (directory / "svid_key.pem").write_bytes(creds.key_pem())
    (directory / "svid_bundle.pem").write_bytes(certs_pem(roots))


@pytest.mark.parametrize("layout", ["cert-manager", "spire", "istio"])
def test_file_credentials_layouts(ca, alice, tmp_path, layout):
    from meshcore.identity.store import FILE_LAYOUTS
    creds = ca.issue(alice)
    cert_name, key_name, bundle_name = FILE_LAYOUTS[layout]
    (tmp_path / cert_name).write_bytes(creds.chain_pem())
    (tmp_path / key_name).write_bytes(creds.key_pem())
    (tmp_path / bundle_name).write_bytes(certs_pem(ca.roots))
    source = FileCredentials.from_directory(tmp_path)
    assert source.credentials.identity == alice
    assert source.bundle.roots == ca.roots


def test_file_credentials_reload_on_change_and_keep_previous_on_error(ca, alice, bob, tmp_path):
    write_spire_layout(tmp_path, ca.issue(alice), ca.roots)
    source = FileCredentials.from_directory(tmp_path)
    store = CertificateStore(source)
    first = store.credentials(alice)
    with pytest.raises(IdentityError, match="not spiffe://cluster.local/ns/shop/sa/checkout"):
        store.credentials(bob)
    assert store.rotate_due() == []                          # nothing changed
    write_spire_layout(tmp_path, ca.issue(alice), ca.roots)   # the agent writes a renewal
    assert store.rotate_due() == [alice]
    second = store.credentials(alice)
    assert second.certificate.serial_number != first.certificate.serial_number
    # a broken write (key of another certificate) is refused; the previous stays in use
    (tmp_path / "svid_key.pem").write_bytes(ca.issue(alice).key_pem())
    with pytest.raises(IdentityError, match="does not match"):
        store.rotate_due()
    assert store.credentials(alice) is second


def test_from_directory_names_what_it_looked_for(tmp_path):
    with pytest.raises(IdentityError, match="tls.crt.*svid.pem"):
        FileCredentials.from_directory(tmp_path)


def test_external_ca_intermediate_issues_chains(ca, alice, tmp_path):
    """An intermediate CA from files (cert-chain.pem up to the root) issues leaf +
    intermediate chains that verify against the root bundle."""
    import datetime as dt
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    from meshcore.identity.ca import generate_key
    ikey = generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    inter = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                                      x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
             .issuer_name(ca.cert.subject).public_key(ikey.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
             .not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
             .sign(ca.key, hashes.SHA256()))
    (tmp_path / "ca-cert.pem").write_bytes(certs_pem([inter]))
    (tmp_path / "ca-key.pem").write_bytes(key_pem(ikey))
    (tmp_path / "cert-chain.pem").write_bytes(certs_pem([inter, ca.cert]))
    (tmp_path / "root-cert.pem").write_bytes(certs_pem([ca.cert]))
    sub = CertificateAuthority.load(tmp_path)
    creds = sub.issue(alice)
    assert [c.subject for c in creds.chain] == [x509.Name([]), inter.subject]
    bob = SpiffeId("cluster.local", "shop", "checkout")
    server_saw, client_saw = asyncio.run(handshake(
        CertificateStore(ca).server_context(bob), CertificateStore(sub).client_context(alice), expected=[bob]))
    assert (server_saw, client_saw) == (alice, bob)


class RemoteCa:
    """An issuer that answers asynchronously, as a CA reached over the network does."""

    def __init__(self, ca, delay=0.05):
        self.ca, self.delay, self.requests = ca, delay, 0
        self.bundle = TrustBundle(ca.roots)

    async def issue_async(self, identity, *, lifetime, now):
        self.requests += 1
        await asyncio.sleep(self.delay)
        return self.ca.issue(identity, lifetime=lifetime, now=now)


def test_async_get_shares_one_request_and_a_caller_leaving_does_not_cancel_it(ca, alice):
    remote = RemoteCa(ca)
    store = CertificateStore(remote)

    async def scenario():
        leaving = asyncio.ensure_future(store.get(alice))
        staying = [asyncio.ensure_future(store.get(alice)) for _ in range(4)]
        await asyncio.sleep(0.01)
        leaving.cancel()
        got = await asyncio.gather(*staying)
        ctx = await store.server_context_async(alice)
        return got, ctx
    got, ctx = asyncio.run(scenario())
    assert remote.requests == 1
    assert all(c is got[0] for c in got) and got[0].identity == alice
    assert store.credentials(alice) is got[0] and ctx is store.server_context(alice)


class Failing(RemoteCa):
    """A remote CA that answers until `failure` is set, then raises it."""

    def __init__(self, ca, delay=0.0):
        super().__init__(ca, delay)
        self.failure = None

    async def issue_async(self, identity, *, lifetime, now):
        if self.failure is not None:
            self.requests += 1
            raise self.failure
        return await super().issue_async(identity, lifetime=lifetime, now=now)


@pytest.mark.parametrize("failure", [RuntimeError("a bug in the issuer"), asyncio.CancelledError()],
                         ids=["bug", "stray-cancellation"])
def test_any_failure_of_the_issuer_is_recorded_and_retried_never_raised_as_is(ca, alice, failure):
    clock = Clock()
    remote = Failing(ca)
    remote.failure = failure
    store = CertificateStore(remote, clock=clock)

    async def scenario():
        with pytest.raises(IdentityError) as err:
            await store.get(alice)
        first_retry = store.next_retry()
        clock.now = first_retry
        rotated = await store.rotate_due_async()           # the retry fails too: recorded, not raised
        return err.value, first_retry, rotated
    error, first_retry, rotated = asyncio.run(scenario())
    assert rotated == [] and remote.requests == 2
    assert store.state(alice).startswith("Unavailable: ") and store.next_retry() > first_retry > clock.now - \
        dt.timedelta(seconds=10)
    if isinstance(failure, RuntimeError):
        assert "RuntimeError: a bug in the issuer" in str(error)


def test_a_certificate_that_expired_while_the_ca_was_down_is_retried_on_the_backoff(ca, alice):
    clock = Clock()
    remote = Failing(ca)
    store = CertificateStore(remote, lifetime=dt.timedelta(hours=1), clock=clock)

    async def scenario():
        creds = await store.get(alice)
        remote.failure = IdentityError("istiod is down")
        clock.now = creds.not_after + dt.timedelta(minutes=5)     # expired meanwhile
        await store.rotate_due_async()
        asked = remote.requests
        again = await store.rotate_due_async()           # right away: nothing is due
        return asked, again
    asked, again = asyncio.run(scenario())
    assert again == [] and remote.requests == asked
    assert store.next_retry() > clock.now and store.next_attempt() > clock.now


def test_forget_cancels_the_request_under_way_and_drops_a_failure_awaiting_its_retry(ca, alice, bob):
    remote = Failing(ca, delay=5)
    store = CertificateStore(remote)

    async def scenario():
        asking = asyncio.ensure_future(store.get(alice))
        await asyncio.sleep(0.05)
        assert store.known == {alice}                    # under way
        store.forget(alice)
        with pytest.raises(IdentityError, match="dropped"):
            await asking
        remote.failure = IdentityError("istiod is down")
        with pytest.raises(IdentityError):
            await store.get(bob)
        assert store.known == {bob}                      # a failure awaiting its retry
        store.forget(bob)
        return store.known
    assert asyncio.run(scenario()) == set()
    assert store.next_attempt() is None and store.identities == []


class Stubborn(RemoteCa):
    """Answers even when cancelled (a request already sent, an issuer that shields it),
    keeping the roots of what it issued, as the Istio CA client does."""

    def __init__(self, ca, delay=0.2):
        super().__init__(ca, delay)
        self.bundle, self.held = None, set()

    async def issue_async(self, identity, *, lifetime, now):
        self.requests += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            await asyncio.sleep(self.delay)
        self.held.add(identity)
        self.bundle = TrustBundle(self.ca.roots)
        return self.ca.issue(identity, lifetime=lifetime, now=now)

    def forget(self, identity):
        self.held.discard(identity)


def test_an_answer_arriving_after_its_identity_was_forgotten_is_discarded(ca, alice):
    remote = Stubborn(ca)
    store = CertificateStore(remote)

    async def scenario():
        asking = asyncio.ensure_future(store.get(alice))
        await asyncio.sleep(0.05)
        store.forget(alice)
        with pytest.raises(IdentityError):
            await asking
        await asyncio.sleep(0.4)                         # the answer has arrived
    asyncio.run(scenario())
    assert store.known == set() and store.bundle is None and remote.held == set()


def test_close_cancels_and_awaits_the_requests_under_way(ca, alice):
    remote = Failing(ca, delay=5)
    store = CertificateStore(remote)

    async def scenario():
        asking = asyncio.ensure_future(store.get(alice))
        await asyncio.sleep(0.05)
        pending = store._pending[alice]
        await store.close()
        assert pending.done()
        with pytest.raises(IdentityError):
            await asking
    asyncio.run(scenario())
    assert store.known == set()


class PerIdentityRoots(RemoteCa):
    """Each identity's certificate comes with its own CA's roots; the bundle is the
    union of what is held."""

    def __init__(self, cas):
        super().__init__(next(iter(cas.values())), delay=0)
        self.cas, self.roots, self.bundle = cas, {}, None

    async def issue_async(self, identity, *, lifetime, now):
        ca = self.cas[identity]
        self.roots[identity] = ca.roots
        self.bundle = TrustBundle([r for rs in self.roots.values() for r in rs])
        return ca.issue(identity, lifetime=lifetime, now=now)

    def forget(self, identity):
        if self.roots.pop(identity, None) is not None and self.roots:
            self.bundle = TrustBundle([r for rs in self.roots.values() for r in rs])


def test_the_bundle_follows_the_issuers_when_an_identity_is_forgotten(ca, other_ca, alice, bob):
    remote = PerIdentityRoots({alice: ca, bob: other_ca})
    store = CertificateStore(remote)

    async def scenario():
        await store.get(alice)
        await store.get(bob)
        both = list(store.bundle)
        store.forget(alice)
        return both
    both = asyncio.run(scenario())
    assert both == [*ca.roots, *other_ca.roots]
    assert list(store.bundle) == list(other_ca.roots)
