"""Tunnels a waypoint does not read as HTTP (`meshcore demo`'s mesh: node-a → waypoint →
node-b): how it tells HTTP/1.1 apart cannot be used to get past its policies. A client
that waits, sends an empty line first or a method of its own is still decided as HTTP
(or refused); a tunnel that is not HTTP is decided by the policies' L4 form, Envoy's
network RBAC: an ALLOW rule's principals still hold, a DENY rule whose only condition
is HTTP (the demo's `paths: ["/admin*"]`) denies every such tunnel."""
import asyncio
import time

import pytest

from meshcore.localmesh import WAYPOINT_POLICY, LocalMesh

pytestmark = pytest.mark.timeout(120)

HOST = "web-l7.shop.svc.cluster.local"
NOT_HTTP = b"\x16\x03\x01\x00\x05hello\r\n\r\n"  # a TLS-like first byte; the lines end for the backend


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = LocalMesh(tmp_path_factory.mktemp("l4"))
    m.start()
    yield m
    codes = m.stop()
    assert codes["waypoint"] == 0, m.log("waypoint")[-3000:]


async def _talk(mesh, data: bytes, *, pause: float = 0.0) -> bytes:
    """What comes back to EOF; b"" when the tunnel is refused (reset or closed unanswered)."""
    reader, writer = await mesh.socks5(mesh.client, HOST, 80)
    try:
        if pause:
            await asyncio.sleep(pause)
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 15)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def talk(mesh, data: bytes, **kw) -> bytes:
    return asyncio.run(_talk(mesh, data, **kw))


def _status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


ADMIN = b"GET /admin/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"


def test_a_client_silent_past_the_sniff_timeout_is_still_denied(mesh):
    assert _status(talk(mesh, ADMIN)) == 403
    answer = talk(mesh, ADMIN, pause=0.7)
    assert _status(answer) in (403, None) and b"admin" not in answer, answer[:200]
    assert answer == b"" or _status(answer) == 403


def test_leading_empty_lines_are_skipped_and_the_request_decided_as_http(mesh):
    assert _status(talk(mesh, b"\r\n" + ADMIN)) == 403
    assert _status(talk(mesh, b"\r\n\r\n\n" + ADMIN)) == 403
    allowed = talk(mesh, b"\r\nGET /h HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert _status(allowed) == 200, allowed[:300]


def test_a_method_outside_the_common_ones_is_decided_as_http(mesh):
    answer = talk(mesh, b"PROPFIND /admin/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 403, answer[:200]


def test_a_deny_rule_with_only_a_path_denies_every_tunnel_that_is_not_http(mesh):
    # Envoy's network RBAC drops the HTTP part of a DENY rule: nothing is left to not match
    assert talk(mesh, NOT_HTTP) == b""
    deadline = time.monotonic() + 5
    while "denied: denied by DENY policy shop/no-admin" not in mesh.log("waypoint"):
        assert time.monotonic() < deadline, mesh.log("waypoint")[-3000:]
        time.sleep(0.1)


def _waypoint_allows(principal: str) -> str:
    return WAYPOINT_POLICY.split("---\n")[0] + f"""---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: callers, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: ALLOW
  rules:
  - from:
    - source: {{principals: ["{principal}"]}}
"""


def _until(mesh, check, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"{what}\n" + mesh.log("waypoint")[-3000:]
        time.sleep(0.2)


def test_an_allow_rule_on_principals_holds_for_a_tunnel_that_is_not_http(mesh):
    try:
        mesh.write_policy(mesh.policy_text().split("---\n")[0] + "---\n" +
                          _waypoint_allows("cluster.local/ns/shop/sa/client"))
        # the backend (an HTTP server) answers what it cannot parse: the tunnel reached it
        _until(mesh, lambda: talk(mesh, NOT_HTTP) != b"", "the client's non-HTTP tunnel was not let through")
        mesh.write_policy(mesh.policy_text().split("---\n")[0] + "---\n" +
                          _waypoint_allows("cluster.local/ns/shop/sa/someone-else"))
        _until(mesh, lambda: _status(talk(mesh, b"GET /h HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")) == 403,
               "the policy change did not apply")
        assert talk(mesh, NOT_HTTP) == b""
        assert talk(mesh, b"GET /h HTTP/1.1\r\nHost: web\r\n", pause=0.7) == b""
        assert "denied: no ALLOW policy matched" in mesh.log("waypoint")
    finally:
        mesh.write_policy(mesh.policy_text())
        _until(mesh, lambda: _status(talk(mesh, ADMIN)) == 403, "the demo policy did not come back")
