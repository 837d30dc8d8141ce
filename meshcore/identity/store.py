"""Credentials for every local workload identity, issued on demand, rotated early.

A node proxy holds one key + certificate per local workload identity. The store
asks its issuer (the built-in CA, or files written by cert-manager / a SPIRE agent)
for credentials the first time an identity is needed, and again once a certificate
has used `rotate_at` of its lifetime (half, by default). An SSLContext is built per
credentials: rotation makes new connections use the new certificate, and
established connections, which hold the old context, are untouched.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from meshcore.errors import IdentityError
from meshcore.identity import tls
from meshcore.identity.credentials import DEFAULT_WORKLOAD_LIFETIME, Credentials
from meshcore.identity.der import pem_certificates
from meshcore.identity.spiffe import SpiffeId, identity_of
from meshcore.identity.x509util import load_pem_chain, load_pem_key, same_public_key, utcnow

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("meshcore.identity")


class TrustBundle:
    """The roots a peer's chain must end in; several at once during a CA rotation.

    Kept as DER (one copy of each root), written as PEM for TLS contexts; `roots`, the
    certificate objects, are parsed on first use, so a bundle read from files a helper
    process has checked costs no cryptography import."""

    def __init__(self, roots: Iterable[x509.Certificate] = (), *, der: Iterable[bytes] = ()):
        from_objects = list(roots)
        ders = list(der)
        if from_objects:
            # certificate objects given: cryptography is loaded already
            from cryptography.hazmat.primitives.serialization import Encoding
            ders += [cert.public_bytes(Encoding.DER) for cert in from_objects]
        seen, unique = set(), []
        for i, d in enumerate(ders):             # the same DER is the same certificate
            if d not in seen:
                seen.add(d)
                unique.append(i)
        if not unique:
            raise IdentityError("a trust bundle needs at least one root certificate")
        self.der: tuple[bytes, ...] = tuple(ders[i] for i in unique)
        if len(from_objects) == len(ders):
            self.__dict__["roots"] = tuple(from_objects[i] for i in unique)

    @functools.cached_property
    def roots(self) -> tuple[x509.Certificate, ...]:
        from cryptography import x509
        return tuple(x509.load_der_x509_certificate(d) for d in self.der)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "<bundle>") -> "TrustBundle":
        return cls(load_pem_chain(data, source))

    @classmethod
    def from_checked_pem(cls, data: bytes) -> "TrustBundle":
        """Roots that were parsed and checked elsewhere (the CA helper process): split
        into certificates, not parsed again here."""
        return cls(der=pem_certificates(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrustBundle":
        return cls.from_pem(Path(path).read_bytes(), str(path))

    def merged(self, other: "TrustBundle") -> "TrustBundle":
        return TrustBundle(der=self.der + other.der)

    def pem(self) -> bytes:
        return "".join(ssl.DER_cert_to_PEM_cert(d) for d in self.der).encode("ascii")

    def __iter__(self):
        return iter(self.roots)

    def __len__(self) -> int:
        return len(self.der)


class Issuer(Protocol):
    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta,
              now: dt.datetime | None = None) -> Credentials: ...


# file names each tool writes: (certificate chain, private key, trust bundle)
FILE_LAYOUTS = {
    "cert-manager": ("tls.crt", "tls.key", "ca.crt"),
    "spire": ("svid.pem", "svid_key.pem", "svid_bundle.pem"),
    "istio": ("cert-chain.pem", "key.pem", "root-cert.pem"),
}


class FileCredentials:
    """A ready workload certificate, key and bundle from files, reloaded when they change.

    `issue()` hands out the loaded credentials for their own identity only; a new set
    of files is picked up by `changed()`, which the store polls."""

    def __init__(self, cert_path: str | os.PathLike, key_path: str | os.PathLike,
                 bundle_path: str | os.PathLike | None = None):
        self.paths = tuple(Path(p) for p in (cert_path, key_path) + ((bundle_path,) if bundle_path else ()))
        self._stamp: tuple | None = None
        self.credentials: Credentials
        self.bundle: TrustBundle | None = None
        self._load()

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "FileCredentials":
        d = Path(directory)
        for layout, names in FILE_LAYOUTS.items():
            if (d / names[0]).is_file() and (d / names[1]).is_file():
                bundle = d / names[2]
                return cls(d / names[0], d / names[1], bundle if bundle.is_file() else None)
        known = "; ".join(f"{k}: {', '.join(v)}" for k, v in FILE_LAYOUTS.items())
        raise IdentityError(f"{d}: no workload certificate files found (looked for {known})")

    def _fingerprint(self) -> tuple:
        out = []
        for p in self.paths:
            try:
                st = p.stat()
            except FileNotFoundError:
                raise IdentityError(f"{p}: missing") from None
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> None:
        stamp = self._fingerprint()
        chain = load_pem_chain(self.paths[0].read_bytes(), str(self.paths[0]))
        key = load_pem_key(self.paths[1].read_bytes(), str(self.paths[1]))
        if not same_public_key(key, chain[0]):
            raise IdentityError(f"{self.paths[1]}: key does not match the certificate in {self.paths[0]}")
        identity = identity_of(chain[0])
        bundle = TrustBundle.from_file(self.paths[2]) if len(self.paths) > 2 else None
        # only a complete, consistent set replaces the previous one
        self.credentials = Credentials(identity, key, tuple(chain))
        self.bundle = bundle
        self._stamp = stamp

    def changed(self) -> bool:
        """Reload if any file changed; True when new credentials were loaded. A broken
        new set raises IdentityError and the previous credentials stay in use."""
        if self._fingerprint() == self._stamp:
            return False
        self._load()
        return True

    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
              now: dt.datetime | None = None) -> Credentials:
        """The files' credentials (their lifetime is the writer's business)."""
        if identity != self.credentials.identity:
            raise IdentityError(
                f"files {self.paths[0]} hold {self.credentials.identity}, not {identity}")
        return self.credentials


class CredentialDirectories:
    """Several workloads' certificate files, one directory each (cert-manager secrets,
    SPIRE agents, Istio's layout) under one parent: `issue()` hands out the files of the
    identity asked for. Directories are looked at again when files change."""

    def __init__(self, parent: str | os.PathLike):
        self.parent = Path(parent)
        self.by_identity: dict[SpiffeId, FileCredentials] = {}
        self.bundle: TrustBundle | None = None
        self._scan()

    def _scan(self) -> None:
        found: dict[SpiffeId, FileCredentials] = {}
        candidates = [self.parent, *sorted(p for p in self.parent.iterdir() if p.is_dir())] \
            if self.parent.is_dir() else []
        if not candidates:
            raise IdentityError(f"{self.parent}: not a directory")
        for d in candidates:
            try:
                files = FileCredentials.from_directory(d)
            except IdentityError as exc:
                if d != self.parent and "no workload certificate files" not in str(exc):
                    raise
                continue
            found[files.credentials.identity] = files
        if not found:
            raise IdentityError(f"{self.parent}: no workload certificate files in it or its subdirectories")
        bundles = [f.bundle for f in found.values() if f.bundle is not None]
        bundle = bundles[0] if bundles else None
        for other in bundles[1:]:
            bundle = bundle.merged(other)
        self.by_identity, self.bundle = found, bundle

    def changed(self) -> bool:
        changed = any([f.changed() for f in self.by_identity.values()])
        known = set(self.by_identity)
        self._scan()
        return changed or set(self.by_identity) != known

    @property
    def identities(self) -> list[SpiffeId]:
        return sorted(self.by_identity)

    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
              now: dt.datetime | None = None) -> Credentials:
        files = self.by_identity.get(identity)
        if files is None:
            raise IdentityError(f"{self.parent}: no certificate files for {identity} "
                                f"(found: {', '.join(map(str, self.identities))})")
        return files.credentials


@dataclass
class _Entry:
    credentials: Credentials
    rotate_after: dt.datetime
    contexts: dict = field(default_factory=dict)


class Backoff:
    """ztunnel's retry schedule for a certificate it could not get: 0.5 s, then twice as
    long each time up to 150 s, each delay randomized by ±20 % so that a node's many
    identities (and many nodes) do not come back to a recovering CA all at once."""

    INITIAL, MULTIPLIER, MAXIMUM, JITTER = 0.5, 2.0, 150.0, 0.2

    def __init__(self, rng: random.Random | None = None):
        self.interval, self.rng = self.INITIAL, rng or random.Random()

    def next(self) -> float:
        delay = self.interval * self.rng.uniform(1 - self.JITTER, 1 + self.JITTER)
        self.interval = min(self.interval * self.MULTIPLIER, self.MAXIMUM)
        return min(delay, self.MAXIMUM)


@dataclass
class _Failure:
    error: str
    retry_at: dt.datetime
    backoff: Backoff
    attempts: int = 1


class CertificateStore:
    """Per-identity credentials and SSL contexts with automatic rotation."""

    def __init__(self, issuer: Issuer, bundle: TrustBundle | None = None, *,
                 lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME, rotate_at: float = 0.5,
                 allow_tls12: bool = False, clock: Callable[[], dt.datetime] = utcnow):
        if not 0.0 < rotate_at < 1.0:
            raise ValueError("rotate_at must be a fraction of the lifetime between 0 and 1")
        self.remote = hasattr(issuer, "issue_async")
        if bundle is None:
            bundle = getattr(issuer, "bundle", None)
            # a remote CA's roots come with its first certificate
            if bundle is None and not self.remote:
                bundle = TrustBundle(getattr(issuer, "roots", ()))
        self.issuer, self.bundle = issuer, bundle
        self.lifetime, self.rotate_at, self.allow_tls12, self.clock = lifetime, rotate_at, allow_tls12, clock
        self._entries: dict[SpiffeId, _Entry] = {}
        self._pending: dict[SpiffeId, asyncio.Future] = {}
        self._failures: dict[SpiffeId, _Failure] = {}
        self.rotations = 0

    @property
    def identities(self) -> list[SpiffeId]:
        return sorted(self._entries)

    @property
    def known(self) -> set[SpiffeId]:
        """Every identity the store holds anything for: credentials, a failure it will
        retry, or a request under way. What is no longer wanted is forgotten from here."""
        return set(self._entries) | set(self._failures) | set(self._pending)

    def _issue(self, identity: SpiffeId) -> _Entry:
        return self._keep(identity, self.issuer.issue(identity, lifetime=self.lifetime, now=self.clock()))

    def _keep(self, identity: SpiffeId, creds: Credentials, since: dt.datetime | None = None) -> _Entry:
        # istiod backdates NotBefore by 2 minutes: half-life counts from the request
        nb, na = max(creds.not_before, since) if since is not None else creds.not_before, creds.not_after
        entry = _Entry(creds, nb + (na - nb) * self.rotate_at)
        self._entries[identity] = entry
        return entry

    def _entry(self, identity: SpiffeId) -> _Entry:
        entry = self._entries.get(identity)
        if entry is None or self.clock() >= entry.credentials.not_after:
            entry = self._issue(identity)
        return entry

    def credentials(self, identity: SpiffeId) -> Credentials:
        return self._entry(identity).credentials

    # -- asynchronous: what a remote CA can stand behind -------------------------------
    async def get(self, identity: SpiffeId) -> Credentials:
        """The credentials of `identity`, issued when missing or expired. An issuer with
        `issue_async` (a remote CA) is awaited; callers asking for the same identity
        meanwhile share that one request, and one caller leaving does not cancel it.
        After a remote CA failed, callers get that failure again until the retry is due
        (connections must not hammer a CA that is down; `rotate_due_async` retries)."""
        entry = self._entries.get(identity)
        if entry is not None and self.clock() < entry.credentials.not_after:
            return entry.credentials
        failure = self._failures.get(identity)
        if failure is not None and identity not in self._pending and self.clock() < failure.retry_at:
            raise IdentityError(failure.error)
        fetch = self._fetch(identity)
        try:
            return (await asyncio.shield(fetch)).credentials
        except asyncio.CancelledError:
            # the request was dropped (forget, close), not this caller
            if fetch.cancelled() and not asyncio.current_task().cancelling():
                raise IdentityError(f"the request for {identity} was dropped (the identity forgotten, "
                                    f"or the store closed)") from None
            raise

    def _fetch(self, identity: SpiffeId) -> asyncio.Future:
        pending = self._pending.get(identity)
        if pending is None:
            pending = self._pending[identity] = asyncio.ensure_future(self._issue_async(identity))

            def done(task: asyncio.Future) -> None:
                # a request forgotten meanwhile may already have a successor
                if self._pending.get(identity) is task:
                    del self._pending[identity]
            pending.add_done_callback(done)
        return pending

    async def _issue_async(self, identity: SpiffeId) -> _Entry:
        issue = getattr(self.issuer, "issue_async", None)
        if issue is None:
            return self._issue(identity)
        asked = self.clock()
        try:
            creds = await issue(identity, lifetime=self.lifetime, now=asked)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling() or not self._wanted(identity):
                raise
            self._failed(identity, f"the request for {identity} was cancelled by the issuer")
            raise IdentityError(self._failures[identity].error) from None
        except Exception as exc:
            if not self._wanted(identity):
                raise IdentityError(f"{identity} was forgotten while its certificate was being fetched") from None
            if isinstance(exc, IdentityError):
                error = str(exc)
            else:
                # a bug or a failure nobody foresaw: retried like any other, never the end
                # of the rotation (or of whoever asked)
                log.error("issuing a certificate for %s failed unexpectedly", identity, exc_info=exc)
                error = f"unexpected failure of the issuer: {type(exc).__name__}: {exc}"
            self._failed(identity, error)
            raise IdentityError(error) from None
        if not self._wanted(identity):
            # forgotten while the issuer answered: nothing of it stays, roots included
            # (the issuer may still show them when it holds no other identity)
            self._forget_in_issuer(identity, follow=False)
            raise IdentityError(f"{identity} was forgotten while its certificate was being fetched")
        self._failures.pop(identity, None)
        self._follow_issuer_bundle()
        return self._keep(identity, creds, since=asked)

    def _wanted(self, identity: SpiffeId) -> bool:
        """Whether the request running now is still the one for `identity`."""
        return self._pending.get(identity) is asyncio.current_task()

    def _follow_issuer_bundle(self) -> None:
        bundle = getattr(self.issuer, "bundle", None)
        if bundle is not None and bundle is not self.bundle:
            self.set_trust_bundle(bundle)

    def _failed(self, identity: SpiffeId, error: str) -> None:
        failure = self._failures.get(identity)
        if failure is None:
            failure = self._failures[identity] = _Failure(error, self.clock(), Backoff(), 0)
        failure.error, failure.attempts = error, failure.attempts + 1
        retry_at = self.clock() + dt.timedelta(seconds=failure.backoff.next())
        entry = self._entries.get(identity)
        if entry is not None and entry.credentials.not_after > self.clock():
            # the certificate in use expiring is the last moment to try again (once it
            # has expired, that moment is past: the backoff alone decides)
            retry_at = min(retry_at, entry.credentials.not_after)
        failure.retry_at = retry_at

    async def rotate_due_async(self) -> list[SpiffeId]:
        """For a remote CA: re-issue every certificate past its rotation point and retry
        every failed request whose backoff has run out, concurrently. A failed renewal
        keeps the old certificate in use until it expires, and is retried with backoff
        (ztunnel's behaviour). Returns the identities that got new credentials; a failure
        is recorded for its retry, never raised."""
        now = self.clock()
        due = [i for i, e in self._entries.items()
               if now >= e.rotate_after and (i not in self._failures or now >= self._failures[i].retry_at)]
        due += [i for i, f in self._failures.items() if i not in self._entries and now >= f.retry_at]
        # what failed is in _failures, and what was cancelled was forgotten: only this
        # call's own cancellation propagates (from the gather)
        results = await asyncio.gather(*(asyncio.shield(self._fetch(i)) for i in due), return_exceptions=True)
        rotated = [i for i, r in zip(due, results) if not isinstance(r, BaseException)]
        self.rotations += len(rotated)
        return rotated

    def next_retry(self) -> dt.datetime | None:
        """When the earliest failed request is to be tried again."""
        return min((f.retry_at for f in self._failures.values()), default=None)

    def next_attempt(self) -> dt.datetime | None:
        """When `rotate_due_async` next has something to do: a rotation point, or for
        an identity whose last request failed, its retry."""
        times = []
        for identity, entry in self._entries.items():
            failure = self._failures.get(identity)
            times.append(entry.rotate_after if failure is None else max(entry.rotate_after, failure.retry_at))
        times += [f.retry_at for i, f in self._failures.items() if i not in self._entries]
        return min(times, default=None)

    def current(self, identity: SpiffeId) -> Credentials | None:
        """The unexpired credentials held for `identity`, without asking the issuer."""
        entry = self._entries.get(identity)
        if entry is not None and self.clock() < entry.credentials.not_after:
            return entry.credentials
        return None

    def state(self, identity: SpiffeId) -> str:
        """ztunnel's certificate states: "Available", "Initializing" (asked for, not
        arrived yet) or "Unavailable: <why>" (the last request failed and no valid
        certificate is held; a retry is scheduled)."""
        if self.current(identity) is not None:
            return "Available"
        failure = self._failures.get(identity)
        if failure is not None:
            return f"Unavailable: {failure.error}"
        return "Initializing"

    async def server_context_async(self, identity: SpiffeId) -> ssl.SSLContext:
        await self.get(identity)
        return self.server_context(identity)

    async def client_context_async(self, identity: SpiffeId) -> ssl.SSLContext:
        await self.get(identity)
        return self.client_context(identity)

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        entry = self._entry(identity)
        if "server" not in entry.contexts:
            entry.contexts["server"] = tls.server_context(entry.credentials, self.bundle,
                                                          allow_tls12=self.allow_tls12)
        return entry.contexts["server"]

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        entry = self._entry(identity)
        if "client" not in entry.contexts:
            entry.contexts["client"] = tls.client_context(entry.credentials, self.bundle,
                                                          allow_tls12=self.allow_tls12)
        return entry.contexts["client"]

    def next_rotation(self) -> dt.datetime | None:
        return min((e.rotate_after for e in self._entries.values()), default=None)

    def rotate_due(self) -> list[SpiffeId]:
        """Re-issue every certificate past its rotation point (and reload changed
        files); returns the identities that got new credentials."""
        now = self.clock()
        rotated = []
        files_changed = isinstance(self.issuer, (FileCredentials, CredentialDirectories)) and self.issuer.changed()
        if files_changed and self.issuer.bundle is not None:
            self.set_trust_bundle(self.issuer.bundle)
        for identity, entry in list(self._entries.items()):
            if files_changed or now >= entry.rotate_after:
                self._issue(identity)
                rotated.append(identity)
        self.rotations += len(rotated)
        return rotated

    def set_trust_bundle(self, bundle: TrustBundle) -> None:
        """New roots (a CA rotation): contexts are rebuilt for new connections."""
        self.bundle = bundle
        for entry in self._entries.values():
            entry.contexts.clear()

    def forget(self, identity: SpiffeId) -> None:
        """Drop everything held for `identity`: credentials, a failure awaiting its
        retry, a request under way (cancelled; an answer arriving anyway is discarded)."""
        self._entries.pop(identity, None)
        self._failures.pop(identity, None)
        pending = self._pending.pop(identity, None)
        if pending is not None:
            pending.cancel()
        self._forget_in_issuer(identity)

    def _forget_in_issuer(self, identity: SpiffeId, *, follow: bool = True) -> None:
        forget = getattr(self.issuer, "forget", None)
        if forget is not None:
            forget(identity)
            if follow:
                # roots that came with the forgotten identity's certificate only are gone
                self._follow_issuer_bundle()

    async def close(self) -> None:
        """Cancel the requests under way and wait for them to end."""
        pending = list(self._pending.values())
        self._pending.clear()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
