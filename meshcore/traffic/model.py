"""Gateway API routes as meshcore models them: HTTPRoute, GRPCRoute and ReferenceGrant
(gateway.networking.k8s.io), with the defaults the CRDs would have filled in already
applied (gateway_api.py reads them), and what resolving them against the mesh's
services found (conditions, per backend validity).

Every object is frozen and compared by value, like the rest of the mesh model: a source
that sends the same route again changes nothing. Durations are seconds (float); a
regular expression is kept as written and compiled once, beside it, at load.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

GATEWAY_GROUP = "gateway.networking.k8s.io"


class PathMatchType(StrEnum):
    EXACT = "Exact"
    PATH_PREFIX = "PathPrefix"
    REGULAR_EXPRESSION = "RegularExpression"


class ValueMatchType(StrEnum):
    """How a header, query parameter or gRPC service/method value is compared."""
    EXACT = "Exact"
    REGULAR_EXPRESSION = "RegularExpression"


class FilterType(StrEnum):
    REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
    RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
    REQUEST_REDIRECT = "RequestRedirect"
    URL_REWRITE = "URLRewrite"
    REQUEST_MIRROR = "RequestMirror"
    CORS = "CORS"
    EXTERNAL_AUTH = "ExternalAuth"
    EXTENSION_REF = "ExtensionRef"


class PathModifierType(StrEnum):
    REPLACE_FULL_PATH = "ReplaceFullPath"
    REPLACE_PREFIX_MATCH = "ReplacePrefixMatch"


class RouteKind(StrEnum):
    HTTP = "HTTPRoute"
    GRPC = "GRPCRoute"


# -- references ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParentRef:
    """Where a route attaches. For the mesh: `kind: Service, group: ""` (istiod also
    takes "core" for the group)."""
    name: str
    namespace: str                    # the route's own when the reference leaves it out
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    section_name: str = ""
    port: int | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in ("", "core")


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A backend of a rule (or a mirror's target). `port` is required for a Service
    (the CRD refuses one without)."""
    name: str
    namespace: str                    # the route's own when the reference leaves it out
    port: int | None = None
    group: str = ""
    kind: str = "Service"
    weight: int = 1
    filters: tuple = ()               # per-backend filters (the Filter classes below)

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in ("", "core")


# -- matches ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PathMatch:
    type: PathMatchType = PathMatchType.PATH_PREFIX
    # a PathPrefix keeps its trailing slash as written; matching ignores it
    value: str = "/"
    regex: re.Pattern | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """One header, query parameter or gRPC header condition. Header names are kept in
    lower case (they compare case-insensitively); query parameter names as written."""
    name: str
    value: str
    type: ValueMatchType = ValueMatchType.EXACT
    regex: re.Pattern | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    """The conditions of one match, AND'ed."""
    path: PathMatch = PathMatch()
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    """Empty service or method: any."""
    type: ValueMatchType = ValueMatchType.EXACT
    service: str = ""
    method: str = ""
    service_regex: re.Pattern | None = field(default=None, compare=False, repr=False)
    method_regex: re.Pattern | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None          # None: every service and method
    headers: tuple[ValueMatch, ...] = ()


# -- filters -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """set/add as (name, value) with the first of equal names (any case) kept; names
    lower case; remove as lower-case names."""
    type: FilterType
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: PathModifierType
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str | None = None          # None: the request's
    hostname: str | None = None        # None: the request's Host
    path: PathModifier | None = None
    port: int | None = None            # None: derived (see Gateway API's HTTPRequestRedirectFilter.port)
    status_code: int = 302
    type: FilterType = FilterType.REQUEST_REDIRECT


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str | None = None
    path: PathModifier | None = None
    type: FilterType = FilterType.URL_REWRITE


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend: BackendRef
    percent: float = 100.0             # percent, or fraction turned into a percentage
    type: FilterType = FilterType.REQUEST_MIRROR


@dataclass(frozen=True, slots=True)
class Cors:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 5
    type: FilterType = FilterType.CORS


@dataclass(frozen=True, slots=True)
class UnsupportedFilter:
    """A filter the CRD accepts but meshcore (like istiod) cannot apply: ExtensionRef,
    ExternalAuth. The route is kept with a condition saying so, and not attached."""
    type: FilterType
    detail: str = ""


# -- rules and routes ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None: not set. 0 disables the timeout (istiod sets none then)."""
    request: float | None = None
    backend_request: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Gateway API's retry stanza. What istiod makes of it (and meshcore with it):
    `attempts` unset means 2; the retried conditions are connect-failure,
    refused-stream, unavailable and cancelled plus the listed status codes; 0 attempts
    retries nothing."""
    attempts: int | None = None
    codes: tuple[int, ...] = ()
    backoff: float | None = None

    ISTIO_DEFAULT_ATTEMPTS = 2
    RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled")

    @property
    def effective_attempts(self) -> int:
        return self.ISTIO_DEFAULT_ATTEMPTS if self.attempts is None else self.attempts

    @property
    def retry_on(self) -> tuple[str, ...]:
        """Envoy's retry conditions istiod sets: the connection failures, then the codes."""
        return self.RETRY_ON + tuple(str(c) for c in self.codes)


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    name: str = ""

    @property
    def redirect(self) -> RequestRedirect | None:
        return next((f for f in self.filters if isinstance(f, RequestRedirect)), None)

    @property
    def deadlines(self) -> tuple[float | None, float | None]:
        """(the request's timeout, each attempt's timeout) in seconds, None for none, as
        istiod converts `timeouts`: a zero request timeout sets none; backendRequest
        bounds each attempt when the rule has a retry stanza, and otherwise replaces
        the request timeout."""
        request = per_try = None
        if self.timeouts is not None:
            request = self.timeouts.request or None
            if self.timeouts.backend_request:
                if self.retry is not None:
                    per_try = self.timeouts.backend_request
                else:
                    request = self.timeouts.backend_request
        return request, per_try


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = (GRPCRouteMatch(),)
    filters: tuple = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str = ""

    redirect = None                    # GRPCRoute has no redirect filter


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str
    namespace: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)
    created: datetime | None = None    # metadata.creationTimestamp: precedence between routes
    kind = RouteKind.HTTP

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    name: str
    namespace: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = (GRPCRouteRule(),)
    created: datetime | None = None
    kind = RouteKind.GRPC

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str = ""                     # empty: every resource of the kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    """Lets resources of `from_` kinds in other namespaces refer to `to` resources in
    this grant's namespace."""
    name: str
    namespace: str
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def permits(self, from_kind: str, from_namespace: str, to_kind: str, to_name: str) -> bool:
        """Whether a `from_kind` (Gateway API group) in `from_namespace` may refer to the
        core `to_kind` named `to_name` in this namespace."""
        return (any(f.group == GATEWAY_GROUP and f.kind == from_kind and f.namespace == from_namespace
                    for f in self.from_)
                and any(t.group in ("", "core") and t.kind == to_kind and t.name in ("", to_name) for t in self.to))


# -- what resolution found ---------------------------------------------------------------

class ConditionType(StrEnum):
    ACCEPTED = "Accepted"
    RESOLVED_REFS = "ResolvedRefs"
    RESOLVED_WAYPOINTS = "ResolvedWaypoints"   # istiod's own, in ambient mode


class Reason(StrEnum):
    """Gateway API's route condition reasons, and istiod's where it uses its own."""
    ACCEPTED = "Accepted"
    NO_MATCHING_PARENT = "NoMatchingParent"
    UNSUPPORTED_VALUE = "UnsupportedValue"
    RESOLVED_REFS = "ResolvedRefs"
    BACKEND_NOT_FOUND = "BackendNotFound"
    REF_NOT_PERMITTED = "RefNotPermitted"
    INVALID_KIND = "InvalidKind"
    INVALID_FILTER = "InvalidFilter"              # istiod's
    INVALID_DESTINATION = "InvalidDestination"    # istiod's
    RESOLVED_WAYPOINTS = "ResolvedWaypoints"      # istiod's
    MISSING_USE_WAYPOINT_LABEL = "MissingUseWaypointLabel"


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType
    status: bool
    reason: Reason
    message: str = ""


@dataclass(frozen=True, slots=True)
class ParentStatus:
    """A route's conditions for one of its parentRefs, as istiod would write them in
    `status.parents[]`."""
    parent: ParentRef
    conditions: tuple[Condition, ...]

    @property
    def accepted(self) -> bool:
        return all(c.status for c in self.conditions if c.type is ConditionType.ACCEPTED)


@dataclass(frozen=True, slots=True)
class ResolvedBackend:
    """A backendRef as resolution found it: the service it names (namespace/hostname,
    the mesh store's key), or why it is invalid (the request it would have taken is
    answered 500)."""
    ref: BackendRef
    service_key: str | None = None
    problem: Reason | None = None
    message: str = ""

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def weight(self) -> int:
        return self.ref.weight


@dataclass(frozen=True, slots=True)
class ResolvedRule:
    """A rule with its backends and mirrors resolved. `backends` keeps every
    backendRef, weight 0 included (never chosen); `mirrors` only those that resolved."""
    rule: HTTPRouteRule | GRPCRouteRule
    index: int
    backends: tuple[ResolvedBackend, ...]
    mirrors: tuple[tuple[RequestMirror, str], ...] = ()    # (filter, service key)

    @property
    def answers_500(self) -> bool:
        """No backend carries weight and the rule does not redirect: istiod answers the
        rule's requests with a 500."""
        return self.rule.redirect is None and not any(b.weight > 0 for b in self.backends)


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A route as /config_dump shows it: its conditions per parent, and its rules
    resolved (empty when the route could not be converted at all)."""
    route: HTTPRoute | GRPCRoute
    parents: tuple[ParentStatus, ...]
    rules: tuple[ResolvedRule, ...] = ()

    @property
    def key(self) -> str:
        return self.route.key

    @property
    def kind(self) -> RouteKind:
        return self.route.kind
