"""A test istiod CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` with istiod's
rules (istio security/pkg/server/ca), served by grpcio's generic handlers and signing with
the test istiod's CA (IstiodTls.ca).

- `authorization: Bearer <token>` must match `token` (UNAUTHENTICATED otherwise);
- `ImpersonatedIdentity` in the metadata replaces the CSR's SAN, for a caller allowed to
  impersonate (`allow_impersonation`; PERMISSION_DENIED otherwise);
- a validity of 0 or less means 24 h; more than 90 days is INVALID_ARGUMENT;
- the leaf's NotBefore is 2 minutes in the past;
- the answer is leaf, intermediates, root (PEM strings).

Knobs for the client's checks: `fail_next(n, code)`, and `answer` = "wrong-identity",
"other-root" (signed by another CA, sent with ours as root), "wrong-key", "expired",
"empty", "garbage" or "no-root" for every following call until reset to None."""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.identity.ca import CertificateAuthority
from meshcore.xds.proto import ca_pb2

SERVICE = "istio.v1.auth.IstioCertificateService"
DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=90)
BACKDATE = dt.timedelta(minutes=2)


@dataclass
class Seen:
    csr_san: list[str]
    validity: int
    impersonated: str | None
    authorization: str | None
    clusterid: str | None


@dataclass
class IstioCa:
    ca: CertificateAuthority
    token: str | None = "istio-token"
    allow_impersonation: bool = True
    answer: str | None = None
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0
    _failures: list = field(default_factory=list)

    def fail_next(self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                  details: str = "istiod is restarting") -> None:
        self._failures = [(code, details)] * n

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                self._create, request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
                response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString)})

    async def _create(self, request, context):
        meta = dict(context.invocation_metadata())
        csr = x509.load_pem_x509_csr(request.csr.encode())
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            sans = []
        impersonated = request.metadata.fields["ImpersonatedIdentity"].string_value \
            if "ImpersonatedIdentity" in request.metadata.fields else None
        self.seen.append(Seen(sans, request.validity_duration, impersonated, meta.get("authorization"),
                              meta.get("clusterid")))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            code, details = self._failures.pop(0)
            await context.abort(code, details)
        if self.token is not None and meta.get("authorization") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authenticate failure")
        if not csr.is_signature_valid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "CSR signature invalid")
        if impersonated is not None:
            if not self.allow_impersonation:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "impersonation not allowed")
            sans = [impersonated]
        if not sans:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no identity in the CSR")
        ttl = dt.timedelta(seconds=request.validity_duration) if request.validity_duration > 0 else DEFAULT_TTL
        if ttl > MAX_TTL:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"requested TTL {ttl} is greater than the max allowed TTL {MAX_TTL}")
        return ca_pb2.IstioCertificateResponse(cert_chain=self._chain(sans, csr.public_key(), ttl))

    def _chain(self, sans: list[str], public_key, ttl: dt.timedelta) -> list[str]:
        signer, root, now = self.ca, self.ca.roots[0], dt.datetime.now(dt.timezone.utc)
        if self.answer == "wrong-identity":
            sans = [sans[0].rsplit("/", 1)[0] + "/someone-else"]
        elif self.answer == "wrong-key":
            public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        elif self.answer == "other-root":
            signer = CertificateAuthority.create(self.ca.trust_domain)
        elif self.answer == "expired":
            now -= ttl + dt.timedelta(hours=1)
        elif self.answer == "empty":
            return []
        elif self.answer == "garbage":
            return ["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                    _pem(root)]
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([])).issuer_name(signer.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + ttl)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans]),
                               critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=True, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(signer.key, hashes.SHA256()))
        if self.answer == "no-root":
            return [_pem(leaf)]
        intermediates = [c for c in signer.chain if c not in signer.roots]
        return [_pem(leaf), *(_pem(c) for c in intermediates), _pem(root)]


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
