"""Istio's VirtualService and DestinationRule as meshcore models them.

Parsers (virtualservice.py, destinationrule.py) build these from YAML with istiod's
validation; decision functions read them. Every object is frozen and compared by
value. Durations are seconds (float), percentages 0-100 (float), header names in
match conditions lowercase (HTTP header names are case-insensitive).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from meshcore.traffic.locality import LocalityLbSetting

Labels = tuple[tuple[str, str], ...]


# -- requests ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What route selection reads from a request arriving at the waypoint."""
    method: str
    path: str                                  # the :path as received, query included
    authority: str = ""
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()  # as received; names in any case
    port: int = 0                              # the service port the request was sent to


# -- string matching ---------------------------------------------------------------------

class MatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"        # `{}` or a missing value: the header or parameter is there at all


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: MatchKind
    value: str = ""
    pattern: re.Pattern | None = field(default=None, compare=False, repr=False)

    def matches(self, text: str, *, ignore_case: bool = False) -> bool:
        """Whether a present value matches (absence is the caller's to decide).
        `ignore_case` applies to exact and prefix only, as Envoy's case_sensitive does."""
        if self.kind is MatchKind.PRESENT:
            return True
        if self.kind is MatchKind.REGEX:
            return self.pattern.fullmatch(text) is not None
        value = self.value
        if ignore_case:
            text, value = text.lower(), value.lower()
        if self.kind is MatchKind.EXACT:
            return text == value
        return text.startswith(value)


# -- VirtualService ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HTTPMatch:
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()          # lowercase names
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None
    source_labels: Labels = ()
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()
    ignore_uri_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


@dataclass(frozen=True, slots=True)
class Destination:
    host: str                       # fully qualified (short names resolved in the resource's namespace)
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class RouteDestination:
    destination: Destination
    weight: int = 0
    headers: Headers | None = None


class DerivePort(StrEnum):
    FROM_PROTOCOL_DEFAULT = "FROM_PROTOCOL_DEFAULT"
    FROM_REQUEST_PORT = "FROM_REQUEST_PORT"


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str = ""
    prefix_rewrite: str = ""
    authority: str = ""
    port: int | None = None
    derive_port: DerivePort | None = None
    scheme: str = ""
    code: int = 301                 # Istio's default: MOVED_PERMANENTLY


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    pattern: re.Pattern = field(compare=False)
    match: str = ""
    rewrite: str = ""


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str = ""                   # replaces the matched prefix (Envoy's prefix_rewrite)
    authority: str = ""
    uri_regex: RegexRewrite | None = None


@dataclass(frozen=True, slots=True)
class HTTPRetry:
    """A route's `retries` as written; retry.py turns it into the policy Envoy applies."""
    attempts: int
    per_try_timeout: float | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: float | None = None


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed_delay: float
    percentage: float               # 0 when neither percentage nor percent is given: nothing is delayed


@dataclass(frozen=True, slots=True)
class FaultAbort:
    percentage: float               # 0 without a percentage: nothing is aborted
    http_status: int | None = None
    grpc_status: str | None = None  # a gRPC code name (UNAVAILABLE, ...)
    grpc_code: int | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: Destination
    percentage: float = 100.0       # a mirror without a percentage mirrors everything


class UnmatchedPreflights(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"     # istiod programs FORWARD
    FORWARD = "FORWARD"
    IGNORE = "IGNORE"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """A route's `corsPolicy` as written (traffic/cors.py decides with it)."""
    allow_origins: tuple[StringMatch, ...] = ()
    allow_origin: tuple[str, ...] = ()       # deprecated exact origins, read when allow_origins is empty
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None             # whole seconds
    allow_credentials: bool | None = None
    unmatched_preflights: UnmatchedPreflights | None = None     # None, UNSPECIFIED: FORWARD


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str = ""
    matches: tuple[HTTPMatch, ...] = ()      # empty: matches every request
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None             # None: no timeout (Istio's default)
    retries: HTTPRetry | None = None         # None: the mesh's default retry policy
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()         # `mirror` + `mirrorPercentage` and `mirrors`, in order
    headers: Headers | None = None
    cors_policy: CorsPolicy | None = None


@dataclass(frozen=True, slots=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    # tcp and tls routes are kept as written: the waypoint's HTTP path does not apply them
    tcp: tuple = field(default=(), hash=False)
    tls: tuple = field(default=(), hash=False)
    export_to: tuple[str, ...] = ()
    creation_timestamp: str = ""             # RFC 3339 as Kubernetes writes it; "" sorts first

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def applies_to_mesh(self) -> bool:
        """Whether the `mesh` gateway (the sidecars and waypoints) takes this VirtualService:
        explicitly, or implied by naming no gateway."""
        return not self.gateways or "mesh" in self.gateways


# -- DestinationRule ---------------------------------------------------------------------

class SimpleLB(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"     # Istio picks LEAST_REQUEST
    LEAST_CONN = "LEAST_CONN"       # deprecated alias of LEAST_REQUEST
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"


class HashKey(StrEnum):
    HEADER = "httpHeaderName"
    COOKIE = "httpCookie"
    SOURCE_IP = "useSourceIp"
    QUERY_PARAMETER = "httpQueryParameterName"


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    key: HashKey
    name: str = ""                   # header, cookie or query parameter name
    cookie_path: str = ""
    cookie_ttl: float | None = None
    maglev_table_size: int | None = None     # None: ring hash
    ring_minimum_size: int = 1024            # Envoy's default minimum ring size


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    simple: SimpleLB = SimpleLB.UNSPECIFIED
    consistent_hash: ConsistentHash | None = None
    locality: LocalityLbSetting | None = None          # localityLbSetting: traffic/locality.py

    @property
    def algorithm(self) -> SimpleLB:
        """What Envoy runs for `simple` (the consistent hash aside): Istio's default and the
        deprecated LEAST_CONN are LEAST_REQUEST."""
        if self.simple in (SimpleLB.UNSPECIFIED, SimpleLB.LEAST_CONN):
            return SimpleLB.LEAST_REQUEST
        return self.simple


@dataclass(frozen=True, slots=True)
class TCPSettings:
    max_connections: int | None = None       # None: Envoy's 2^32-1
    connect_timeout: float | None = None
    max_connection_duration: float | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Http2KeepAlive:
    interval: float                          # seconds between PINGs
    timeout: float                           # seconds a PING's ACK may take


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None   # None or 0: unlimited
    max_retries: int | None = None
    idle_timeout: float | None = None
    max_concurrent_streams: int | None = None
    http2_keepalive: Http2KeepAlive | None = None
    h2_upgrade_policy: str = "DEFAULT"       # DEFAULT, DO_NOT_UPGRADE, UPGRADE
    use_client_protocol: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """As Istio writes Envoy's outlier detection: fields the rule leaves out take Envoy's
    defaults, except the panic threshold, which Istio sets from minHealthPercent (0:
    no panic mode) whenever outlierDetection is present."""
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0              # 0: not enforced (Envoy counts, Istio does not enforce)
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int = 0       # enforced only with split_external_local_origin_errors
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0                 # Envoy's default cap on base × ejections
    max_ejection_percent: int = 10
    min_health_percent: int = 0                      # Envoy's healthy panic threshold; 0 disables panic
    error_codes: tuple[int, ...] = ()                # outlierDetectionHttpErrorCodes; empty: 5xx


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    port: int
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: dict | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    tls: dict | None = field(default=None, hash=False)               # recorded, not applied
    other: tuple[str, ...] = ()                                       # tunnel, proxyProtocol, ...: recorded

    def for_port(self, port: int | None) -> PortTrafficPolicy | None:
        return next((p for p in self.port_level_settings if p.port == port), None)


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Labels = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: Labels | None = None
    creation_timestamp: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """What applies to one destination (host, subset, port) once a DestinationRule's
    top-level, subset and port-level settings are merged as istiod merges them."""
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    retry_budget: bool = False       # a retryBudget applies: Envoy then ignores the maxRetries breaker
