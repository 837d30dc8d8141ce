"""Request paths as the waypoint decides on and forwards them: Istio's normalization
(https://istio.io/latest/docs/reference/config/security/normalization/) and the forms of
a request-target (RFC 9112 3.2)."""
import pytest

from meshcore.policy.paths import normalize, request_authority, request_path

NORMALIZED = [
    # (path, mode, expected)
    ("/x/%2e%2e/admin", "BASE", "/admin"),
    ("/x/%2E%2E/admin", "BASE", "/admin"),
    ("/x/.%2e/admin", "BASE", "/admin"),
    ("/%61dmin", "BASE", "/admin"),
    ("/%41%44MIN", "BASE", "/ADMIN"),
    ("/some%2fdata/%61%62%63", "BASE", "/some%2fdata/abc"),
    ("/some%2fdata/%61%62%63", "DECODE_AND_MERGE_SLASHES", "/some/data/abc"),
    ("/%2d%2e%5f%7e%30%39", "BASE", "/-._~09"),
    ("/a%20b", "BASE", "/a%20b"),                      # not unreserved: stays encoded
    ("/a%2fb", "BASE", "/a%2fb"),
    ("/a%5cb", "BASE", "/a%5cb"),
    ("/x/..%5cadmin", "DECODE_AND_MERGE_SLASHES", "/admin"),
    ("/%252e%252e/admin", "BASE", "/%252e%252e/admin"),   # decoded once, never twice
    ("/a%zzb", "BASE", "/a%zzb"),
    ("/public/./data/abc/../xyz", "BASE", "/public/data/xyz"),
    ("/some\\data", "BASE", "/some/data"),
    ("/some//data///abc", "BASE", "/some//data///abc"),
    ("/some//data///abc", "MERGE_SLASHES", "/some/data/abc"),
    ("/x/%2e%2e/admin", "NONE", "/x/%2e%2e/admin"),
    ("/foo?v=1", "BASE", "/foo"),
]


@pytest.mark.parametrize("path,mode,expected", NORMALIZED)
def test_normalize(path, mode, expected):
    assert normalize(path, mode) == expected


@pytest.mark.parametrize("mode", ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"])
def test_a_nul_is_refused_in_every_mode(mode):
    with pytest.raises(ValueError, match="%00"):
        normalize("/a%00b", mode)


TARGETS = [
    # (target, method, (path, query), authority)
    ("/admin", "GET", ("/admin", ""), None),
    ("/a/b/../c?q=1&r=%2e", "GET", ("/a/c", "q=1&r=%2e"), None),
    ("/x/%2e%2e/admin?x", "GET", ("/admin", "x"), None),
    ("/%61dmin", "GET", ("/admin", ""), None),
    ("http://web/admin?x", "GET", ("/admin", "x"), "web"),
    ("HTTPS://web:8443/a/../admin", "GET", ("/admin", ""), "web:8443"),
    ("http://web", "GET", ("/", ""), "web"),
    ("http://web?x=1", "GET", ("/", "x=1"), "web"),
    ("*", "OPTIONS", ("*", ""), None),
    ("//web/admin", "GET", ("//web/admin", ""), None),      # origin-form: a path, no authority
]


@pytest.mark.parametrize("target,method,expected,authority", TARGETS)
def test_request_path(target, method, expected, authority):
    assert request_path(target, method=method) == expected
    assert request_authority(target) == authority


REFUSED = [
    ("*", "GET", "OPTIONS"),
    ("web:443", "CONNECT", "neither origin-form nor absolute-form"),
    ("admin", "GET", "neither origin-form nor absolute-form"),
    ("ftp://web/admin", "GET", "neither origin-form nor absolute-form"),
    ("http:///admin", "GET", "without a host"),
    ("http://user@web/admin", "GET", "userinfo"),
    ("/a%00b", "GET", "%00"),
    ("http://web/a%00", "GET", "%00"),
    ("/admin#x", "GET", "fragment"),
    ("/a b", "GET", "holds"),
    ("/a\x7fb", "GET", "holds"),
    ("/\u00e9", "GET", "holds"),
    ("", "GET", "empty"),
]


@pytest.mark.parametrize("target,method,reason", REFUSED)
def test_request_path_refuses(target, method, reason):
    with pytest.raises(ValueError, match=reason.replace("*", r"\*")):
        request_path(target, method=method)
