"""Local rate limits for the waypoint, read from the YAML users already write: meshcore's
`LocalRateLimit` (meshcore.dev/v1alpha1), or the Istio `EnvoyFilter` that inserts
Envoy's `envoy.filters.http.local_ratelimit` into a waypoint (attached by targetRefs).
Both become one frozen `RateLimitPolicy`; anything else is refused with its field path.

    rate_limit_policy(doc, source) -> RateLimitPolicy      # either kind
    load_rate_limits(text, source) -> [RateLimitPolicy]    # every such document of a file

See docs/rate-limiting.md for the choices and what Istio and Envoy do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from meshcore.config import fields as F
from meshcore.config.yamlfile import documents, located
from meshcore.errors import ConfigError
from meshcore.traffic import istio_fields as I

API_VERSION = "meshcore.dev/v1alpha1"
ENVOY_FILTER_VERSIONS = ("networking.istio.io/v1alpha3",)
RATE_LIMIT_KINDS = ("LocalRateLimit", "EnvoyFilter")
GATEWAY_GROUP = "gateway.networking.k8s.io"
LOCAL_RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"
LOCAL_RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
TYPED_STRUCT_TYPES = ("type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct")
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
MIN_FILL_INTERVAL = 0.05           # Envoy's TokenBucket: fill_interval must be >= 50ms
MAX_UINT32 = 2 ** 32 - 1
MAX_TARGET_REFS = 16               # as Istio's policy targetRefs (kubebuilder MaxItems)
MAX_RESPONSE_HEADERS = 10          # Envoy's response_headers_to_add max_items
ROOT_NAMESPACE = "istio-system"    # Istio's default meshConfig.rootNamespace
WAYPOINT_CLASS = "istio-waypoint"


class TargetKind(StrEnum):
    GATEWAY_CLASS = "GatewayClass"  # istio-waypoint, from the root namespace: every waypoint
    GATEWAY = "Gateway"            # the waypoint itself: every request it carries
    SERVICE = "Service"            # requests to one service through its waypoint
    HTTP_ROUTE = "HTTPRoute"       # requests one route (or one named rule of it) takes
    GRPC_ROUTE = "GRPCRoute"


class Origin(StrEnum):
    LOCAL_RATE_LIMIT = "LocalRateLimit"
    ENVOY_FILTER = "EnvoyFilter"


@dataclass(frozen=True, slots=True)
class TokenBucketSpec:
    """Envoy's TokenBucket: starts full with max_tokens, gains tokens_per_fill every
    fill_interval seconds (continuously, as Envoy's token bucket does), never above
    max_tokens."""
    max_tokens: int
    tokens_per_fill: int = 1
    fill_interval: float = 1.0

    @property
    def fill_rate(self) -> float:
        """Tokens per second."""
        return self.tokens_per_fill / self.fill_interval


@dataclass(frozen=True, slots=True)
class RateLimitTarget:
    """One `targetRefs` entry, in the policy's namespace."""
    kind: TargetKind
    name: str
    section_name: str = ""                                # an HTTPRoute/GRPCRoute rule name
    path: str = field(default="", compare=False)          # where the file wrote it

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" rule {self.section_name}" if self.section_name else "")


@dataclass(frozen=True, slots=True)
class HeaderToAdd:
    """A response_headers_to_add entry; `overwrite` False appends beside any same-named header."""
    name: str
    value: str
    overwrite: bool = True
    if_absent: bool = False           # ADD_IF_ABSENT


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    name: str
    namespace: str
    origin: Origin
    targets: tuple[RateLimitTarget, ...]
    bucket: TokenBucketSpec
    per_source: bool = False                  # a bucket per source identity (SPIFFE id)
    enabled_percent: float = 100.0            # share of requests checked (filter_enabled)
    enforced_percent: float = 100.0           # share of checked requests refused (filter_enforced)
    status: int = 429
    x_ratelimit_headers: bool = True          # x-ratelimit-limit/-remaining/-reset (DRAFT_VERSION_03)
    response_headers: tuple[HeaderToAdd, ...] = ()
    request_headers_when_not_enforced: tuple[HeaderToAdd, ...] = ()
    grpc_resource_exhausted: bool = False     # gRPC RESOURCE_EXHAUSTED instead of UNAVAILABLE
    stat_prefix: str = ""
    source: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.origin}/{self.namespace}/{self.name}"


# -- shared field checks ---------------------------------------------------------------------

def _metadata(doc: dict) -> tuple[str, str]:
    meta = F.mapping(doc["metadata"], "metadata", required=("name",))
    F.mapping(meta, "metadata", allowed=I.METADATA_FIELDS)
    name = F.string(meta["name"], "metadata.name")
    namespace = F.string(meta.get("namespace", "default"), "metadata.namespace")
    return name, namespace


def _uint32(obj, path: str, *, minimum: int = 0) -> int:
    return I.integer(obj, path, minimum=minimum, maximum=MAX_UINT32)


def _target_refs(raw, path: str, namespace: str, kinds: dict[str, tuple[str, ...]],
                 *, section_kinds: tuple[str, ...] = ()) -> tuple[RateLimitTarget, ...]:
    refs = F.sequence(raw, path)
    if not refs:
        raise F.fail(path, "at least one target is required: the waypoint Gateway, a Service or a route")
    if len(refs) > MAX_TARGET_REFS:
        raise F.fail(path, f"{len(refs)} targets: at most {MAX_TARGET_REFS}")
    out = []
    for i, ref in enumerate(refs):
        at = f"{path}[{i}]"
        F.mapping(ref, at, allowed=("group", "kind", "name", "namespace", "sectionName"), required=("kind", "name"))
        kind = F.string(ref["kind"], f"{at}.kind")
        if kind not in kinds:
            raise F.fail(f"{at}.kind", f"{kind!r} cannot be a target here (allowed: {', '.join(kinds)})")
        group = F.string(ref.get("group", ""), f"{at}.group", empty_ok=True)
        if group not in kinds[kind]:
            want = " or ".join(repr(g) for g in kinds[kind])
            raise F.fail(f"{at}.group", f"a {kind} target has group {want}, not {group!r}")
        ref_ns = F.string(ref.get("namespace", ""), f"{at}.namespace", empty_ok=True)
        if ref_ns not in ("", namespace):
            raise F.fail(f"{at}.namespace", f"{ref_ns!r}: a rate limit attaches to targets in its own namespace "
                                            f"{namespace} only")
        name = F.string(ref["name"], f"{at}.name")
        if kind == "GatewayClass" and (name != WAYPOINT_CLASS or namespace != ROOT_NAMESPACE):
            raise F.fail(f"{at}.name" if name != WAYPOINT_CLASS else at,
                         f"a GatewayClass target is {WAYPOINT_CLASS} (every waypoint), from the root namespace "
                         f"{ROOT_NAMESPACE} only (as Istio attaches policies)")
        section = ""
        if ref.get("sectionName") is not None:
            if kind not in section_kinds:
                raise F.fail(f"{at}.sectionName", f"a {kind} target takes no sectionName"
                             + (f" (only {', '.join(section_kinds)} do: a rule name)" if section_kinds else ""))
            section = F.string(ref["sectionName"], f"{at}.sectionName")
        out.append(RateLimitTarget(TargetKind(kind), name, section, at))
    return tuple(dict.fromkeys(out))


# -- meshcore's LocalRateLimit -----------------------------------------------------------------

_LOCAL_TARGET_KINDS = {"GatewayClass": (GATEWAY_GROUP,), "Gateway": (GATEWAY_GROUP,), "Service": ("", "core"),
                       "HTTPRoute": (GATEWAY_GROUP,), "GRPCRoute": (GATEWAY_GROUP,)}


def _local_token_bucket(obj, path: str) -> TokenBucketSpec:
    F.mapping(obj, path, allowed=("maxTokens", "tokensPerFill", "fillInterval"), required=("maxTokens", "fillInterval"))
    max_tokens = _uint32(obj["maxTokens"], f"{path}.maxTokens", minimum=1)
    per_fill = _uint32(obj.get("tokensPerFill", 1), f"{path}.tokensPerFill", minimum=1)
    interval = I.duration(obj["fillInterval"], f"{path}.fillInterval")
    if interval < MIN_FILL_INTERVAL:
        raise F.fail(f"{path}.fillInterval", f"{obj['fillInterval']!r}: the fill interval must be at least 50ms "
                                             "(as Envoy's token bucket requires)")
    return TokenBucketSpec(max_tokens, per_fill, interval)


def local_rate_limit(doc: dict, source: str = "") -> RateLimitPolicy:
    """A meshcore `LocalRateLimit` document."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata", "spec"))
    if doc["apiVersion"] != API_VERSION:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r}: a LocalRateLimit is {API_VERSION}")
    name, namespace = _metadata(doc)
    spec = F.mapping(doc["spec"], "spec", allowed=("targetRefs", "tokenBucket", "perSource"),
                     required=("targetRefs", "tokenBucket"))
    targets = _target_refs(spec["targetRefs"], "spec.targetRefs", namespace, _LOCAL_TARGET_KINDS,
                           section_kinds=("HTTPRoute", "GRPCRoute"))
    bucket = _local_token_bucket(spec["tokenBucket"], "spec.tokenBucket")
    per_source = F.boolean(spec.get("perSource", False), "spec.perSource")
    return RateLimitPolicy(name, namespace, Origin.LOCAL_RATE_LIMIT, targets, bucket, per_source,
                           source=source, stat_prefix=name)


# -- Istio's EnvoyFilter with envoy.filters.http.local_ratelimit --------------------------------

# istiod attaches an EnvoyFilter to a waypoint by these targetRefs; its API also lists
# Service and ServiceEntry for waypoints, but istiod looks EnvoyFilters up without the
# proxy's services (PushContext.EnvoyFilters), so those targets match no waypoint
_ENVOY_FILTER_TARGET_KINDS = {"GatewayClass": (GATEWAY_GROUP,), "Gateway": (GATEWAY_GROUP,)}
_ENVOY_FILTER_UNMATCHED_KINDS = ("Service", "ServiceEntry")
_ALLOWED_OPERATIONS = ("ADD", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_APPEND_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS")
_PROTO_DURATION = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
_CAMEL = re.compile(r"(?<!^)([A-Z])")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
# typed_config fields meshcore reads; the rest are refused by name with why
_FILTER_FIELDS = ("stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
                  "request_headers_to_add_when_not_enforced", "response_headers_to_add", "descriptors",
                  "local_rate_limit_per_downstream_connection", "enable_x_ratelimit_headers",
                  "always_consume_default_token_bucket", "rate_limited_as_resource_exhausted")
_FILTER_FIELDS_REFUSED = {
    "stage": "stages order route rate_limits actions, which meshcore does not read",
    "vh_rate_limits": "virtual host rate_limits actions are not read by meshcore",
    "rate_limits": "rate_limits actions are not read by meshcore",
    "local_cluster_rate_limit": "meshcore does not share a limit across waypoint replicas",
    "max_dynamic_descriptors": "descriptors are not read by meshcore (use a LocalRateLimit with perSource)",
}


def _snake_keys(obj: dict) -> dict:
    """Protobuf JSON takes lowerCamelCase and the proto's snake_case alike."""
    return {(_CAMEL.sub(r"_\1", k).lower() if isinstance(k, str) and k != "@type" else k): v
            for k, v in obj.items()}


def _proto_duration(obj, path: str) -> float:
    """A google.protobuf.Duration in JSON: seconds with an `s` (`1s`, `0.25s`, `60s`), the
    only form Envoy's and istiod's JSON parser take."""
    text = obj if isinstance(obj, str) else None
    m = _PROTO_DURATION.fullmatch(text) if text is not None else None
    if m is None:
        raise F.fail(path, f"{obj!r} is not a protobuf duration: seconds with an `s` (`1s`, `0.5s`, `60s`)")
    return float(Decimal(f"{m.group(1)}{m.group(2)}.{m.group(3) or '0'}"))


def _envoy_token_bucket(obj, path: str) -> TokenBucketSpec:
    obj = _snake_keys(F.mapping(obj, path))
    F.mapping(obj, path, allowed=("max_tokens", "tokens_per_fill", "fill_interval"),
              required=("max_tokens", "fill_interval"))
    max_tokens = _uint32(obj["max_tokens"], f"{path}.max_tokens", minimum=1)
    per_fill = 1 if obj.get("tokens_per_fill") is None else \
        _uint32(obj["tokens_per_fill"], f"{path}.tokens_per_fill", minimum=1)
    interval = _proto_duration(obj["fill_interval"], f"{path}.fill_interval")
    if interval < MIN_FILL_INTERVAL:
        raise F.fail(f"{path}.fill_interval", f"{obj['fill_interval']!r}: Envoy refuses a fill interval under 50ms")
    return TokenBucketSpec(max_tokens, per_fill, interval)


def _fraction(obj, path: str) -> float:
    """A RuntimeFractionalPercent, as a percentage. The runtime key is accepted and not
    looked up: meshcore has no runtime layer, so default_value is what applies."""
    obj = _snake_keys(F.mapping(obj, path))
    F.mapping(obj, path, allowed=("runtime_key", "default_value"), required=("default_value",))
    if obj.get("runtime_key") is not None:
        F.string(obj["runtime_key"], f"{path}.runtime_key")
    value = _snake_keys(F.mapping(obj["default_value"], f"{path}.default_value"))
    at = f"{path}.default_value"
    F.mapping(value, at, allowed=("numerator", "denominator"))
    numerator = _uint32(value.get("numerator", 0), f"{at}.numerator")
    denominator = value.get("denominator", "HUNDRED")
    if denominator not in _DENOMINATORS:
        raise F.fail(f"{at}.denominator", f"{denominator!r} is not one of {', '.join(_DENOMINATORS)}")
    # Envoy caps a numerator above its denominator at the denominator
    return min(numerator, _DENOMINATORS[denominator]) * 100 / _DENOMINATORS[denominator]


def _status(obj, path: str) -> int:
    obj = _snake_keys(F.mapping(obj, path))
    F.mapping(obj, path, allowed=("code",), required=("code",))
    code = obj["code"]
    if isinstance(code, str) and not code.isdigit():
        raise F.fail(f"{path}.code", f"{code!r}: write the status as a number (429, 503)")
    code = I.integer(code, f"{path}.code", minimum=100, maximum=599)
    return code if code >= 400 else 429          # Envoy: a status under 400 answers 429


def _headers_to_add(raw, path: str) -> tuple[HeaderToAdd, ...]:
    entries = F.sequence(raw, path)
    if len(entries) > MAX_RESPONSE_HEADERS:
        raise F.fail(path, f"{len(entries)} headers: Envoy takes at most {MAX_RESPONSE_HEADERS}")
    out = []
    for i, entry in enumerate(entries):
        at = f"{path}[{i}]"
        entry = _snake_keys(F.mapping(entry, at))
        F.mapping(entry, at, allowed=("header", "append", "append_action", "keep_empty_value"), required=("header",))
        header = _snake_keys(F.mapping(entry["header"], f"{at}.header"))
        F.mapping(header, f"{at}.header", allowed=("key", "value", "raw_value"), required=("key",))
        name = F.string(header["key"], f"{at}.header.key")
        if not _HEADER_NAME.fullmatch(name):
            raise F.fail(f"{at}.header.key", f"{name!r} is not a header name meshcore can add")
        value = header.get("value", "")
        if header.get("raw_value") is not None:
            raise F.fail(f"{at}.header.raw_value", "raw_value is not read by meshcore: write `value`")
        value = F.string(str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value,
                         f"{at}.header.value", empty_ok=True)
        if "%" in value:
            raise F.fail(f"{at}.header.value", f"{value!r}: Envoy would expand %...% format specifiers, "
                                               "which meshcore does not; write a literal value")
        if entry.get("append") is not None and entry.get("append_action") is not None:
            raise F.fail(f"{at}.append", "set append or append_action, not both (Envoy refuses both)")
        overwrite, if_absent = False, False
        if entry.get("append") is not None:
            overwrite = not F.boolean(entry["append"], f"{at}.append")
        else:
            action = entry.get("append_action", "APPEND_IF_EXISTS_OR_ADD")
            if action not in _APPEND_ACTIONS:
                raise F.fail(f"{at}.append_action", f"{action!r} is not one of {', '.join(_APPEND_ACTIONS)}")
            overwrite = action.startswith("OVERWRITE")
            if_absent = action == "ADD_IF_ABSENT"
            if action == "OVERWRITE_IF_EXISTS":
                raise F.fail(f"{at}.append_action", "OVERWRITE_IF_EXISTS changes only a header the answer "
                                                    "already has; a 429 meshcore writes has none: use "
                                                    "OVERWRITE_IF_EXISTS_OR_ADD")
        out.append(HeaderToAdd(name.lower(), value, overwrite, if_absent))
    return tuple(out)


def _typed_config(obj, path: str) -> tuple[dict, str]:
    """The LocalRateLimit message inside typed_config, directly or in a TypedStruct."""
    F.mapping(obj, path, required=("@type",))
    type_url = F.string(obj["@type"], f"{path}.@type")
    if type_url == LOCAL_RATELIMIT_TYPE:
        return {k: v for k, v in obj.items() if k != "@type"}, path
    if type_url in TYPED_STRUCT_TYPES:
        obj = _snake_keys(obj)
        F.mapping(obj, path, allowed=("@type", "type_url", "value"), required=("type_url",))
        inner = F.string(obj["type_url"], f"{path}.type_url")
        if inner != LOCAL_RATELIMIT_TYPE:
            raise F.fail(f"{path}.type_url", f"{inner!r}: meshcore reads only {LOCAL_RATELIMIT_TYPE}")
        return F.mapping(obj.get("value") or {}, f"{path}.value"), f"{path}.value"
    raise F.fail(f"{path}.@type", f"{type_url!r}: meshcore reads only {LOCAL_RATELIMIT_TYPE} "
                                  "(directly or in a TypedStruct)")


def _local_ratelimit_config(obj, path: str) -> dict:
    """The filter's fields meshcore reads, keyed by their snake_case names (each with
    where it was written; "" is the message itself); others refused."""
    raw = F.mapping(obj, path)
    config: dict = {"": (None, path)}
    for key, value in raw.items():
        snake = _snake_keys({key: None}).popitem()[0]
        if snake in _FILTER_FIELDS_REFUSED:
            raise F.fail(f"{path}.{key}", _FILTER_FIELDS_REFUSED[snake])
        if snake not in _FILTER_FIELDS:
            raise F.fail(f"{path}.{key}", f"not a field of Envoy's LocalRateLimit that meshcore reads "
                                          f"(read: {', '.join(_FILTER_FIELDS)})")
        config[snake] = (value, f"{path}.{key}")
    return config


def _envoy_filter_policy(config: dict, name: str, namespace: str, targets, source: str) -> RateLimitPolicy:
    def get(field_name, default=None):
        return config[field_name] if field_name in config else (default, "")

    base = config[""][1]
    prefix, at = get("stat_prefix")
    if prefix is None:
        raise F.fail(f"{base}.stat_prefix", "required (Envoy refuses the filter without it)")
    prefix = F.string(prefix, at)
    bucket_raw, at = get("token_bucket")
    if bucket_raw is None:
        raise F.fail(f"{base}.token_bucket",
                     "required: without a token bucket in the filter, Envoy takes the bucket from a route's "
                     "typed_per_filter_config, which meshcore does not read")
    bucket = _envoy_token_bucket(bucket_raw, at)
    descriptors, at = get("descriptors")
    if F.sequence(descriptors, at or "descriptors"):
        raise F.fail(at, "descriptors match entries made by route rate_limits actions, which meshcore does not "
                         "read; for a bucket per source identity write a LocalRateLimit with perSource: true")
    per_connection, at = get("local_rate_limit_per_downstream_connection", False)
    if F.boolean(per_connection, at):
        raise F.fail(at, "a waypoint's downstream connections are tunnels from node proxies, each carrying many "
                         "clients: meshcore keeps no per-connection buckets (perSource in a LocalRateLimit limits "
                         "each client identity)")
    enabled_raw, at_enabled = get("filter_enabled")
    enforced_raw, at_enforced = get("filter_enforced")
    # Envoy: an absent filter_enabled or filter_enforced is 0 %: checked by nothing, or refused never
    enabled = 0.0 if enabled_raw is None else _fraction(enabled_raw, at_enabled)
    enforced = 0.0 if enforced_raw is None else _fraction(enforced_raw, at_enforced)
    status_raw, at = get("status")
    status = 429 if status_raw is None else _status(status_raw, at)
    headers_mode, at = get("enable_x_ratelimit_headers", "OFF")
    if headers_mode not in ("OFF", "DRAFT_VERSION_03"):
        raise F.fail(at, f"{headers_mode!r} is not OFF or DRAFT_VERSION_03")
    response_raw, at_response = get("response_headers_to_add")
    request_raw, at_request = get("request_headers_to_add_when_not_enforced")
    always_consume, at = get("always_consume_default_token_bucket", True)
    F.boolean(always_consume, at)                 # only matters with descriptors
    exhausted, at_exhausted = get("rate_limited_as_resource_exhausted", False)
    return RateLimitPolicy(
        name, namespace, Origin.ENVOY_FILTER, targets, bucket, per_source=False,
        enabled_percent=enabled, enforced_percent=enforced, status=status,
        x_ratelimit_headers=headers_mode == "DRAFT_VERSION_03",
        response_headers=_headers_to_add(response_raw, at_response) if response_raw is not None else (),
        request_headers_when_not_enforced=(_headers_to_add(request_raw, at_request) if request_raw is not None
                                           else ()),
        grpc_resource_exhausted=F.boolean(exhausted, at_exhausted), stat_prefix=prefix, source=source)


def _patch_match(obj, path: str) -> None:
    """Where the patch goes: the waypoint's HTTP connection managers. A waypoint's
    listeners are patched in the SIDECAR_INBOUND context (or ANY)."""
    if obj is None:
        return
    F.mapping(obj, path, allowed=("context", "listener", "proxy"))
    context = obj.get("context", "ANY")
    if context not in ("ANY", "SIDECAR_INBOUND"):
        reason = ("istiod does not apply WAYPOINT-context patches yet (a hidden, unvalidated value)"
                  if context == "WAYPOINT" else f"{context} patches never reach a waypoint")
        raise F.fail(f"{path}.context", f"{context!r}: {reason}; istiod patches a waypoint's listeners in "
                                        "SIDECAR_INBOUND context (or ANY)")
    if obj.get("proxy") is not None:
        raise F.fail(f"{path}.proxy", "proxy version and metadata matches are not read by meshcore")
    if obj.get("listener") is None:
        return
    listener = F.mapping(obj["listener"], f"{path}.listener", allowed=("filterChain",))
    chain = F.mapping(listener.get("filterChain") or {}, f"{path}.listener.filterChain", allowed=("filter",))
    if chain.get("filter") is None:
        return
    at = f"{path}.listener.filterChain.filter"
    flt = F.mapping(chain["filter"], at, allowed=("name", "subFilter"), required=("name",))
    if flt["name"] != HCM_FILTER:
        raise F.fail(f"{at}.name", f"{flt['name']!r}: an HTTP filter goes into {HCM_FILTER}")
    if flt.get("subFilter") is not None:
        sub = F.mapping(flt["subFilter"], f"{at}.subFilter", allowed=("name",), required=("name",))
        F.string(sub["name"], f"{at}.subFilter.name")


def _config_patch(obj, path: str) -> dict:
    F.mapping(obj, path, allowed=("applyTo", "match", "patch"), required=("applyTo", "patch"))
    if obj["applyTo"] != "HTTP_FILTER":
        raise F.fail(f"{path}.applyTo", f"{obj['applyTo']!r}: meshcore reads only an HTTP_FILTER patch that "
                                        f"inserts {LOCAL_RATELIMIT_FILTER}")
    _patch_match(obj.get("match"), f"{path}.match")
    patch = F.mapping(obj["patch"], f"{path}.patch", allowed=("operation", "value", "filterClass"),
                      required=("operation", "value"))
    operation = patch["operation"]
    if operation not in _ALLOWED_OPERATIONS:
        raise F.fail(f"{path}.patch.operation", f"{operation!r}: meshcore reads a patch that inserts the filter "
                                                f"({', '.join(_ALLOWED_OPERATIONS)})")
    sub = (((obj.get("match") or {}).get("listener") or {}).get("filterChain") or {}).get("filter") or {}
    if operation == "INSERT_AFTER" and (sub.get("subFilter") or {}).get("name") == ROUTER_FILTER:
        raise F.fail(f"{path}.patch.operation", f"a filter inserted after {ROUTER_FILTER} never runs")
    value = F.mapping(patch["value"], f"{path}.patch.value", allowed=("name", "typed_config", "typedConfig"),
                      required=("name",))
    if value["name"] != LOCAL_RATELIMIT_FILTER:
        raise F.fail(f"{path}.patch.value.name", f"{value['name']!r}: meshcore reads only {LOCAL_RATELIMIT_FILTER}")
    key = "typed_config" if "typed_config" in value else "typedConfig"
    if value.get(key) is None:
        raise F.fail(f"{path}.patch.value.typed_config", "required: the filter's LocalRateLimit configuration")
    message, at = _typed_config(value[key], f"{path}.patch.value.{key}")
    return _local_ratelimit_config(message, at)


def envoy_filter_rate_limit(doc: dict, source: str = "") -> RateLimitPolicy:
    """An Istio EnvoyFilter attached to a waypoint by targetRefs whose one patch inserts
    envoy.filters.http.local_ratelimit. Any other EnvoyFilter is refused: meshcore does
    not run Envoy, so it cannot apply arbitrary patches."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata", "spec"))
    if doc["apiVersion"] not in ENVOY_FILTER_VERSIONS:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r}: EnvoyFilter is {ENVOY_FILTER_VERSIONS[0]}")
    name, namespace = _metadata(doc)
    spec = F.mapping(doc["spec"], "spec", allowed=("workloadSelector", "targetRefs", "configPatches", "priority"),
                     required=("configPatches",))
    if spec.get("workloadSelector") is not None:
        raise F.fail("spec.workloadSelector", "waypoints ignore an EnvoyFilter's workloadSelector (Istio applies "
                                              "only targetRefs to them): attach it with targetRefs to the waypoint "
                                              "Gateway")
    for i, ref in enumerate(F.sequence(spec.get("targetRefs"), "spec.targetRefs")):
        if isinstance(ref, dict) and ref.get("kind") in _ENVOY_FILTER_UNMATCHED_KINDS:
            raise F.fail(f"spec.targetRefs[{i}].kind",
                         f"{ref['kind']}: istiod attaches an EnvoyFilter to a waypoint by its Gateway (or the "
                         f"{WAYPOINT_CLASS} GatewayClass), never by a {ref['kind']}; target the waypoint Gateway, "
                         "or write a LocalRateLimit, which takes a Service")
    targets = _target_refs(spec.get("targetRefs"), "spec.targetRefs", namespace, _ENVOY_FILTER_TARGET_KINDS)
    if spec.get("priority") is not None:
        I.integer(spec["priority"], "spec.priority", minimum=-(2 ** 31), maximum=2 ** 31 - 1)
    patches = F.sequence(spec["configPatches"], "spec.configPatches")
    if len(patches) != 1:
        raise F.fail("spec.configPatches", f"{len(patches)} patches: meshcore reads an EnvoyFilter with exactly one, "
                                           f"the HTTP_FILTER patch inserting {LOCAL_RATELIMIT_FILTER}")
    config = _config_patch(patches[0], "spec.configPatches[0]")
    return _envoy_filter_policy(config, name, namespace, targets, source)


# -- dispatch ----------------------------------------------------------------------------------

def rate_limit_policy(doc: dict, source: str = "") -> RateLimitPolicy:
    """A LocalRateLimit or an EnvoyFilter document; ConfigError (field path, reason) otherwise."""
    kind = F.mapping(doc, "").get("kind")
    if kind == "LocalRateLimit":
        return local_rate_limit(doc, source)
    if kind == "EnvoyFilter":
        return envoy_filter_rate_limit(doc, source)
    raise F.fail("kind", f"{kind!r} is not a rate limit ({' or '.join(RATE_LIMIT_KINDS)})")


def load_rate_limits(text: str, source: str = "<rate limits>") -> list[RateLimitPolicy]:
    """Every LocalRateLimit and EnvoyFilter of a multi-document YAML text (other kinds
    are left to their loaders). The file is refused as a whole on the first error, and
    on two rate limits with one name."""
    out: list[RateLimitPolicy] = []
    seen: dict[str, int] = {}
    for index, doc in enumerate(documents(text, source), 1):
        if not isinstance(doc, dict) or doc.get("kind") not in RATE_LIMIT_KINDS:
            continue
        try:
            policy = rate_limit_policy(doc, source)
        except ConfigError as exc:
            raise located(exc, source, index) from None
        if policy.key in seen:
            raise located(F.fail("metadata.name", f"{policy.origin} {policy.namespace}/{policy.name} is defined "
                                                  f"twice (documents {seen[policy.key]} and {index})"), source, index)
        seen[policy.key] = index
        out.append(policy)
    return out
