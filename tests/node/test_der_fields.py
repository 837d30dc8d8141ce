"""The serial number and validity /config_dump shows, read from DER without cryptography:
the same as cryptography reads them, for every key type and date form the CA makes, and
the same PEM text."""
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshcore.identity import CertificateAuthority, SpiffeId
from meshcore.identity.der import certificate_fields, pem_certificates
from meshcore.identity.x509util import certs_pem


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize("now", [dt.datetime(2026, 12, 5, 10, 0, 0, tzinfo=dt.timezone.utc),
                                 dt.datetime(2049, 12, 31, 23, 0, 0, tzinfo=dt.timezone.utc),   # GeneralizedTime after 2049
                                 dt.datetime(1999, 6, 1, 0, 0, 0, tzinfo=dt.timezone.utc)])     # UTCTime 19xx
def test_fields_are_cryptographys(key_type, now):
    ca = CertificateAuthority.create("cluster.local", key_type=key_type, now=now)
    creds = ca.issue(SpiffeId("cluster.local", "shop", "web"), key_type=key_type, now=now,
                     lifetime=dt.timedelta(days=400))
    for cert in (*creds.chain, ca.cert):
        der = cert.public_bytes(Encoding.DER)
        assert certificate_fields(der) == (cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)


def test_pem_certificates_split_a_chain_as_cryptography_writes_it():
    ca = CertificateAuthority.create("cluster.local")
    chain = (*ca.issue(SpiffeId("cluster.local", "a", "b")).chain, ca.cert)
    pem = certs_pem(chain)
    ders = pem_certificates(pem)
    assert ders == [c.public_bytes(Encoding.DER) for c in chain]
    assert [x509.load_der_x509_certificate(d) for d in ders] == list(chain)


def test_what_it_cannot_follow_is_a_value_error():
    with pytest.raises(ValueError):
        certificate_fields(b"\x30\x03\x02\x01")
    with pytest.raises(ValueError):
        certificate_fields(b"\x04\x00")
