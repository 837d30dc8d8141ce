"""The few fields of an X.509 certificate a config dump shows (serial number, validity),
read from its DER without cryptography: a proxy whose certificates are signed in a helper
process answers /config_dump without loading cryptography (~10 MB, kept once loaded).

Certificates reaching here were made or checked by OpenSSL or cryptography already; a
certificate this reader cannot follow raises ValueError.
"""
from __future__ import annotations

import datetime as dt
import ssl

_SEQUENCE, _INTEGER, _EXPLICIT_0 = 0x30, 0x02, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(der):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos:pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _expect(der: bytes, pos: int, tag: int) -> tuple[int, int]:
    got, start, end = _element(der, pos)
    if got != tag:
        raise ValueError(f"DER tag {got:#x} where {tag:#x} was expected")
    return start, end


def _time(der: bytes, pos: int) -> tuple[dt.datetime, int]:
    tag, start, end = _element(der, pos)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME:                      # YYMMDDHHMMSSZ, 1950-2049 (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:            # YYYYMMDDHHMMSSZ
        raise ValueError(f"DER tag {tag:#x} is not a time")
    when = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    return when, end


def certificate_fields(der: bytes) -> tuple[int, dt.datetime, dt.datetime]:
    """(serial number, not before, not after) of one DER certificate."""
    start, _ = _expect(der, 0, _SEQUENCE)            # Certificate
    pos, _ = _expect(der, start, _SEQUENCE)          # TBSCertificate
    tag, _, end = _element(der, pos)
    if tag == _EXPLICIT_0:                           # [0] version
        pos = end
    start, end = _expect(der, pos, _INTEGER)         # serialNumber
    serial = int.from_bytes(der[start:end], "big", signed=True)
    _, pos = _expect(der, end, _SEQUENCE)            # signature algorithm
    _, pos = _expect(der, pos, _SEQUENCE)            # issuer
    pos, _ = _expect(der, pos, _SEQUENCE)            # validity
    not_before, pos = _time(der, pos)
    not_after, _ = _time(der, pos)
    return serial, not_before, not_after


PEM_BEGIN, PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER of each certificate in a PEM text."""
    text = pem.decode("ascii")
    return [ssl.PEM_cert_to_DER_cert(block[block.index(PEM_BEGIN):] + PEM_END)
            for block in text.split(PEM_END) if PEM_BEGIN in block]
