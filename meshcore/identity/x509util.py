"""Small X.509 helpers shared by the CA, the stores and the CLI.

cryptography is imported by the helpers that use it, not with this module: a node
proxy whose certificates are signed in a helper process never loads it (~10 MB).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

from meshcore.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def load_pem_chain(data: bytes, source: str) -> list[x509.Certificate]:
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{source}: not a PEM certificate file ({exc})") from None
    if not certs:
        raise IdentityError(f"{source}: no certificate in file")
    return certs


def load_pem_key(data: bytes, source: str) -> PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise IdentityError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def key_pem(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certs_pem(certs) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret: created 0600 from the start, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives import serialization
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def describe(cert: x509.Certificate) -> dict:
    """What `meshcore ca show` prints."""
    from cryptography import x509

    from meshcore.identity.spiffe import identity_of
    try:
        identity = str(identity_of(cert))
    except IdentityError as exc:
        identity = f"(none: {exc})"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "identity": identity,
        "subject": cert.subject.rfc4514_string() or "(empty)",
        "issuer": cert.issuer.rfc4514_string() or "(empty)",
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "is_ca": is_ca,
        "key": type(cert.public_key()).__name__.lstrip("_"),
    }
