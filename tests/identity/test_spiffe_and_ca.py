"""SPIFFE id parsing and the built-in CA's certificates."""
import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.errors import IdentityError
from meshcore.identity import CertificateAuthority, SpiffeId, identity_of


def test_parse_and_format():
    s = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/frontend")
    assert (s.trust_domain, s.namespace, s.service_account) == ("cluster.local", "shop", "frontend")
    assert str(s) == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert s.principal == "cluster.local/ns/shop/sa/frontend"
    assert SpiffeId.from_principal(s.principal) == s


@pytest.mark.parametrize("uri,why", [
    ("https://cluster.local/ns/a/sa/b", "must start with spiffe://"),
    ("spiffe://cluster.local/ns/a/sa", "segments"),
    ("spiffe://cluster.local/ns/a/sa/b/c", "segments"),
    ("spiffe://cluster.local/namespace/a/sa/b", "form"),
    ("spiffe://cluster.local/ns/a/serviceaccount/b", "form"),
    ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
    ("spiffe:///ns/a/sa/b", "trust domain"),
    ("spiffe://cluster.local/ns//sa/b", "namespace"),
    ("spiffe://cluster.local/ns/a/sa/..", "service account"),
    ("spiffe://cluster.local/ns/a b/sa/c", "namespace"),
])
def test_parse_is_strict(uri, why):
    with pytest.raises(IdentityError, match=why):
        SpiffeId.parse(uri)


def test_workload_certificate_shape(ca, alice):
    creds = ca.issue(alice)
    cert = creds.certificate
    assert identity_of(cert) == alice
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [alice.uri]
    assert san.value.get_values_for_type(x509.DNSName) == []
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    life = creds.not_after - creds.not_before
    assert dt.timedelta(hours=24) <= life <= dt.timedelta(hours=24, minutes=2)
    cert.verify_directly_issued_by(ca.cert)


def test_ca_refuses_other_trust_domain(ca):
    with pytest.raises(IdentityError, match="cannot issue"):
        ca.issue(SpiffeId("other.local", "a", "b"))


def test_ca_save_load_with_safe_permissions(ca, tmp_path, alice):
    ca.save(tmp_path / "ca")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    assert mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert mode(tmp_path / "ca") == 0o700
    assert mode(tmp_path / "ca" / "root-cert.pem") == 0o644
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.trust_domain == "cluster.local"
    loaded.issue(alice).certificate.verify_directly_issued_by(ca.cert)


def test_load_refuses_mismatched_key(ca, other_ca, tmp_path):
    ca.save(tmp_path)
    other_ca.save(tmp_path / "o")
    (tmp_path / "ca-key.pem").write_bytes((tmp_path / "o" / "ca-key.pem").read_bytes())
    with pytest.raises(IdentityError, match="does not match"):
        CertificateAuthority.load(tmp_path)


def test_load_names_missing_files(tmp_path):
    with pytest.raises(IdentityError, match="ca-cert.pem: missing"):
        CertificateAuthority.load(tmp_path)


def test_identity_of_certificates_without_spiffe(ca):
    from cryptography.hazmat.primitives import hashes
    from meshcore.identity.ca import generate_key
    import datetime as dt
    key = generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    base = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1)))
    no_san = base.sign(ca.key, hashes.SHA256())
    with pytest.raises(IdentityError, match="no subjectAltName"):
        identity_of(no_san)
    dns_only = base.add_extension(x509.SubjectAlternativeName([x509.DNSName("a.b")]), True).sign(ca.key, hashes.SHA256())
    with pytest.raises(IdentityError, match="no SPIFFE URI SAN"):
        identity_of(dns_only)
