"""Workload certificates from istiod's CA (`IstioCertificateService/CreateCertificate`),
as ztunnel asks for them, as the issuer of a `CertificateStore`.

A node proxy asks for the certificates of the workloads on its node: every request but
the one for the proxy's own identity carries `ImpersonatedIdentity`, which istiod
honours only for trusted node accounts and for identities of pods on the caller's node.
istiod writes the identity into the certificate itself, whatever the CSR says, so every
answer is checked before it is used: the leaf must carry exactly the identity asked
for, hold our key, chain up to the root istiod sent last, and be valid now.

The roots workloads verify their peers with are the ones istiod sends with each
certificate (the last entry of the chain, possibly several roots concatenated during a
root rotation), as in ztunnel; `bundle` is the union of the roots that came with the
certificates currently held.
"""
from __future__ import annotations

import asyncio
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from google.protobuf import struct_pb2

from meshcore.errors import ConfigError, IdentityError
from meshcore.identity.ca import CLOCK_SKEW, DEFAULT_WORKLOAD_LIFETIME, Credentials, generate_key
from meshcore.identity.spiffe import SpiffeId, identity_of
from meshcore.identity.store import TrustBundle
from meshcore.identity.x509util import same_public_key, utcnow
from meshcore.xds.channel import ChannelSource, grpc
from meshcore.xds.proto import ca_pb2
from meshcore.xds.settings import ControlPlane

CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
CALL_TIMEOUT = 10.0          # seconds; a CA that does not answer is retried with backoff


def certificate_request(identity: SpiffeId, key) -> str:
    """The CSR istiod expects: empty subject, one critical URI SAN, SHA-256."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                          critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class IstioCaClient:
    """An asynchronous issuer backed by istiod's CA at `plane.ca_address`."""

    def __init__(self, plane: ControlPlane, trust_domain: str, *, own_identity: SpiffeId | None = None,
                 timeout: float = CALL_TIMEOUT):
        if plane.ca_address is None:
            raise ConfigError("no CA address (CA_ADDRESS / XDS_ADDRESS unset, or FAKE_CA=true)",
                              source="environment")
        self.plane, self.trust_domain, self.own_identity, self.timeout = plane, trust_domain, own_identity, timeout
        self.address = plane.ca_address
        self.channels = ChannelSource(plane.ca_address, plane.ca_roots)
        self._roots: dict[SpiffeId, tuple[x509.Certificate, ...]] = {}
        self.bundle: TrustBundle | None = None
        self.requests = 0

    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
              now: dt.datetime | None = None) -> Credentials:
        raise IdentityError(f"istiod's CA at {self.address} is reached asynchronously only: "
                            f"use issue_async (CertificateStore.get / rotate_due_async), not issue")

    async def issue_async(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
                          now: dt.datetime | None = None) -> Credentials:
        # every workload asks for its own identity, whatever its trust domain (the node's
        # trust domain names the node's own identity only): the leaf check decides
        key = generate_key("ec-p256")
        request = ca_pb2.IstioCertificateRequest(csr=certificate_request(identity, key),
                                                 validity_duration=int(lifetime.total_seconds()))
        if identity != self.own_identity:
            request.metadata.CopyFrom(struct_pb2.Struct(fields={
                IMPERSONATED_IDENTITY: struct_pb2.Value(string_value=identity.uri)}))
        try:
            metadata = self.plane.call_metadata()
            channel = await self.channels.channel()
        except ConfigError as exc:
            raise IdentityError(f"cannot ask istiod's CA at {self.address} for {identity}: {exc}") from None
        call = channel.unary_unary(CREATE_CERTIFICATE,
                                   request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
                                   response_deserializer=ca_pb2.IstioCertificateResponse.FromString)
        self.requests += 1
        try:
            response = await call(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise IdentityError(f"istiod's CA at {self.address} refused a certificate for {identity}: "
                                f"{exc.code().name}: {exc.details() or 'no details'}") from None
        except grpc.aio.UsageError as exc:
            raise IdentityError(f"istiod's CA at {self.address}: no call for {identity} ({exc})") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # grpc.aio reports a call ended by its channel closing as a cancellation; the
            # caller was not cancelled and must not unwind as if it had been
            raise IdentityError(f"istiod's CA at {self.address}: the call for {identity} was cancelled "
                                f"(its channel closed)") from None
        creds, roots = self._check(identity, key, list(response.cert_chain), now or utcnow())
        self._roots[identity] = roots
        self._update_bundle()
        return creds

    def _check(self, identity: SpiffeId, key, pems: list[str], now: dt.datetime
               ) -> tuple[Credentials, tuple[x509.Certificate, ...]]:
        where = f"istiod at {self.address}"
        if not pems:
            raise IdentityError(f"{where} answered an empty certificate chain for {identity}")
        certs: list[list[x509.Certificate]] = []
        for n, pem in enumerate(pems):
            try:
                parsed = x509.load_pem_x509_certificates(pem.encode())
            except ValueError as exc:
                raise IdentityError(f"{where}: entry {n} of the chain for {identity} is not a PEM certificate "
                                    f"({exc})") from None
            certs.append(parsed)
        if len(certs) < 2:
            raise IdentityError(f"{where} sent a certificate for {identity} without its root "
                                f"(one entry in the chain; istiod sends leaf first, root last)")
        # the last entry holds the root(s); the ones before, one certificate each
        chain = [c for entry in certs[:-1] for c in entry]
        roots = tuple(certs[-1])
        leaf = chain[0]
        try:
            got = identity_of(leaf)
        except IdentityError as exc:
            raise IdentityError(f"{where} issued a certificate for {identity} with no usable identity: {exc}") from None
        if got != identity:
            raise IdentityError(f"{where} issued a certificate for {got}, asked for {identity}")
        try:
            uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:       # pragma: no cover - identity_of refused it already
            uris = []
        if uris != [identity.uri]:
            raise IdentityError(f"{where} issued a certificate for {identity} that also names {uris}")
        if not same_public_key(key, leaf):
            raise IdentityError(f"{where} issued a certificate for {identity} with a public key that is not "
                                f"the one in the request")
        for n, (cert, issuer) in enumerate(zip(chain, chain[1:])):
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise IdentityError(f"{where}: certificate {n} of the chain for {identity} is not signed by the "
                                    f"next one ({exc or 'bad signature'})") from None
        if not any(_issued_by(chain[-1], root) for root in roots):
            raise IdentityError(f"{where}: the chain for {identity} does not verify up to the root it was sent "
                                f"with ({', '.join(r.subject.rfc4514_string() or '(empty)' for r in roots)})")
        for cert in chain:
            if not cert.not_valid_before_utc - CLOCK_SKEW <= now < cert.not_valid_after_utc:
                raise IdentityError(
                    f"{where} issued a certificate for {identity} not valid now ({now:%Y-%m-%dT%H:%M:%SZ}): "
                    f"{cert.subject.rfc4514_string() or 'leaf'} valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
                    f" to {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
        return Credentials(identity, key, tuple(chain)), roots

    def _update_bundle(self) -> None:
        roots = [r for rs in self._roots.values() for r in rs]
        bundle = TrustBundle(roots) if roots else None
        if bundle is None or self.bundle is None or bundle.pem() != self.bundle.pem():
            self.bundle = bundle

    def forget(self, identity: SpiffeId) -> None:
        """`identity` is no longer held: its roots stop counting once others remain."""
        if self._roots.pop(identity, None) is not None and self._roots:
            self._update_bundle()

    async def close(self) -> None:
        await self.channels.close()


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
