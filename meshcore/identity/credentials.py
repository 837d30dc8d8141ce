"""A workload's credentials: its key and certificate chain, as cryptography objects
(`Credentials`) or as the PEM text a TLS context loads (`PemCredentials`, what a node
proxy holds when its certificates are signed in a helper process: no cryptography
import for them).

Both answer what the certificate store and the TLS contexts ask: identity, validity,
`key_pem()`, `chain_pem()`; `key`, `chain` and `certificate` as cryptography objects
(parsed on first use for PEM credentials).
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.x509util import certs_pem, key_pem, load_pem_chain, load_pem_key

if TYPE_CHECKING:
    from cryptography import x509

    from meshcore.identity.x509util import PrivateKey

DEFAULT_WORKLOAD_LIFETIME = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Credentials:
    """A workload's private key and certificate chain (leaf first, no root)."""

    identity: SpiffeId
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def chain_pem(self) -> bytes:
        return certs_pem(self.chain)


@dataclass(frozen=True)
class PemCredentials:
    """Credentials as PEM text with the validity of the leaf, from an issuer that has
    checked them (the CA helper process)."""

    identity: SpiffeId
    key_text: bytes = field(repr=False)
    chain_text: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    def key_pem(self) -> bytes:
        return self.key_text

    def chain_pem(self) -> bytes:
        return self.chain_text

    # parsed on first use (config_dump, tools): cryptography is imported then
    @functools.cached_property
    def key(self) -> PrivateKey:
        return load_pem_key(self.key_text, str(self.identity))

    @functools.cached_property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return tuple(load_pem_chain(self.chain_text, str(self.identity)))

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]
