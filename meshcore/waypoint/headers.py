"""The header fields a request and its response carry through the waypoint, whichever
HTTP version each side speaks:

    forwarded_headers   hop-by-hop removed, x-request-id added when absent, W3C
                        traceparent continued with a new span id (started when absent),
                        x-forwarded-proto
    h2_fields           what may cross into HTTP/2 (RFC 9113 8.2.2: no connection-specific
                        fields; host travels as :authority)
    policy_headers      the map a policy decides on
"""
from __future__ import annotations

import os
import re
import uuid

from meshcore.l7.http1 import strip_hop_by_hop

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# RFC 9113 8.2.2: never in HTTP/2 (te only as "trailers", which strip_hop_by_hop keeps);
# host: :authority carries it
_NOT_IN_HTTP2 = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"})


def continued_traceparent(value: str | None) -> str:
    """The trace a request carries, continued with a new span id for this hop (W3C trace
    context); a new trace when it carries none or a malformed one."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    if m is None or m.group(1) == "ff" or set(m.group(2)) == {"0"}:
        return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"
    return f"{m.group(1)}-{m.group(2)}-{os.urandom(8).hex()}-{m.group(4)}"


def forwarded_headers(headers: list[tuple[str, str]], *, upgrade: bool) -> tuple[list[tuple[str, str]], str]:
    """The request headers sent upstream, and its request id."""
    out = strip_hop_by_hop(headers, upgrade=upgrade)
    request_id = next((v for n, v in out if n == "x-request-id"), None)
    if request_id is None:
        request_id = str(uuid.uuid4())
        out.append(("x-request-id", request_id))
    trace = continued_traceparent(next((v for n, v in out if n == "traceparent"), None))
    out = [(n, v) for n, v in out if n not in ("traceparent", "x-forwarded-proto")]
    out += [("traceparent", trace), ("x-forwarded-proto", "http")]
    return out, request_id


def policy_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The header map a policy sees: a repeated header's values joined with "," as Envoy
    presents them to RBAC, so a second value cannot hide the first."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def text_fields(fields) -> list[tuple[str, str]]:
    """HTTP/2 header fields (bytes or str) as text."""
    return [(n.decode("latin-1") if isinstance(n, bytes) else n, v.decode("latin-1") if isinstance(v, bytes) else v)
            for n, v in fields]


def h2_fields(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields that may go on in HTTP/2."""
    return [(n, v) for n, v in fields if n not in _NOT_IN_HTTP2 and not (n == "te" and v.lower() != "trailers")]


def grpc_status(fields) -> str:
    return next((v for n, v in fields if n == "grpc-status"), "")
