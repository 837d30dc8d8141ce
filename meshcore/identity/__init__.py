"""Workload identity: SPIFFE ids, a built-in CA, certificate stores and mTLS contexts."""
from meshcore.identity.ca import CertificateAuthority, Credentials, generate_key
from meshcore.identity.spiffe import SpiffeId, identity_of
from meshcore.identity.store import CertificateStore, CredentialDirectories, FileCredentials, TrustBundle
from meshcore.identity.tls import (client_context, handshake_error, refusals, server_context,
                                   verify_client, verify_server)

__all__ = [
    "SpiffeId", "identity_of", "CertificateAuthority", "Credentials", "generate_key",
    "CertificateStore", "CredentialDirectories", "FileCredentials", "TrustBundle", "client_context", "server_context",
    "verify_client", "verify_server", "handshake_error", "refusals",
]
