"""CORS on a route, as Envoy's CORS filter applies the policy istiod writes into the
route (a VirtualService route's `corsPolicy`, or a Gateway API `CORS` filter converted
to one): pure functions of the policy and the request.

    cors(policy, method, headers) ─► None          nothing to do: no Origin, an origin the
                                                   policy does not allow on an actual
                                                   request, or a preflight it does not allow
                                                   that goes on to the backend (FORWARD)
                                  ─► Preflight     the waypoint answers 200 itself, with
                                                   these headers and no body
                                  ─► Actual        headers set on the response, whoever
                                                   answers it

A preflight is an OPTIONS with a non-empty Origin and Access-Control-Request-Method.
Envoy answers one whose origin the policy allows, and also one it does not allow when
`unmatchedPreflights: IGNORE` (then without Access-Control-Allow-Origin, so the
browser refuses the actual request). An actual request with an allowed Origin gets the
origin echoed, Access-Control-Allow-Credentials and Access-Control-Expose-Headers on its
response, in place of any the backend or the route's header edits wrote. A route that
redirects or answers directly has no route entry, which Envoy's filter needs: the route
decisions (decide.py, decide_istio.py) ask here only for routes with a destination.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from meshcore.traffic.istio_model import CorsPolicy, MatchKind, StringMatch, UnmatchedPreflights
from meshcore.traffic.model import Cors

ALLOW_ORIGIN = "access-control-allow-origin"
ALLOW_CREDENTIALS = "access-control-allow-credentials"
ALLOW_METHODS = "access-control-allow-methods"
ALLOW_HEADERS = "access-control-allow-headers"
MAX_AGE = "access-control-max-age"
EXPOSE_HEADERS = "access-control-expose-headers"
REQUEST_METHOD = "access-control-request-method"
REQUEST_HEADERS = "access-control-request-headers"

# what istiod writes for a Gateway API origin of `*`: a well-formed origin, scheme://host[:port]
# (RE2's \s is these five characters, not Python's)
_ANY_ORIGIN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\t\n\f\r ?#]+$"


@dataclass(frozen=True, slots=True)
class Preflight:
    """The waypoint's own answer to a preflight: 200 with these headers, no body."""
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Actual:
    """Headers set on the response to an actual request from an allowed origin, over
    any of the same names the backend or the route's header edits wrote (Envoy's CORS
    filter encodes after the router has added the route's)."""
    headers: tuple[tuple[str, str], ...]


def cors(policy: CorsPolicy | None, method: str, headers: Mapping[str, str]) -> Preflight | Actual | None:
    """What the route's CORS policy does with a request (`headers`: lower-case names,
    repeated values joined with ",")."""
    if policy is None:
        return None
    origin = headers.get("origin", "")
    if not origin:
        return None
    allowed = origin_allowed(policy, origin)
    if method == "OPTIONS" and headers.get(REQUEST_METHOD):
        if not allowed and policy.unmatched_preflights is not UnmatchedPreflights.IGNORE:
            return None
        return Preflight(preflight_headers(policy, origin if allowed else "", headers))
    if not allowed:
        return None
    return Actual(actual_headers(policy, origin))


def allowed_origins(policy: CorsPolicy) -> tuple[StringMatch, ...]:
    """`allowOrigins`; without any, the deprecated `allowOrigin` as exact matches (istiod's
    choice)."""
    if policy.allow_origins:
        return policy.allow_origins
    return tuple(StringMatch(MatchKind.EXACT, o) for o in policy.allow_origin)


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    # Envoy also lets any origin through a matcher that takes "*" itself
    return any(m.matches("*") or m.matches(origin) for m in allowed_origins(policy))


def preflight_headers(policy: CorsPolicy, origin: str, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Envoy's preflight answer; `origin` "" for one the policy does not allow. A `*`
    among the methods or headers echoes what the browser asked for."""
    out = []
    if origin:
        out.append((ALLOW_ORIGIN, origin))
    if policy.allow_credentials:
        out.append((ALLOW_CREDENTIALS, "true"))
    methods = ",".join(policy.allow_methods)
    if methods:
        out.append((ALLOW_METHODS, headers.get(REQUEST_METHOD, "") if methods == "*" else methods))
    allow = ",".join(policy.allow_headers)
    if allow:
        out.append((ALLOW_HEADERS, headers.get(REQUEST_HEADERS, "") if allow == "*" else allow))
    if policy.max_age is not None:
        out.append((MAX_AGE, str(int(policy.max_age))))
    return tuple(out)


def actual_headers(policy: CorsPolicy, origin: str) -> tuple[tuple[str, str], ...]:
    out = [(ALLOW_ORIGIN, origin)]
    if policy.allow_credentials:
        out.append((ALLOW_CREDENTIALS, "true"))
    if policy.expose_headers:
        out.append((EXPOSE_HEADERS, ",".join(policy.expose_headers)))
    return tuple(out)


@lru_cache(maxsize=256)
def gateway_cors(f: Cors) -> CorsPolicy:
    """A Gateway API CORS filter as istiod converts it: an origin without `*` is exact,
    one ending in its only `*` a prefix, `*` alone any well-formed origin, any other `*`
    matches anything there; unmatched preflights are answered, not forwarded."""
    origins = []
    for origin in f.allow_origins:
        if origin == "*":
            origins.append(_regex(_ANY_ORIGIN))
        elif "*" not in origin:
            origins.append(StringMatch(MatchKind.EXACT, origin))
        elif origin.count("*") == 1 and origin.endswith("*"):
            origins.append(StringMatch(MatchKind.PREFIX, origin[:-1]))
        else:
            origins.append(_regex("^" + re.escape(origin).replace(r"\*", ".*") + "$"))
    return CorsPolicy(allow_origins=tuple(origins), allow_methods=f.allow_methods, allow_headers=f.allow_headers,
                      expose_headers=f.expose_headers, max_age=float(f.max_age) if f.max_age > 0 else None,
                      allow_credentials=True if f.allow_credentials else None,
                      unmatched_preflights=UnmatchedPreflights.IGNORE)


def _regex(pattern: str) -> StringMatch:
    return StringMatch(MatchKind.REGEX, pattern, re.compile(pattern))
