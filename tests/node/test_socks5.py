"""SOCKS5 parsing (RFC 1928), byte by byte."""
import pytest

from meshcore.node import socks5
from meshcore.node.socks5 import Socks5Error, parse_greeting, parse_request, reply


def test_greeting():
    assert parse_greeting(b"\x05") is None
    assert parse_greeting(b"\x05\x02\x00") is None                    # announces two methods
    assert parse_greeting(b"\x05\x02\x00\x02") == (4, b"\x00\x02")
    with pytest.raises(Socks5Error, match="not SOCKS5"):
        parse_greeting(b"\x04\x01\x00")
    with pytest.raises(Socks5Error, match="no authentication method"):
        parse_greeting(b"\x05\x00")


@pytest.mark.parametrize("data, expected", [
    (b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50", (10, "10.0.0.1", 80)),
    (b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x1f\x90", (22, "::1", 8080)),
    (b"\x05\x01\x00\x03\x0bexample.com\x01\xbb", (18, "example.com", 443)),
])
def test_request(data, expected):
    assert parse_request(data) == expected
    for cut in range(len(data)):                  # any prefix just asks for more
        assert parse_request(data[:cut]) is None


@pytest.mark.parametrize("data, code, message", [
    (b"\x05\x02\x00\x01\x0a\x00\x00\x01\x00\x50", socks5.COMMAND_NOT_SUPPORTED, "CONNECT only"),   # BIND
    (b"\x05\x03\x00\x01\x0a\x00\x00\x01\x00\x50", socks5.COMMAND_NOT_SUPPORTED, "CONNECT only"),   # UDP
    (b"\x05\x01\x00\x05\x0a\x00\x00\x01\x00\x50", socks5.ADDRESS_NOT_SUPPORTED, "address type 5"),
    (b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x00", socks5.ADDRESS_NOT_SUPPORTED, "port 0"),
    (b"\x05\x01\x00\x03\x00\x00\x50", socks5.ADDRESS_NOT_SUPPORTED, "empty domain name"),
    (b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", socks5.ADDRESS_NOT_SUPPORTED, "not ASCII"),
    (b"\x04\x01\x00\x01\x0a\x00\x00\x01\x00\x50", socks5.GENERAL_FAILURE, "version byte 4"),
])
def test_bad_request(data, code, message):
    with pytest.raises(Socks5Error, match=message) as err:
        parse_request(data)
    assert err.value.reply == code


def test_reply():
    assert reply(socks5.SUCCEEDED, ("127.0.0.1", 15080)) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x3a\xe8"
    assert reply(socks5.REFUSED, ("::1", 1))[:4] == b"\x05\x05\x00\x04"
