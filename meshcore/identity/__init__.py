"""Workload identity: SPIFFE ids, a built-in CA, certificate stores and mTLS contexts."""

# where each name lives; a module is imported when one of its names is first used, so
# that SPIFFE ids and TLS contexts do not load cryptography (~10 MB), which only
# signing and parsing certificates need
_NAMES = {
    "SpiffeId": "spiffe", "identity_of": "spiffe",
    "CertificateAuthority": "ca", "generate_key": "ca",
    "Credentials": "credentials", "PemCredentials": "credentials",
    "CertificateStore": "store", "CredentialDirectories": "store", "FileCredentials": "store", "TrustBundle": "store",
    "client_context": "tls", "server_context": "tls", "verify_client": "tls", "verify_server": "tls",
    "handshake_error": "tls", "refusals": "tls", "HboneContext": "tls",
}

__all__ = [
    "SpiffeId", "identity_of", "CertificateAuthority", "Credentials", "generate_key",
    "CertificateStore", "CredentialDirectories", "FileCredentials", "TrustBundle", "client_context", "server_context",
    "verify_client", "verify_server", "handshake_error", "refusals", "HboneContext",
]


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcore.identity' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"meshcore.identity.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
