"""mTLS contexts for HBONE (docs/hbone.md, Transport security) and the checks the TLS stack cannot do.

A context made here is an `HboneContext`: an ssl.SSLContext (for code that speaks
TLS through Python's ssl: asyncio, uvloop, test peers) that also builds, on first
use, the OpenSSL context of meshcore's own TLS engine (meshcore.aio.openssl, which
meshcore.aio.tls drives) from the same credentials, trust bundle and settings.
Either stack verifies chains, validity and TLS versions during the handshake.
What they do not check is checked right after it, before a single byte of HTTP/2:
the negotiated ALPN is h2, the cipher is AES-GCM (TLS 1.3 suites are not
configurable from Python; the engine offers the AES-GCM ones only), and the peer's SPIFFE id is acceptable (client side:
one of the expected identities; server side: our trust domain). The checks and the
refusal reasons are the same for both stacks. Every refusal is logged and counted
in `refusals` by reason.
"""
from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from meshcore.errors import IdentityError
from meshcore.identity.spiffe import SpiffeId, identity_of_uris
from meshcore.identity.x509util import certs_pem

if TYPE_CHECKING:
    from cryptography import x509

    from meshcore.identity.credentials import Credentials

log = logging.getLogger("meshcore.identity")

ALPN = "h2"
TLS13_CIPHERS = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"})
TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
TLS12_CIPHER_NAMES = frozenset(TLS12_CIPHERS.split(":"))

refusals: Counter[str] = Counter()


def _refuse(message: str, reason: str, peer: object = None) -> IdentityError:
    refusals[reason] += 1
    log.warning("mTLS refused (%s): %s%s", reason, message, f" [peer {peer}]" if peer else "")
    return IdentityError(message, reason)


def _load_credentials(ctx: ssl.SSLContext, creds: Credentials) -> None:
    """ssl only loads keys from files: an anonymous memory file on Linux, so the key
    never touches a disk; elsewhere a 0600 file in a private temp dir, removed at once."""
    pem = creds.chain_pem() + creds.key_pem()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshcore-credentials", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as d:  # pragma: no cover - non-Linux
        path = os.path.join(d, "credentials.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)


class HboneContext(ssl.SSLContext):
    """An ssl.SSLContext that meshcore's TLS engine can run too: `native()` is its
    OpenSSL context there, built from the same credentials and trust bundle, and from
    the settings this context has when it is asked for (versions, TLS 1.2 ciphers,
    ALPN, verify mode, tickets), so that changing them here changes both stacks.
    What Python's ssl alone offers (an SNI callback, a keylog file, certificates
    loaded afterwards) applies to Python's ssl only."""

    _sources: tuple[Credentials, bytes] | None = None
    _alpn: tuple[str, ...] = ()
    _ciphers: str | None = None
    _native = None
    _native_settings: tuple | None = None

    def set_alpn_protocols(self, alpn_protocols) -> None:
        super().set_alpn_protocols(alpn_protocols)
        self._alpn = tuple(alpn_protocols)

    def set_ciphers(self, specification: str) -> None:
        super().set_ciphers(specification)
        self._ciphers = specification

    def native(self):
        """The meshcore.aio.openssl.TlsContext for these settings (built once, and
        again after a setting changed)."""
        if self._sources is None:
            raise IdentityError("this context has no credentials for meshcore's TLS engine")
        settings = (_version_number(self.minimum_version), _version_number(self.maximum_version),
                    self._alpn, self._ciphers, int(self.verify_mode),
                    self.num_tickets if self.protocol == ssl.PROTOCOL_TLS_SERVER else 0)
        if self._native is None or settings != self._native_settings:
            from meshcore.aio.openssl import TlsContext
            creds, roots = self._sources
            low, high, alpn, ciphers, verify_mode, tickets = settings
            self._native = TlsContext(self.protocol == ssl.PROTOCOL_TLS_SERVER, creds.chain_pem(), creds.key_pem(),
                                      roots, min_version=low, max_version=high, alpn=alpn,
                                      tls12_ciphers=None if ciphers is None else ciphers.encode("ascii"),
                                      verify_mode=verify_mode, tickets=tickets)
            self._native_settings = settings
        return self._native


def _version_number(version: ssl.TLSVersion) -> int:
    # OpenSSL's protocol number; 0 leaves the bound to OpenSSL (MINIMUM/MAXIMUM_SUPPORTED)
    return max(int(version), 0)


def _base_context(purpose: int, creds: Credentials, bundle: Iterable[x509.Certificate],
                  allow_tls12: bool) -> HboneContext:
    ctx = HboneContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if allow_tls12 else ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if allow_tls12:
        ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols([ALPN])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    # a TrustBundle keeps its PEM; certificate objects are written out
    pem = getattr(bundle, "pem", None)
    roots = pem() if pem is not None else certs_pem(bundle)
    if not roots:
        raise IdentityError("empty trust bundle")
    ctx.load_verify_locations(cadata=roots.decode("ascii"))
    _load_credentials(ctx, creds)
    ctx._sources = (creds, roots)
    return ctx


def server_context(creds: Credentials, bundle: Iterable[x509.Certificate], *,
                   allow_tls12: bool = False) -> HboneContext:
    """Presents `creds`, requires a client certificate chaining to `bundle`."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, creds, bundle, allow_tls12)
    ctx.num_tickets = 0          # no session resumption (docs/hbone.md, Transport security)
    return ctx


def client_context(creds: Credentials, bundle: Iterable[x509.Certificate], *,
                   allow_tls12: bool = False) -> HboneContext:
    """Presents `creds`; verifies the server's chain. No hostname or SNI checks: the
    server's SPIFFE id is checked by verify_server() against the expected identities."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, creds, bundle, allow_tls12)
    ctx.check_hostname = False
    return ctx


def _peer_identity(ssl_object, side: str, peer) -> SpiffeId:
    # the verified peer certificate as OpenSSL decoded it (its URI SANs among the
    # fields): no second parse of the certificate, and no cryptography import
    cert = ssl_object.getpeercert()
    if not cert:
        raise _refuse(f"{side} presented no certificate", "no_client_certificate", peer)
    sans = cert.get("subjectAltName")
    try:
        return identity_of_uris(None if sans is None else [value for kind, value in sans if kind == "URI"])
    except IdentityError as exc:
        raise _refuse(f"{side} certificate: {exc}", "no_spiffe_id", peer) from None


def _check_session(ssl_object, peer) -> None:
    alpn = ssl_object.selected_alpn_protocol()
    if alpn != ALPN:
        raise _refuse(f"ALPN {alpn!r} negotiated; HBONE requires 'h2'", "alpn", peer)
    name, version, _ = ssl_object.cipher()
    allowed = TLS13_CIPHERS if version == "TLSv1.3" else TLS12_CIPHER_NAMES
    if name not in allowed:
        raise _refuse(f"cipher {name} ({version}) is not AES-GCM", "cipher", peer)


def verify_server(ssl_object, expected: Iterable[SpiffeId], peer=None) -> SpiffeId:
    """Client side, after the handshake: the server is one of `expected`."""
    _check_session(ssl_object, peer)
    identity = _peer_identity(ssl_object, "server", peer)
    allowed = set(expected)
    if identity not in allowed:
        raise _refuse(f"server identity {identity} is not among the expected "
                      f"{sorted(str(i) for i in allowed)}", "unexpected_identity", peer)
    return identity


def verify_client(ssl_object, trust_domain: str, peer=None) -> SpiffeId:
    """Server side, after the handshake: the client has a SPIFFE id of our trust domain.
    Which identities are allowed is authorization policy's decision, not TLS's."""
    _check_session(ssl_object, peer)
    identity = _peer_identity(ssl_object, "client", peer)
    if identity.trust_domain != trust_domain:
        raise _refuse(f"client identity {identity} is from trust domain "
                      f"{identity.trust_domain!r}, not {trust_domain!r}", "trust_domain", peer)
    return identity


_VERIFY_REASONS = (
    ("certificate has expired", "expired"),
    ("certificate is not yet valid", "not_yet_valid"),
    ("unable to get local issuer certificate", "untrusted_chain"),
    ("self-signed certificate", "untrusted_chain"),
    ("self signed certificate", "untrusted_chain"),
    ("certificate signature failure", "untrusted_chain"),
)
_SSL_REASONS = (
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate"),
    ("CERTIFICATE_REQUIRED", "no_client_certificate"),
    ("UNSUPPORTED_PROTOCOL", "tls_version"),
    ("WRONG_VERSION_NUMBER", "tls_version"),
    ("PROTOCOL_VERSION", "tls_version"),
    ("NO_PROTOCOLS_AVAILABLE", "tls_version"),
    ("NO_APPLICATION_PROTOCOL", "alpn"),
    ("NO_SHARED_CIPHER", "cipher"),
    ("NO_CIPHERS_AVAILABLE", "cipher"),
    ("UNKNOWN_CA", "untrusted_chain"),
    ("CERTIFICATE_EXPIRED", "expired"),
    ("BAD_CERTIFICATE", "untrusted_chain"),
    ("CERTIFICATE_VERIFY_FAILED", "untrusted_chain"),
)


def handshake_error(exc: BaseException, peer=None) -> IdentityError:
    """Turn an ssl handshake failure into an IdentityError with a precise reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        for text, reason in _VERIFY_REASONS:
            if text in message:
                return _refuse(f"peer certificate refused: {message}", reason, peer)
        return _refuse(f"peer certificate refused: {message}", "untrusted_chain", peer)
    # a timeout or a bare connection error has no text of its own: say what it was
    detail = str(exc) or ("no handshake within the timeout" if isinstance(exc, TimeoutError)
                          else type(exc).__name__)
    text = f"{getattr(exc, 'reason', '') or ''} {detail}"
    for marker, reason in _SSL_REASONS:
        if marker in text.upper().replace(" ", "_"):
            return _refuse(f"TLS handshake failed: {detail}", reason, peer)
    return _refuse(f"TLS handshake failed: {detail}", "handshake", peer)
