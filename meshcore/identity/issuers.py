"""Where a proxy's workload certificates come from, chosen once from its options (the
node proxy and the waypoint share the choice): the Istio CA, files written by
cert-manager or a SPIRE agent (`--cert-dir`), a CA directory (`--ca-dir`), or the
built-in CA, created on first start in the state directory."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from typing import TYPE_CHECKING

from meshcore.errors import IdentityError
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.store import CredentialDirectories

if TYPE_CHECKING:
    from meshcore.identity.ca import CertificateAuthority

log = logging.getLogger("meshcore.identity")


def default_state_dir() -> Path:
    """Where the built-in CA lives without --state-dir or $MESHCORE_STATE_DIR: the XDG
    state directory ($XDG_STATE_HOME/meshcore, else ~/.local/state/meshcore), never the
    directory the proxy happens to start in (a checkout, where a CA key could be committed)."""
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "meshcore"


def choose_issuer(*, ca_dir: str | None, cert_dir: str | None, state_dir: str | None, trust_domain: str,
                  control_plane=None, own_identity: SpiffeId | None = None, helper_process: bool = False):
    """(issuer, trust domain). The Istio CA when the control plane names one and no
    directory says otherwise; IdentityError for files that cannot serve. helper_process:
    a CA directory (or the built-in CA) signs in a helper process (identity/helper.py),
    so that this one never loads cryptography for it."""
    if control_plane is not None and control_plane.ca_address and not (ca_dir or cert_dir):
        from meshcore.xds.ca import IstioCaClient
        return IstioCaClient(control_plane, trust_domain, own_identity=own_identity), trust_domain
    if cert_dir:
        files = CredentialDirectories(cert_dir)
        if files.bundle is None:
            raise IdentityError(f"{cert_dir}: no trust bundle (ca.crt, svid_bundle.pem or root-cert.pem) "
                                "beside the certificates")
        domains = {i.trust_domain for i in files.identities}
        if len(domains) != 1:
            raise IdentityError(f"{cert_dir}: certificates of several trust domains ({', '.join(sorted(domains))})")
        return files, domains.pop()
    if helper_process:
        from meshcore.identity.helper import CaHelper
        helper = CaHelper(ca_dir=ca_dir, state_dir=state_dir, trust_domain=trust_domain)
        return helper, helper.trust_domain
    ca = certificate_authority(ca_dir, state_dir, trust_domain)
    return ca, ca.trust_domain


def state_dir_of(state_dir: str | os.PathLike | None) -> Path:
    """--state-dir, else $MESHCORE_STATE_DIR, else the XDG state directory."""
    return Path(state_dir or os.environ.get("MESHCORE_STATE_DIR") or default_state_dir())


def certificate_authority(ca_dir: str | None, state_dir: str | None, trust_domain: str) -> CertificateAuthority:
    from meshcore.identity.ca import CertificateAuthority       # imported here: signing needs cryptography
    if ca_dir:
        return CertificateAuthority.load(ca_dir)
    directory = state_dir_of(state_dir) / "ca"
    if (directory / "ca-cert.pem").exists():
        return CertificateAuthority.load(directory)
    ca = CertificateAuthority.create(trust_domain)
    ca.save(directory)
    log.info("created a built-in CA for trust domain %s in %s", trust_domain, directory)
    return ca
