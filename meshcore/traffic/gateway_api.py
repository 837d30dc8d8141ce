"""Gateway API YAML → meshcore.traffic.model objects.

    http_route(doc) -> HTTPRoute            # kind: HTTPRoute (v1, v1beta1)
    grpc_route(doc) -> GRPCRoute            # kind: GRPCRoute (v1, v1alpha2)
    reference_grant(doc) -> ReferenceGrant  # kind: ReferenceGrant (v1, v1beta1)

Without an API server in front, meshcore does its work: it fills in the CRDs' defaults
(a rule without matches matches PathPrefix "/", a path match without a type is a
PathPrefix, a header or query match without a type is Exact, a backend's weight is 1,
a redirect answers 302, a parentRef is a Gateway of gateway.networking.k8s.io unless it
says otherwise) and refuses, with the field path, what the CRD's schema and CEL rules
would refuse at `kubectl apply`. Regular expressions are Envoy's RE2 in Istio: meshcore
matches with Python's `re`, and refuses at load what RE2 would refuse (backreferences,
lookaround, atomic groups, possessive quantifiers, conditionals).

What only istiod can judge (whether the parent and backend services exist, grants,
filters it cannot apply) is not refused here: resolve.py records it as route conditions
when the view is built. `sessionPersistence` and `useDefaultGateways` are accepted and
not acted on (istiod does not act on them for mesh routes either).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from meshcore.config import fields as F
from meshcore.traffic.model import (
    GATEWAY_GROUP, BackendRef, Cors, FilterType, GrantFrom, GrantTo, GRPCMethodMatch, GRPCRoute, GRPCRouteMatch,
    GRPCRouteRule, HeaderModifier, HTTPRoute, HTTPRouteMatch, HTTPRouteRule, ParentRef, PathMatch, PathMatchType,
    PathModifier, PathModifierType, ReferenceGrant, RequestMirror, RequestRedirect, Retry, Timeouts,
    UnsupportedFilter, URLRewrite, ValueMatch, ValueMatchType)
from meshcore.traffic.regex import compile_re2

_HTTP_VERSIONS = (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1")
_GRPC_VERSIONS = (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1alpha2")
_GRANT_VERSIONS = (f"{GATEWAY_GROUP}/v1", f"{GATEWAY_GROUP}/v1beta1")
_METADATA = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
             "creationTimestamp", "managedFields", "ownerReferences", "finalizers")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_PRECISE_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_HOSTNAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
_NAMESPACE = re.compile(_LABEL)
_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_CORS_ORIGIN = re.compile(r"\*|https?://(((\*\.)?([a-zA-Z0-9\-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_HTTP_FILTERS = tuple(FilterType)
_GRPC_FILTERS = (FilterType.REQUEST_HEADER_MODIFIER, FilterType.RESPONSE_HEADER_MODIFIER,
                 FilterType.REQUEST_MIRROR, FilterType.EXTENSION_REF)
# the field each filter type carries its settings in
_FILTER_FIELD = {FilterType.REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
                 FilterType.RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
                 FilterType.REQUEST_REDIRECT: "requestRedirect", FilterType.URL_REWRITE: "urlRewrite",
                 FilterType.REQUEST_MIRROR: "requestMirror", FilterType.CORS: "cors",
                 FilterType.EXTERNAL_AUTH: "externalAuth", FilterType.EXTENSION_REF: "extensionRef"}
_NOT_REPEATED = (FilterType.REQUEST_HEADER_MODIFIER, FilterType.RESPONSE_HEADER_MODIFIER,
                 FilterType.REQUEST_REDIRECT, FilterType.URL_REWRITE, FilterType.CORS)


# -- scalars -------------------------------------------------------------------------------

def duration(obj, path: str) -> float:
    """A Gateway API Duration (GEP-2257: up to four <number><h|m|s|ms> parts) in seconds."""
    text = F.string(obj, path)
    if not _DURATION.fullmatch(text):
        raise F.fail(path, f"{text!r} is not a Gateway API duration (like 1h30m, 10s or 500ms: up to four "
                           "parts of 1-5 digits and h, m, s or ms)")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _integer(obj, path: str, low: int, high: int | None = None) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise F.fail(path, f"expected an integer, got {obj!r}")
    if obj < low or (high is not None and obj > high):
        raise F.fail(path, f"{obj} is out of range ({low}-{high})" if high is not None else f"{obj} is below {low}")
    return obj


def _pattern(obj, path: str, pattern: re.Pattern, what: str, max_length: int, *, empty_ok: bool = False) -> str:
    text = F.string(obj, path, empty_ok=empty_ok)
    if len(text) > max_length:
        raise F.fail(path, f"longer than {max_length} characters")
    if text and not pattern.fullmatch(text):
        raise F.fail(path, f"{text!r} is not {what}")
    return text


def _hostname(obj, path: str, *, wildcard: bool) -> str:
    return _pattern(obj, path, _HOSTNAME if wildcard else _PRECISE_HOSTNAME,
                    "a lower-case DNS name" + (" (optionally starting with *.)" if wildcard else ""), 253)


def _header_name(obj, path: str) -> str:
    return _pattern(obj, path, _HEADER_NAME, "an HTTP header name", 256)


def _length(obj, path: str, low: int, high: int) -> str:
    text = F.string(obj, path, empty_ok=low == 0)
    if len(text) > high:
        raise F.fail(path, f"longer than {high} characters")
    return text


def _items(obj, path: str, max_items: int) -> list:
    items = F.sequence(obj, path)
    if len(items) > max_items:
        raise F.fail(path, f"{len(items)} entries: at most {max_items}")
    return items


def _group(obj, path: str) -> str:
    text = F.string(obj, path, empty_ok=True)
    if text and not _PRECISE_HOSTNAME.fullmatch(text) or len(text) > 253:
        raise F.fail(path, f"{text!r} is not an API group")
    return text


def _kind(obj, path: str) -> str:
    return _pattern(obj, path, _KIND, "a Kubernetes kind", 63)


def _namespace(obj, path: str) -> str:
    return _pattern(obj, path, _NAMESPACE, "a namespace name", 63)


def _regex(value: str, path: str) -> re.Pattern:
    compiled, why = compile_re2(value)
    if compiled is None:
        raise F.fail(path, why)
    return compiled


# -- documents -------------------------------------------------------------------------------

def _document(doc: dict, versions: tuple[str, ...]) -> tuple[str, str, datetime | None, dict]:
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata", "spec"))
    if doc["apiVersion"] not in versions:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not {' or '.join(versions)}")
    meta = F.mapping(doc["metadata"], "metadata", allowed=_METADATA, required=("name",))
    name = _length(meta["name"], "metadata.name", 1, 253)
    namespace = _namespace(meta.get("namespace", "default"), "metadata.namespace")
    created = _timestamp(meta["creationTimestamp"], "metadata.creationTimestamp") \
        if meta.get("creationTimestamp") is not None else None
    return name, namespace, created, F.mapping(doc["spec"], "spec")


def _timestamp(obj, path: str) -> datetime:
    """RFC 3339, as Kubernetes writes creationTimestamp (YAML may have read it already)."""
    if isinstance(obj, datetime):
        value = obj
    else:
        text = F.string(obj, path)
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise F.fail(path, f"{text!r} is not an RFC 3339 time (like 2024-05-01T12:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _parent_refs(obj, path: str, namespace: str) -> tuple[ParentRef, ...]:
    refs, seen = [], {}
    for i, raw in enumerate(_items(obj, path, 32)):
        p = f"{path}[{i}]"
        F.mapping(raw, p, allowed=("group", "kind", "namespace", "name", "sectionName", "port"), required=("name",))
        section = _hostname(raw["sectionName"], f"{p}.sectionName", wildcard=False) if "sectionName" in raw else ""
        ref = ParentRef(name=_length(raw["name"], f"{p}.name", 1, 253),
                        namespace=_namespace(raw["namespace"], f"{p}.namespace") if "namespace" in raw else namespace,
                        group=_group(raw.get("group", GATEWAY_GROUP), f"{p}.group"),
                        kind=_kind(raw.get("kind", "Gateway"), f"{p}.kind"),
                        section_name=section,
                        port=_integer(raw["port"], f"{p}.port", 1, 65535) if "port" in raw else None)
        # the CEL rule compares the namespace as written (unset and "" alike)
        seen.setdefault((ref.group, ref.kind, ref.name, raw.get("namespace") or ""), []).append(ref)
        refs.append(ref)
    for same in seen.values():
        if len(same) < 2:
            continue
        if len({(bool(r.section_name), r.port is not None) for r in same}) > 1 or \
                not all(r.section_name or r.port is not None for r in same):
            raise F.fail(path, f"sectionName or port must be specified when parentRefs includes 2 or more "
                               f"references to the same parent ({same[0].kind} {same[0].name})")
        if len({(r.section_name, r.port) for r in same}) < len(same):
            raise F.fail(path, f"sectionName or port must be unique when parentRefs includes 2 or more references "
                               f"to the same parent ({same[0].kind} {same[0].name})")
    return tuple(refs)


def _hostnames(obj, path: str) -> tuple[str, ...]:
    return tuple(_hostname(h, f"{path}[{i}]", wildcard=True) for i, h in enumerate(_items(obj, path, 16)))


def _backend_object(raw, path: str, namespace: str, extra: tuple[str, ...] = ()) -> dict:
    F.mapping(raw, path, allowed=("group", "kind", "name", "namespace", "port", *extra), required=("name",))
    group = _group(raw.get("group", ""), f"{path}.group")
    kind = _kind(raw.get("kind", "Service"), f"{path}.kind")
    if group == "" and kind == "Service" and raw.get("port") is None:
        raise F.fail(f"{path}.port", "Must have port for Service reference")
    return dict(name=_length(raw["name"], f"{path}.name", 1, 253),
                namespace=_namespace(raw["namespace"], f"{path}.namespace") if "namespace" in raw else namespace,
                port=_integer(raw["port"], f"{path}.port", 1, 65535) if raw.get("port") is not None else None,
                group=group, kind=kind)


# -- matches ----------------------------------------------------------------------------------

def _path_match(raw, path: str) -> PathMatch:
    F.mapping(raw, path, allowed=("type", "value"))
    kind = _enum(raw.get("type", "PathPrefix"), f"{path}.type", PathMatchType)
    value = _length(raw.get("value", "/"), f"{path}.value", 1, 1024)
    if kind is PathMatchType.REGULAR_EXPRESSION:
        return PathMatch(kind, value, _regex(value, f"{path}.value"))
    p = f"{path}.value"
    if not value.startswith("/"):
        raise F.fail(p, "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']")
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            raise F.fail(p, f"must not contain {bad!r} when type one of ['Exact', 'PathPrefix']")
    for bad in ("/..", "/."):
        if value.endswith(bad):
            raise F.fail(p, f"must not end with {bad!r} when type one of ['Exact', 'PathPrefix']")
    if not _PATH_CHARS.fullmatch(value):
        raise F.fail(p, f"{value!r} has characters a path may not (letters, digits, -._~!$&'()*+,;=:@/ and "
                        "%-escapes only) when type one of ['Exact', 'PathPrefix']")
    return PathMatch(kind, value)


def _value_matches(obj, path: str, *, header: bool, max_value: int) -> tuple[ValueMatch, ...]:
    """Header (or query parameter) conditions. The API server refuses two entries of the
    same name; of names equal but for case, the first counts (Gateway API)."""
    out, names = [], set()
    for i, raw in enumerate(_items(obj, path, 16)):
        p = f"{path}[{i}]"
        F.mapping(raw, p, allowed=("type", "name", "value"), required=("name", "value"))
        name = _header_name(raw["name"], f"{p}.name")
        if name in names:
            raise F.fail(f"{p}.name", f"Duplicate value: {name!r}")
        names.add(name)
        kind = _enum(raw.get("type", "Exact"), f"{p}.type", ValueMatchType)
        value = _length(raw["value"], f"{p}.value", 1, max_value)
        key = name.lower() if header else name
        if any(m.name == key for m in out):
            continue
        out.append(ValueMatch(key, value, kind,
                              _regex(value, f"{p}.value") if kind is ValueMatchType.REGULAR_EXPRESSION else None))
    return tuple(out)


def _http_match(raw, path: str) -> HTTPRouteMatch:
    F.mapping(raw, path, allowed=("path", "headers", "queryParams", "method"))
    method = None
    if raw.get("method") is not None:
        method = F.string(raw["method"], f"{path}.method")
        if method not in METHODS:
            raise F.fail(f"{path}.method", f"{method!r} is not one of {', '.join(METHODS)}")
    return HTTPRouteMatch(
        path=_path_match(raw["path"], f"{path}.path") if raw.get("path") is not None else PathMatch(),
        headers=_value_matches(raw.get("headers"), f"{path}.headers", header=True, max_value=4096),
        query_params=_value_matches(raw.get("queryParams"), f"{path}.queryParams", header=False, max_value=1024),
        method=method)


def _grpc_match(raw, path: str) -> GRPCRouteMatch:
    F.mapping(raw, path, allowed=("method", "headers"))
    method = None
    if raw.get("method") is not None:
        p = f"{path}.method"
        m = F.mapping(raw["method"], p, allowed=("type", "service", "method"))
        kind = _enum(m.get("type", "Exact"), f"{p}.type", ValueMatchType)
        service = _length(m["service"], f"{p}.service", 0, 1024) if m.get("service") is not None else ""
        name = _length(m["method"], f"{p}.method", 0, 1024) if m.get("method") is not None else ""
        if not service and not name:
            raise F.fail(p, "One or both of 'service' or 'method' must be specified")
        if kind is ValueMatchType.EXACT:
            if service and not _GRPC_SERVICE.fullmatch(service):
                raise F.fail(f"{p}.service", f"{service!r}: service must only contain valid characters (matching "
                                             r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$)")
            if name and not _GRPC_METHOD.fullmatch(name):
                raise F.fail(f"{p}.method", f"{name!r}: method must only contain valid characters (matching "
                                            "^[A-Za-z_][A-Za-z_0-9]*$)")
            method = GRPCMethodMatch(kind, service, name)
        else:
            method = GRPCMethodMatch(kind, service, name,
                                     _regex(service, f"{p}.service") if service else None,
                                     _regex(name, f"{p}.method") if name else None)
    return GRPCRouteMatch(method, _value_matches(raw.get("headers"), f"{path}.headers", header=True,
                                                 max_value=4096))


def _enum(obj, path: str, enum):
    text = F.string(obj, path)
    try:
        return enum(text)
    except ValueError:
        raise F.fail(path, f"Unsupported value: {text!r} (supported: {', '.join(enum)})") from None


# -- filters ----------------------------------------------------------------------------------

def _header_modifier(raw, path: str, kind: FilterType) -> HeaderModifier:
    F.mapping(raw, path, allowed=("set", "add", "remove"))
    lists = {}
    for key in ("set", "add"):
        out, names = [], set()
        for i, h in enumerate(_items(raw.get(key), f"{path}.{key}", 16)):
            p = f"{path}.{key}[{i}]"
            F.mapping(h, p, allowed=("name", "value"), required=("name", "value"))
            name = _header_name(h["name"], f"{p}.name")
            if name in names:
                raise F.fail(f"{p}.name", f"Duplicate value: {name!r}")
            names.add(name)
            value = _length(h["value"], f"{p}.value", 1, 4096)
            if all(n != name.lower() for n, _ in out):          # the first of names equal but for case
                out.append((name.lower(), value))
        lists[key] = tuple(out)
    remove = []
    for i, name in enumerate(_items(raw.get("remove"), f"{path}.remove", 16)):
        name = _header_name(name, f"{path}.remove[{i}]")
        if name in remove:
            raise F.fail(f"{path}.remove[{i}]", f"Duplicate value: {name!r}")
        remove.append(name)
    return HeaderModifier(kind, lists["set"], lists["add"], tuple(dict.fromkeys(n.lower() for n in remove)))


def _path_modifier(raw, path: str) -> PathModifier:
    F.mapping(raw, path, allowed=("type", "replaceFullPath", "replacePrefixMatch"), required=("type",))
    kind = _enum(raw["type"], f"{path}.type", PathModifierType)
    full, prefix = raw.get("replaceFullPath"), raw.get("replacePrefixMatch")
    if kind is PathModifierType.REPLACE_FULL_PATH and full is None:
        raise F.fail(f"{path}.replaceFullPath", "replaceFullPath must be specified when type is set to "
                                                "'ReplaceFullPath'")
    if kind is PathModifierType.REPLACE_PREFIX_MATCH and prefix is None:
        raise F.fail(f"{path}.replacePrefixMatch", "replacePrefixMatch must be specified when type is set to "
                                                   "'ReplacePrefixMatch'")
    if full is not None and kind is not PathModifierType.REPLACE_FULL_PATH:
        raise F.fail(f"{path}.type", "type must be 'ReplaceFullPath' when replaceFullPath is set")
    if prefix is not None and kind is not PathModifierType.REPLACE_PREFIX_MATCH:
        raise F.fail(f"{path}.type", "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set")
    field = "replaceFullPath" if full is not None else "replacePrefixMatch"
    return PathModifier(kind, _length(raw[field], f"{path}.{field}", 0, 1024))


def _redirect(raw, path: str) -> RequestRedirect:
    F.mapping(raw, path, allowed=("scheme", "hostname", "path", "port", "statusCode"))
    scheme = None
    if raw.get("scheme") is not None:
        scheme = F.string(raw["scheme"], f"{path}.scheme")
        if scheme not in ("http", "https"):
            raise F.fail(f"{path}.scheme", f"Unsupported value: {scheme!r} (supported: http, https)")
    status = _integer(raw.get("statusCode", 302), f"{path}.statusCode", 0)
    if status not in REDIRECT_CODES:
        raise F.fail(f"{path}.statusCode", f"Unsupported value: {status} (supported: 301, 302, 303, 307, 308)")
    return RequestRedirect(
        scheme=scheme,
        hostname=_hostname(raw["hostname"], f"{path}.hostname", wildcard=False) if raw.get("hostname") is not None else None,
        path=_path_modifier(raw["path"], f"{path}.path") if raw.get("path") is not None else None,
        port=_integer(raw["port"], f"{path}.port", 1, 65535) if raw.get("port") is not None else None,
        status_code=status)


def _rewrite(raw, path: str) -> URLRewrite:
    F.mapping(raw, path, allowed=("hostname", "path"))
    return URLRewrite(
        hostname=_hostname(raw["hostname"], f"{path}.hostname", wildcard=False) if raw.get("hostname") is not None else None,
        path=_path_modifier(raw["path"], f"{path}.path") if raw.get("path") is not None else None)


def _mirror(raw, path: str, namespace: str) -> RequestMirror:
    F.mapping(raw, path, allowed=("backendRef", "percent", "fraction"), required=("backendRef",))
    if raw.get("percent") is not None and raw.get("fraction") is not None:
        raise F.fail(path, "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter")
    backend = BackendRef(**_backend_object(raw["backendRef"], f"{path}.backendRef", namespace))
    percent = 100.0
    if raw.get("percent") is not None:
        percent = float(_integer(raw["percent"], f"{path}.percent", 0, 100))
    elif raw.get("fraction") is not None:
        p = f"{path}.fraction"
        fraction = F.mapping(raw["fraction"], p, allowed=("numerator", "denominator"), required=("numerator",))
        numerator = _integer(fraction["numerator"], f"{p}.numerator", 0, 2**31 - 1)
        denominator = _integer(fraction.get("denominator", 100), f"{p}.denominator", 1, 2**31 - 1)
        if numerator > denominator:
            raise F.fail(p, "numerator must be less than or equal to denominator")
        percent = 100.0 * numerator / denominator
    return RequestMirror(backend, percent)


def _cors(raw, path: str) -> Cors:
    F.mapping(raw, path, allowed=("allowOrigins", "allowCredentials", "allowMethods", "allowHeaders",
                                  "exposeHeaders", "maxAge"))
    lists = {}
    for key, limit in (("allowOrigins", 64), ("allowMethods", 9), ("allowHeaders", 64), ("exposeHeaders", 64)):
        values = []
        for i, v in enumerate(_items(raw.get(key), f"{path}.{key}", limit)):
            p = f"{path}.{key}[{i}]"
            if key == "allowOrigins":
                values.append(_pattern(v, p, _CORS_ORIGIN, "an origin (*, or http(s)://host[:port] where the host "
                                                           "may start with *.)", 253))
            elif key == "allowMethods":
                values.append(F.string(v, p))
                if values[-1] not in (*METHODS, "*"):
                    raise F.fail(p, f"Unsupported value: {values[-1]!r} (supported: {', '.join(METHODS)}, *)")
            else:
                values.append(_header_name(v, p))
            if values[-1] in values[:-1]:
                raise F.fail(p, f"Duplicate value: {values[-1]!r}")
        if "*" in values and len(values) > 1 and key != "exposeHeaders":
            what = {"allowOrigins": "origins", "allowMethods": "methods", "allowHeaders": "headers"}[key]
            raise F.fail(f"{path}.{key}", f"{key[0].upper()}{key[1:]} cannot contain '*' alongside other {what}")
        lists[key] = tuple(values)
    return Cors(lists["allowOrigins"], lists["allowMethods"], lists["allowHeaders"], lists["exposeHeaders"],
                F.boolean(raw.get("allowCredentials", False), f"{path}.allowCredentials"),
                _integer(raw.get("maxAge", 5), f"{path}.maxAge", 1))


def _filters(obj, path: str, namespace: str, allowed_types: tuple[FilterType, ...]) -> tuple:
    out = []
    for i, raw in enumerate(_items(obj, path, 16)):
        p = f"{path}[{i}]"
        F.mapping(raw, p, allowed=("type", *(_FILTER_FIELD[t] for t in allowed_types)), required=("type",))
        text = F.string(raw["type"], f"{p}.type")
        if text not in allowed_types:
            raise F.fail(f"{p}.type", f"Unsupported value: {text!r} (supported: {', '.join(allowed_types)})")
        kind = FilterType(text)
        own = _FILTER_FIELD[kind]
        for t in allowed_types:
            other = _FILTER_FIELD[t]
            if t is not kind and raw.get(other) is not None:
                raise F.fail(f"{p}.{other}", f"filter.{other} must be nil if the filter.type is not {t}")
        if raw.get(own) is None:
            raise F.fail(f"{p}.{own}", f"filter.{own} must be specified for {kind} filter.type")
        settings, at = raw[own], f"{p}.{own}"
        if kind in (FilterType.REQUEST_HEADER_MODIFIER, FilterType.RESPONSE_HEADER_MODIFIER):
            out.append(_header_modifier(settings, at, kind))
        elif kind is FilterType.REQUEST_REDIRECT:
            out.append(_redirect(settings, at))
        elif kind is FilterType.URL_REWRITE:
            out.append(_rewrite(settings, at))
        elif kind is FilterType.REQUEST_MIRROR:
            out.append(_mirror(settings, at, namespace))
        elif kind is FilterType.CORS:
            out.append(_cors(settings, at))
        elif kind is FilterType.EXTENSION_REF:
            F.mapping(settings, at, allowed=("group", "kind", "name"), required=("group", "kind", "name"))
            ref = (_group(settings["group"], f"{at}.group"), _kind(settings["kind"], f"{at}.kind"),
                   _length(settings["name"], f"{at}.name", 1, 253))
            out.append(UnsupportedFilter(kind, f"{ref[1]} {ref[2]} ({ref[0]})"))
        else:
            F.mapping(settings, at)
            out.append(UnsupportedFilter(kind))
    types = [f.type for f in out]
    for kind in _NOT_REPEATED:
        if types.count(kind) > 1:
            raise F.fail(path, f"{kind} filter cannot be repeated")
    if FilterType.REQUEST_REDIRECT in types and FilterType.URL_REWRITE in types:
        raise F.fail(path, "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, "
                           "but not both")
    return tuple(out)


# -- rules ---------------------------------------------------------------------------------------

def _backend_refs(obj, path: str, namespace: str, filter_types) -> tuple[BackendRef, ...]:
    out = []
    for i, raw in enumerate(_items(obj, path, 16)):
        p = f"{path}[{i}]"
        ref = _backend_object(raw, p, namespace, extra=("weight", "filters"))
        weight = _integer(raw["weight"], f"{p}.weight", 0, 1_000_000) if raw.get("weight") is not None else 1
        out.append(BackendRef(**ref, weight=weight,
                              filters=_filters(raw.get("filters"), f"{p}.filters", namespace, filter_types)))
    return tuple(out)


def _uses_prefix_replacement(filters) -> bool:
    return any(isinstance(f, (RequestRedirect, URLRewrite)) and f.path is not None
               and f.path.type is PathModifierType.REPLACE_PREFIX_MATCH for f in filters)


def _timeouts(raw, path: str) -> Timeouts:
    F.mapping(raw, path, allowed=("request", "backendRequest"))
    request = duration(raw["request"], f"{path}.request") if raw.get("request") is not None else None
    backend = duration(raw["backendRequest"], f"{path}.backendRequest") \
        if raw.get("backendRequest") is not None else None
    if request and backend is not None and backend > request:
        raise F.fail(path, "backendRequest timeout cannot be longer than request timeout")
    return Timeouts(request, backend)


def _retry(raw, path: str) -> Retry:
    F.mapping(raw, path, allowed=("codes", "attempts", "backoff"))
    codes = []
    for i, code in enumerate(F.sequence(raw.get("codes"), f"{path}.codes")):
        code = _integer(code, f"{path}.codes[{i}]", 400, 599)
        if code in codes:
            raise F.fail(f"{path}.codes[{i}]", f"Duplicate value: {code}")
        codes.append(code)
    return Retry(attempts=_integer(raw["attempts"], f"{path}.attempts", 1) if raw.get("attempts") is not None
                 else None,
                 codes=tuple(codes),
                 backoff=duration(raw["backoff"], f"{path}.backoff") if raw.get("backoff") is not None else None)


def _rule_name(raw: dict, path: str, names: set) -> str:
    if raw.get("name") is None:
        return ""
    name = _hostname(raw["name"], f"{path}.name", wildcard=False)
    if name in names:
        raise F.fail(f"{path}.name", "Rule name must be unique within the route")
    names.add(name)
    return name


def _http_rule(raw, path: str, namespace: str, names: set) -> HTTPRouteRule:
    F.mapping(raw, path, allowed=("name", "matches", "filters", "backendRefs", "timeouts", "retry",
                                  "sessionPersistence"))
    name = _rule_name(raw, path, names)
    if "matches" in raw:
        raws = _items(raw["matches"], f"{path}.matches", 64)
        matches = tuple(_http_match(m, f"{path}.matches[{i}]") for i, m in enumerate(raws)) or (HTTPRouteMatch(),)
    else:
        matches = (HTTPRouteMatch(),)           # the CRD's default: PathPrefix /
    filters = _filters(raw.get("filters"), f"{path}.filters", namespace, _HTTP_FILTERS)
    backends = _backend_refs(raw.get("backendRefs"), f"{path}.backendRefs", namespace, _HTTP_FILTERS)
    if backends and any(isinstance(f, RequestRedirect) for f in filters):
        raise F.fail(path, "RequestRedirect filter must not be used together with backendRefs")
    for where, fs in ((f"{path}.filters", filters), *((f"{path}.backendRefs[{i}].filters", b.filters)
                                                       for i, b in enumerate(backends))):
        if _uses_prefix_replacement(fs) and (len(matches) != 1 or matches[0].path.type is not
                                             PathMatchType.PATH_PREFIX):
            raise F.fail(where, "When using a RequestRedirect or URLRewrite filter with path.replacePrefixMatch, "
                                "exactly one PathPrefix match must be specified")
    if raw.get("sessionPersistence") is not None:
        F.mapping(raw["sessionPersistence"], f"{path}.sessionPersistence")
    return HTTPRouteRule(
        matches=matches, filters=filters, backend_refs=backends,
        timeouts=_timeouts(raw["timeouts"], f"{path}.timeouts") if raw.get("timeouts") is not None else None,
        retry=_retry(raw["retry"], f"{path}.retry") if raw.get("retry") is not None else None,
        name=name)


def _grpc_rule(raw, path: str, namespace: str, names: set) -> GRPCRouteRule:
    F.mapping(raw, path, allowed=("name", "matches", "filters", "backendRefs", "sessionPersistence"))
    name = _rule_name(raw, path, names)
    raws = _items(raw.get("matches"), f"{path}.matches", 64)
    matches = tuple(_grpc_match(m, f"{path}.matches[{i}]") for i, m in enumerate(raws)) or (GRPCRouteMatch(),)
    if raw.get("sessionPersistence") is not None:
        F.mapping(raw["sessionPersistence"], f"{path}.sessionPersistence")
    return GRPCRouteRule(
        matches=matches,
        filters=_filters(raw.get("filters"), f"{path}.filters", namespace, _GRPC_FILTERS),
        backend_refs=_backend_refs(raw.get("backendRefs"), f"{path}.backendRefs", namespace, _GRPC_FILTERS),
        name=name)


def _rules(spec: dict, namespace: str, parse_rule, *, default) -> tuple:
    if "rules" not in spec or spec["rules"] is None:
        return default
    raws = _items(spec["rules"], "spec.rules", 16)
    if not raws and default:
        raise F.fail("spec.rules", "at least one rule (leave rules out for one that matches every request)")
    names: set = set()
    rules = tuple(parse_rule(r, f"spec.rules[{i}]", namespace, names) for i, r in enumerate(raws))
    # counted as written: a rule without matches counts none
    total = sum(len(F.sequence(r.get("matches"), "")) for r in raws)
    if total > 128:
        raise F.fail("spec.rules", f"{total} matches in all: while 16 rules and 64 matches per rule are allowed, "
                                   "the total number of matches across all rules in a route must be less than 128")
    return rules


def _route_spec(spec: dict, namespace: str) -> tuple[tuple[ParentRef, ...], tuple[str, ...]]:
    if spec.get("useDefaultGateways") is not None and spec["useDefaultGateways"] not in ("All", "None"):
        raise F.fail("spec.useDefaultGateways", f"Unsupported value: {spec['useDefaultGateways']!r} "
                                                "(supported: All, None)")
    return (_parent_refs(spec.get("parentRefs"), "spec.parentRefs", namespace),
            _hostnames(spec.get("hostnames"), "spec.hostnames"))


def http_route(doc: dict) -> HTTPRoute:
    name, namespace, created, spec = _document(doc, _HTTP_VERSIONS)
    F.mapping(spec, "spec", allowed=("parentRefs", "hostnames", "rules", "useDefaultGateways"))
    parents, hostnames = _route_spec(spec, namespace)
    rules = _rules(spec, namespace, _http_rule, default=(HTTPRouteRule(),))
    return HTTPRoute(name, namespace, parents, hostnames, rules, created)


def grpc_route(doc: dict) -> GRPCRoute:
    name, namespace, created, spec = _document(doc, _GRPC_VERSIONS)
    F.mapping(spec, "spec", allowed=("parentRefs", "hostnames", "rules", "useDefaultGateways"))
    parents, hostnames = _route_spec(spec, namespace)
    rules = _rules(spec, namespace, _grpc_rule, default=())
    return GRPCRoute(name, namespace, parents, hostnames, rules, created)


def reference_grant(doc: dict) -> ReferenceGrant:
    name, namespace, _, spec = _document(doc, _GRANT_VERSIONS)
    F.mapping(spec, "spec", allowed=("from", "to"), required=("from", "to"))
    froms, tos = [], []
    for key, out in (("from", froms), ("to", tos)):
        items = _items(spec[key], f"spec.{key}", 16)
        if not items:
            raise F.fail(f"spec.{key}", "at least one entry")
        for i, raw in enumerate(items):
            p = f"spec.{key}[{i}]"
            if key == "from":
                F.mapping(raw, p, allowed=("group", "kind", "namespace"), required=("group", "kind", "namespace"))
                out.append(GrantFrom(_group(raw["group"], f"{p}.group"), _kind(raw["kind"], f"{p}.kind"),
                                     _namespace(raw["namespace"], f"{p}.namespace")))
            else:
                F.mapping(raw, p, allowed=("group", "kind", "name"), required=("group", "kind"))
                out.append(GrantTo(_group(raw["group"], f"{p}.group"), _kind(raw["kind"], f"{p}.kind"),
                                   _length(raw["name"], f"{p}.name", 1, 253) if raw.get("name") else ""))
    return ReferenceGrant(name, namespace, tuple(froms), tuple(tos))
