"""A built-in certificate authority for meshes without an external one.

Directory layout (Istio's plugged-in CA files, so an existing CA can be dropped in):
    ca-cert.pem     the CA certificate that signs workloads (0644)
    ca-key.pem      its private key (0600)
    cert-chain.pem  ca-cert.pem plus any intermediates up to the root (0644)
    root-cert.pem   the trust bundle: one or more roots (0644)
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.errors import IdentityError
from meshcore.identity.credentials import CLOCK_SKEW, DEFAULT_WORKLOAD_LIFETIME, Credentials  # noqa: F401
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.x509util import (
    certs_pem, key_pem, load_pem_chain, load_pem_key, same_public_key, utcnow,
    write_private, write_public)

DEFAULT_CA_LIFETIME = dt.timedelta(days=3650)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    raise IdentityError(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")


def _hash_for(key: PrivateKey):
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


class CertificateAuthority:
    """Signs short-lived workload certificates carrying only a SPIFFE URI SAN."""

    def __init__(self, key: PrivateKey, cert: x509.Certificate, trust_domain: str,
                 chain: tuple[x509.Certificate, ...] = (), roots: tuple[x509.Certificate, ...] = ()):
        if not same_public_key(key, cert):
            raise IdentityError("CA key does not match the CA certificate")
        try:
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise IdentityError("CA certificate is not a CA (basicConstraints CA:FALSE)")
        except x509.ExtensionNotFound:
            raise IdentityError("CA certificate has no basicConstraints extension") from None
        SpiffeId(trust_domain, "x", "x")     # validates the trust domain
        self.key, self.cert, self.trust_domain = key, cert, trust_domain
        self.chain = chain or (cert,)
        self.roots = roots or (self.chain[-1],)

    # ---------------------------------------------------------------- create / load

    @classmethod
    def create(cls, trust_domain: str, *, key_type: str = "ec-p256",
               lifetime: dt.timedelta = DEFAULT_CA_LIFETIME, now: dt.datetime | None = None
               ) -> "CertificateAuthority":
        """A new self-signed root for `trust_domain`."""
        key = generate_key(key_type)
        now = now or utcnow()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"meshcore root CA ({trust_domain})")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, _hash_for(key)))
        return cls(key, cert, trust_domain)

    @classmethod
    def load(cls, directory: str | os.PathLike, trust_domain: str | None = None) -> "CertificateAuthority":
        """Load the Istio plugged-in CA layout (ca-cert.pem, ca-key.pem, and optionally
        cert-chain.pem and root-cert.pem). The trust domain defaults to the CA's O=."""
        d = Path(directory)
        paths = {n: d / n for n in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")}
        for required in ("ca-cert.pem", "ca-key.pem"):
            if not paths[required].is_file():
                raise IdentityError(f"{paths[required]}: missing (a CA directory needs ca-cert.pem and ca-key.pem)")
        cert = load_pem_chain(paths["ca-cert.pem"].read_bytes(), str(paths["ca-cert.pem"]))[0]
        key = load_pem_key(paths["ca-key.pem"].read_bytes(), str(paths["ca-key.pem"]))
        chain = (tuple(load_pem_chain(paths["cert-chain.pem"].read_bytes(), str(paths["cert-chain.pem"])))
                 if paths["cert-chain.pem"].is_file() else (cert,))
        roots = (tuple(load_pem_chain(paths["root-cert.pem"].read_bytes(), str(paths["root-cert.pem"])))
                 if paths["root-cert.pem"].is_file() else (chain[-1],))
        if trust_domain is None:
            orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            if not orgs:
                raise IdentityError(f"{paths['ca-cert.pem']}: no O= in the subject; pass the trust domain")
            trust_domain = str(orgs[0].value)
        return cls(key, cert, trust_domain, chain, roots)

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        write_private(d / "ca-key.pem", key_pem(self.key))
        write_public(d / "ca-cert.pem", certs_pem([self.cert]))
        write_public(d / "cert-chain.pem", certs_pem(self.chain))
        write_public(d / "root-cert.pem", certs_pem(self.roots))

    # ----------------------------------------------------------------------- issue

    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
              key: PrivateKey | None = None, key_type: str = "ec-p256",
              now: dt.datetime | None = None) -> Credentials:
        """A workload certificate for `identity`: empty subject, one critical URI SAN,
        serverAuth + clientAuth, never longer-lived than the CA itself."""
        if identity.trust_domain != self.trust_domain:
            raise IdentityError(
                f"CA of trust domain {self.trust_domain!r} cannot issue for {identity.uri}")
        key = key or generate_key(key_type)
        now = now or utcnow()
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        rsa_key = isinstance(key, rsa.RSAPrivateKey)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity.uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, _hash_for(self.key)))
        chain = (cert,) + tuple(c for c in self.chain if c not in self.roots)
        return Credentials(identity, key, chain)
