"""SPIFFE ids as Istio uses them: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from meshcore.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509

# SPIFFE spec: trust domain is lowercase letters, digits, '.', '-', '_'; path segments
# are letters, digits, '.', '-', '_' and may not be '.' or '..'
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,253}")


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self):
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise IdentityError(f"invalid SPIFFE trust domain {self.trust_domain!r}")
        for what, seg in (("namespace", self.namespace), ("service account", self.service_account)):
            if not _SEGMENT.fullmatch(seg) or seg in (".", ".."):
                raise IdentityError(f"invalid {what} {seg!r} in SPIFFE id")

    @classmethod
    def parse(cls, uri: str) -> "SpiffeId":
        """Strict: exactly spiffe://<td>/ns/<ns>/sa/<sa> (Istio's 5-segment form)."""
        if not isinstance(uri, str) or not uri.startswith("spiffe://"):
            raise IdentityError(f"not a SPIFFE id (must start with spiffe://): {uri!r}")
        parts = uri[len("spiffe://"):].split("/")
        if len(parts) != 5:
            raise IdentityError(
                f"SPIFFE id {uri!r} has {len(parts)} segments; expected <trust-domain>/ns/<ns>/sa/<sa>")
        td, ns_lit, ns, sa_lit, sa = parts
        if ns_lit != "ns" or sa_lit != "sa":
            raise IdentityError(f"SPIFFE id {uri!r} must have the form <trust-domain>/ns/<ns>/sa/<sa>")
        return cls(td, ns, sa)

    @classmethod
    def from_principal(cls, principal: str) -> "SpiffeId":
        """Istio policy principals are written without the scheme: td/ns/x/sa/y."""
        return cls.parse("spiffe://" + principal)

    # cached (ids are frozen): telemetry and policy read them on every tunnel
    @cached_property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @cached_property
    def principal(self) -> str:
        return self.uri[len("spiffe://"):]

    def __str__(self) -> str:
        return self.uri


def identity_of(cert: "x509.Certificate") -> SpiffeId:
    """The identity of a certificate: its first URI SAN that is a SPIFFE id. DNS SANs
    are ignored. Raises IdentityError naming what is missing or malformed."""
    from cryptography import x509          # imported here: the data path reads no x509 objects
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    return identity_of_uris(None if san is None else san.get_values_for_type(x509.UniformResourceIdentifier))


def identity_of_uris(uris: list[str] | None) -> SpiffeId:
    """identity_of() for a certificate whose URI SANs are `uris` (None: it has no
    subjectAltName extension)."""
    if uris is None:
        raise IdentityError("certificate has no subjectAltName extension (no SPIFFE id)")
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if not spiffe:
        raise IdentityError(f"certificate has no SPIFFE URI SAN (URI SANs: {uris or 'none'})")
    return SpiffeId.parse(spiffe[0])
