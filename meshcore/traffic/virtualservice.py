"""Istio VirtualService documents, checked as istiod's validation checks them.

    virtual_service(doc) -> VirtualService

What istiod refuses, meshcore refuses, naming the field and the reason. A few things
istiod accepts are refused too, because the waypoint could not do what they say:
delegate VirtualServices (no `hosts`), `delegate` routes, JWT-claim matches in a
VirtualService the mesh gateway takes (istiod refuses them only when no other gateway
is named; the waypoint has no claims to match), redirect codes Envoy has no action for.
`tcp` and `tls` routes are kept as written and are not applied by the waypoint's HTTP
path.
Route selection and the other decisions on parsed VirtualServices live in
virtualservice_select.py.
"""
from __future__ import annotations

import base64
import re

from meshcore.config import fields as F
from meshcore.traffic import istio_fields as I
from meshcore.traffic.istio_model import (
    CorsPolicy, DerivePort, Destination, DirectResponse, Fault, FaultAbort, FaultDelay, HeaderOperations, Headers,
    HTTPMatch, HTTPRetry, HTTPRoute, MatchKind, Mirror, Redirect, RegexRewrite, Rewrite, RouteDestination,
    StringMatch, UnmatchedPreflights, VirtualService,
)
from meshcore.traffic.retry import KNOWN_STATUS_CODES, RetryOn

# gRPC status names istiod accepts for `abort.grpcStatus`, with their codes
GRPC_STATUS = {name: code for code, name in enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))}
REDIRECT_CODES = (301, 302, 303, 307, 308)      # the codes Envoy's RedirectAction has

_SPEC_FIELDS = ("hosts", "gateways", "http", "tls", "tcp", "exportTo")
_HTTP_FIELDS = ("name", "match", "route", "redirect", "directResponse", "delegate", "rewrite", "timeout",
                "retries", "fault", "mirror", "mirrors", "mirrorPercent", "mirrorPercentage", "corsPolicy",
                "headers")
_MATCH_FIELDS = ("name", "uri", "scheme", "method", "authority", "headers", "port", "sourceLabels", "gateways",
                 "queryParams", "ignoreUriCase", "withoutHeaders", "sourceNamespace", "statPrefix")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_PSEUDO_HEADERS = (":method", ":scheme", ":authority", ":path", ":status")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_JWT_CLAIM = "@request.auth.claims"


def virtual_service(doc: dict) -> VirtualService:
    """One `kind: VirtualService` document (networking.istio.io v1, v1beta1 or v1alpha3)."""
    name, namespace, created = I.networking_document(doc)
    spec = F.mapping(doc["spec"], "spec", allowed=_SPEC_FIELDS)

    raw_hosts = F.strings(spec.get("hosts"), "spec.hosts")
    if not raw_hosts:
        raise F.fail("spec.hosts", "a VirtualService without hosts is a delegate, which meshcore does not read: "
                                   "name the hosts it routes")
    gateways = tuple(F.strings(spec.get("gateways"), "spec.gateways"))
    for i, g in enumerate(gateways):
        _gateway_name(g, f"spec.gateways[{i}]")
    to_mesh = not gateways or "mesh" in gateways
    to_gateway = any(g != "mesh" for g in gateways)
    # istiod holds a VirtualService that also names another gateway to the gateway rules
    hosts = _hosts(raw_hosts, not to_gateway, namespace)

    http = F.sequence(spec.get("http"), "spec.http")
    tcp = F.sequence(spec.get("tcp"), "spec.tcp")
    tls = F.sequence(spec.get("tls"), "spec.tls")
    if not http and not tcp and not tls:
        raise F.fail("spec", "http, tcp or tls must be provided in virtual service")
    routes = tuple(_http_route(r, f"spec.http[{i}]", namespace, jwt_ok=to_gateway and not to_mesh)
                   for i, r in enumerate(http))
    for i, r in enumerate(tcp):
        _l4_route(r, f"spec.tcp[{i}]", raw_hosts, tls=False)
    for i, r in enumerate(tls):
        _l4_route(r, f"spec.tls[{i}]", raw_hosts, tls=True)
    exports = I.export_to(spec.get("exportTo"), "spec.exportTo", namespace)
    return VirtualService(name, namespace, hosts, gateways, routes, tuple(tcp), tuple(tls), exports, created)


# -- top level ---------------------------------------------------------------------------

def _gateway_name(name: str, path: str) -> None:
    ns, slash, gw = name.partition("/")
    if not slash:
        if len(name) > 255:
            raise F.fail(path, f"domain name {name!r} too long (max 255)")
        I.dns_labels(name, path)
        return
    if not ns or not gw:
        raise F.fail(path, "config namespace and gateway name cannot be empty")
    I.dns_label(ns, path, "namespace")
    I.dns_label(gw, path, "gateway name")


def _hosts(raw: list[str], mesh_only: bool, namespace: str) -> tuple[str, ...]:
    for i, h in enumerate(raw):
        p = f"spec.hosts[{i}]"
        if I.is_ip(h):
            continue
        I.wildcard_domain(h, p)
        if mesh_only and h == "*":
            raise F.fail(p, "wildcard host * is not allowed for virtual services bound to the mesh gateway")
    for i in range(len(raw)):
        for j in range(i + 1, len(raw)):
            if I.host_matches(raw[i], raw[j]) or I.host_matches(raw[j], raw[i]):
                raise F.fail(f"spec.hosts[{j}]", f"duplicate hosts in virtual service: {raw[i]} & {raw[j]}")
    return tuple(I.fqdn(h, namespace) for h in raw)


def _l4_route(obj, path: str, raw_hosts: list[str], *, tls: bool) -> None:
    """tcp and tls routes: checked as istiod checks them, then kept (not applied)."""
    F.mapping(obj, path, allowed=("match", "route"))
    matches = F.sequence(obj.get("match"), f"{path}.match")
    if tls and not matches:
        raise F.fail(f"{path}.match", "TLS route must have at least one match condition")
    for i, m in enumerate(matches):
        _l4_match(m, f"{path}.match[{i}]", raw_hosts, tls=tls)
    dests = F.sequence(obj.get("route"), f"{path}.route")
    if not dests:
        raise F.fail(f"{path}.route", "TLS route is required" if tls else "TCP route is required")
    total = 0
    for i, d in enumerate(dests):
        dp = f"{path}.route[{i}]"
        F.mapping(d, dp, allowed=("destination", "weight"), required=("destination",))
        _destination(d["destination"], f"{dp}.destination", "default")
        w = I.integer(d.get("weight", 0), f"{dp}.weight")
        if w < 0:
            raise F.fail(f"{dp}.weight", f"weight {w} < 0")
        total += w
    if len(dests) > 1 and total == 0:
        raise F.fail(f"{path}.route", "total destination weight = 0")


def _l4_match(obj, path: str, raw_hosts: list[str], *, tls: bool) -> None:
    if obj is None:
        raise F.fail(path, "TLS match may not be null" if tls else "tcp match may not be nil")
    allowed = ("destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace")
    F.mapping(obj, path, allowed=allowed + (("sniHosts",) if tls else ("sourceSubnet",)))
    if tls:
        snis = F.strings(obj.get("sniHosts"), f"{path}.sniHosts")
        if not snis:
            raise F.fail(f"{path}.sniHosts", "TLS match must have at least one SNI host")
        for i, sni in enumerate(snis):
            sp = f"{path}.sniHosts[{i}]"
            if I.is_ip(sni):
                continue
            I.wildcard_domain(sni, sp)
            if not any(I.host_matches(h, sni) and (not sni.startswith("*") or h.startswith("*")) for h in raw_hosts):
                raise F.fail(sp, f"SNI host {sni!r} is not a compatible subset of any of the virtual service hosts: "
                                 f"[{', '.join(raw_hosts)}]")
    for i, subnet in enumerate(F.sequence(obj.get("destinationSubnets"), f"{path}.destinationSubnets")):
        F.network(subnet, f"{path}.destinationSubnets[{i}]")
    if obj.get("port"):
        I.port_number(obj["port"], f"{path}.port")
    I.labels(obj.get("sourceLabels"), f"{path}.sourceLabels")
    for i, g in enumerate(F.strings(obj.get("gateways"), f"{path}.gateways")):
        _gateway_name(g, f"{path}.gateways[{i}]")


# -- http routes -------------------------------------------------------------------------

def _http_route(obj, path: str, namespace: str, *, jwt_ok: bool) -> HTTPRoute:
    if obj is None:
        raise F.fail(path, "http route may not be null")
    F.mapping(obj, path, allowed=_HTTP_FIELDS)
    if "delegate" in obj:
        raise F.fail(f"{path}.delegate", "delegate routes are not supported by meshcore: write the routes here")
    has = {k for k, v in obj.items() if v is not None}
    route_list = F.sequence(obj.get("route"), f"{path}.route")
    if "redirect" in has:
        for other, what in (("route", "route"), ("fault", "fault"), ("rewrite", "rewrite"),
                            ("directResponse", "direct_response")):
            if other in has and (other != "route" or route_list):
                raise F.fail(path, f"HTTP route cannot contain both {what} and redirect")
    elif "directResponse" in has:
        for other, what in (("route", "route"), ("fault", "fault"), ("rewrite", "rewrite")):
            if other in has and (other != "route" or route_list):
                raise F.fail(path, f"HTTP route cannot contain both {what} and direct_response")
    elif not route_list:
        raise F.fail(path, "HTTP route, redirect or direct_response is required")
    if "mirror" in has and obj.get("mirrors"):
        raise F.fail(path, "HTTP route cannot contain both mirror and mirrors")

    name = F.string(obj.get("name", ""), f"{path}.name", empty_ok=True)
    matches = tuple(_match(m, f"{path}.match[{i}]", jwt_ok)
                    for i, m in enumerate(F.sequence(obj.get("match"), f"{path}.match")))
    headers = _headers(obj.get("headers"), f"{path}.headers")
    rewrite = _rewrite(obj.get("rewrite"), f"{path}.rewrite") if "rewrite" in has else None
    _authority_once(rewrite, headers, path)
    return HTTPRoute(
        name=name,
        matches=matches,
        route=_route_destinations(route_list, f"{path}.route", namespace),
        redirect=_redirect(obj["redirect"], f"{path}.redirect", matches) if "redirect" in has else None,
        direct_response=_direct_response(obj["directResponse"], f"{path}.directResponse")
        if "directResponse" in has else None,
        rewrite=rewrite,
        timeout=I.istio_duration(obj["timeout"], f"{path}.timeout") if "timeout" in has else None,
        retries=_retries(obj["retries"], f"{path}.retries") if "retries" in has else None,
        fault=_fault(obj["fault"], f"{path}.fault") if "fault" in has else None,
        mirrors=_mirrors(obj, path, namespace),
        headers=headers,
        cors_policy=_cors(obj["corsPolicy"], f"{path}.corsPolicy") if "corsPolicy" in has else None,
    )


def _authority_once(rewrite: Rewrite | None, headers: Headers | None, path: str) -> None:
    """istiod's validateAuthorityRewrite: the authority is rewritten in one place only."""
    current = rewrite.authority if rewrite else ""
    if headers is None:
        return
    for op, pairs in (("set", headers.request.set), ("add", headers.request.add)):
        for k, v in pairs:
            if k.lower() not in (":authority", "host"):
                continue
            if current:
                raise F.fail(f"{path}.headers.request.{op}.{k}",
                             f"authority header cannot be set multiple times: have {current!r}, attempting to "
                             f"set {v!r}")
            current = v


def _string_match(obj, path: str, where: str, *, empty_prefix_ok: bool = False,
                  star_is_present: bool = False) -> StringMatch:
    if obj is None or obj == {}:
        return StringMatch(MatchKind.PRESENT)
    F.mapping(obj, path, allowed=("exact", "prefix", "regex"))
    kinds = [k for k in ("exact", "prefix", "regex") if k in obj]
    if len(kinds) > 1:
        raise F.fail(path, f"only one of exact, prefix, regex (found {', '.join(kinds)})")
    kind = kinds[0]
    value = F.string(obj[kind], f"{path}.{kind}", empty_ok=True)
    if kind == "prefix":
        if not value and not empty_prefix_ok:
            raise F.fail(f"{path}.prefix", f"{where!r}: prefix string match should not be empty")
        return StringMatch(MatchKind.PREFIX, value)
    if kind == "regex":
        if star_is_present and value == "*":
            # istiod turns `*` (not an RE2 regex) into a presence check
            return StringMatch(MatchKind.PRESENT)
        return StringMatch(MatchKind.REGEX, value, I.regex(value, f"{path}.regex", where))
    return StringMatch(MatchKind.EXACT, value)


def _header_name(name, path: str) -> str:
    name = F.string(name, path)
    if name.startswith(_JWT_CLAIM) or name in _PSEUDO_HEADERS:
        return name
    if not _HEADER_NAME.fullmatch(name):
        raise F.fail(path, f"header name {name} is not a valid header name")
    return name


def _match(obj, path: str, jwt_ok: bool) -> HTTPMatch:
    F.mapping(obj, path, allowed=_MATCH_FIELDS)

    def header_map(key: str, **kw) -> tuple[tuple[str, StringMatch], ...]:
        out = []
        for hname, hm in F.mapping(obj.get(key) or {}, f"{path}.{key}").items():
            hp = f"{path}.{key}.{hname}"
            _header_name(hname, hp)
            if str(hname).startswith(_JWT_CLAIM) and not jwt_ok:
                raise F.fail(hp, f"JWT claim based routing (key: {hname}) is only supported for gateway, "
                                 "not for the mesh gateway meshcore's waypoint is")
            if key == "headers" and hm is None:
                raise F.fail(hp, f"header match {hname} cannot be null")
            out.append((str(hname).lower(), _string_match(hm, hp, key, **kw)))
        return tuple(sorted(out))

    query = []
    for qname, qm in F.mapping(obj.get("queryParams") or {}, f"{path}.queryParams").items():
        query.append((F.string(qname, f"{path}.queryParams"),
                      _string_match(qm, f"{path}.queryParams.{qname}", "queryParams")))
    port = I.port_number(obj["port"], f"{path}.port") if obj.get("port") else None
    source_ns = F.string(obj.get("sourceNamespace", ""), f"{path}.sourceNamespace", empty_ok=True)
    if source_ns:
        I.dns_label(source_ns, f"{path}.sourceNamespace", f"sourceNamespace match {source_ns}")
    gateways = tuple(F.strings(obj.get("gateways"), f"{path}.gateways"))
    for i, g in enumerate(gateways):
        _gateway_name(g, f"{path}.gateways[{i}]")
    uri = obj.get("uri")
    return HTTPMatch(
        name=F.string(obj.get("name", ""), f"{path}.name", empty_ok=True),
        # an empty uri prefix is Envoy's prefix "" (everything); `{}` is no condition
        uri=None if uri in (None, {}) else _string_match(uri, f"{path}.uri", "uri", empty_prefix_ok=True),
        scheme=_optional_match(obj, "scheme", path),
        method=_optional_match(obj, "method", path),
        authority=_optional_match(obj, "authority", path),
        headers=header_map("headers"),
        without_headers=header_map("withoutHeaders", star_is_present=True),
        query_params=tuple(sorted(query)),
        port=port,
        source_labels=I.labels(obj.get("sourceLabels"), f"{path}.sourceLabels"),
        source_namespace=source_ns,
        gateways=gateways,
        ignore_uri_case=F.boolean(obj.get("ignoreUriCase", False), f"{path}.ignoreUriCase"),
    )


def _optional_match(obj: dict, key: str, path: str) -> StringMatch | None:
    return None if obj.get(key) is None else _string_match(obj[key], f"{path}.{key}", key)


# -- destinations, headers ---------------------------------------------------------------

def _destination(obj, path: str, namespace: str) -> Destination:
    F.mapping(obj, path, allowed=("host", "subset", "port"), required=("host",))
    host = F.string(obj["host"], f"{path}.host")
    if host == "*":
        raise F.fail(f"{path}.host", f"invalid destination host {host}")
    if not I.is_ip(host):
        I.wildcard_domain(host, f"{path}.host")
    subset = F.string(obj.get("subset", ""), f"{path}.subset", empty_ok=True)
    if "subset" in obj:
        if not subset:
            raise F.fail(f"{path}.subset", "subset name cannot be empty")
        I.dns_label(subset, f"{path}.subset", "subset name")
    port = None
    if obj.get("port") is not None:
        sel = F.mapping(obj["port"], f"{path}.port", allowed=("number",))
        port = I.port_number(sel.get("number", 0), f"{path}.port.number")
    return Destination(I.fqdn(host, namespace), subset, port)


def _route_destinations(items: list, path: str, namespace: str) -> tuple[RouteDestination, ...]:
    out, total = [], 0
    for i, d in enumerate(items):
        dp = f"{path}[{i}]"
        if d is None:
            raise F.fail(dp, "weight may not be nil")
        F.mapping(d, dp, allowed=("destination", "weight", "headers"))
        if d.get("destination") is None:
            raise F.fail(f"{dp}.destination", "destination is required")
        weight = I.integer(d.get("weight", 0), f"{dp}.weight")
        if weight < 0:
            raise F.fail(f"{dp}.weight", f"weight {weight} < 0")
        total += weight
        out.append(RouteDestination(_destination(d["destination"], f"{dp}.destination", namespace), weight,
                                    _headers(d.get("headers"), f"{dp}.headers")))
    if len(items) > 1 and total == 0:
        raise F.fail(path, "total destination weight = 0")
    return tuple(out)


def _header_value(value, path: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    value = F.string(value, path, empty_ok=True)
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise F.fail(path, f"header value configuration {value} is invalid")
    if value.replace("%%", "").count("%") % 2:
        raise F.fail(path, f"header value configuration: {value!r} has an unterminated %VARIABLE% "
                           "(write %% for a literal %)")
    return value


def _header_ops(obj, path: str, *, request: bool) -> HeaderOperations:
    F.mapping(obj or {}, path, allowed=("set", "add", "remove"))
    obj = obj or {}
    pairs = {}
    for op in ("set", "add"):
        items = []
        for k, v in F.mapping(obj.get(op) or {}, f"{path}.{op}").items():
            kp = f"{path}.{op}.{k}"
            k = F.string(k, kp)
            internal = k.startswith(":") or k.lower() == "host"
            authority = k.lower() in (":authority", "host")
            if request and internal and not authority:
                raise F.fail(kp, f"invalid header {k!r}: header cannot have \":\" prefix")
            if not request and k.lower() == "host":
                raise F.fail(kp, f"invalid header {k!r}: cannot set Host header")
            if not request and internal:
                raise F.fail(kp, f"invalid header {k!r}: header cannot have \":\" prefix")
            items.append((k, _header_value(v, kp)))
        pairs[op] = tuple(items)
    removes = F.strings(obj.get("remove"), f"{path}.remove")
    for i, k in enumerate(removes):
        if k.lower() == "host":
            raise F.fail(f"{path}.remove[{i}]", f"invalid header {k!r}: cannot set Host header")
        if k.startswith(":"):
            raise F.fail(f"{path}.remove[{i}]", f"invalid header {k!r}: header cannot have \":\" prefix")
    return HeaderOperations(pairs["set"], pairs["add"], tuple(removes))


def _headers(obj, path: str) -> Headers | None:
    if obj is None:
        return None
    F.mapping(obj, path, allowed=("request", "response"))
    return Headers(_header_ops(obj.get("request"), f"{path}.request", request=True),
                   _header_ops(obj.get("response"), f"{path}.response", request=False))


# -- actions -----------------------------------------------------------------------------

def _redirect(obj, path: str, matches: tuple[HTTPMatch, ...]) -> Redirect:
    F.mapping(obj, path, allowed=("uri", "authority", "port", "derivePort", "scheme", "redirectCode",
                                  "prefixRewrite"))
    uri = F.string(obj.get("uri", ""), f"{path}.uri", empty_ok=True)
    prefix = F.string(obj.get("prefixRewrite", ""), f"{path}.prefixRewrite", empty_ok=True)
    if uri and prefix:
        raise F.fail(path, "redirect may only specify one of uri or prefix_rewrite")
    if prefix and any(m.uri is not None and m.uri.kind is not MatchKind.PREFIX for m in matches):
        raise F.fail(f"{path}.prefixRewrite", "redirect prefix_rewrite requires all URI matches to use prefix "
                                              "match type")
    if "port" in obj and "derivePort" in obj:
        raise F.fail(path, "only one of port or derivePort")
    port = derive = None
    if obj.get("port"):
        port = I.port_number(obj["port"], f"{path}.port")
    if "derivePort" in obj:
        try:
            derive = DerivePort(F.string(obj["derivePort"], f"{path}.derivePort"))
        except ValueError:
            raise F.fail(f"{path}.derivePort", f"{obj['derivePort']!r} is not one of "
                                               f"{', '.join(DerivePort)}") from None
    scheme = F.string(obj.get("scheme", ""), f"{path}.scheme", empty_ok=True)
    authority = F.string(obj.get("authority", ""), f"{path}.authority", empty_ok=True)
    if not (uri or prefix or authority or scheme or port is not None or derive is not None):
        raise F.fail(path, "redirect must specify URI, authority, scheme, or port")
    code = I.integer(obj.get("redirectCode", 0), f"{path}.redirectCode") or 301
    if not 300 <= code <= 399:
        raise F.fail(f"{path}.redirectCode", f"{code} is not a valid redirect code, must be 3xx")
    if code not in REDIRECT_CODES:
        # istiod accepts it, then programs a route without an action
        raise F.fail(f"{path}.redirectCode", f"{code}: Envoy redirects with {', '.join(map(str, REDIRECT_CODES))} "
                                             "only")
    if scheme and scheme not in ("http", "https"):
        raise F.fail(f"{path}.scheme", 'invalid redirect scheme, must be "http" or "https"')
    return Redirect(uri, prefix, authority, port, derive, scheme, code)


def _direct_response(obj, path: str) -> DirectResponse:
    F.mapping(obj, path, allowed=("status", "body"), required=("status",))
    status = I.integer(obj["status"], f"{path}.status")
    if not 200 <= status <= 599:
        raise F.fail(f"{path}.status", f"HTTP status {status} is not in range 200-599")
    body = None
    if obj.get("body") is not None:
        b = F.mapping(obj["body"], f"{path}.body", allowed=("string", "bytes"))
        if "string" in b and "bytes" in b:
            raise F.fail(f"{path}.body", "only one of string or bytes")
        if "string" in b:
            body = F.string(b["string"], f"{path}.body.string", empty_ok=True).encode()
        elif "bytes" in b:
            try:
                body = base64.b64decode(F.string(b["bytes"], f"{path}.body.bytes", empty_ok=True), validate=True)
            except ValueError:
                raise F.fail(f"{path}.body.bytes", "is not base64") from None
        if body is not None and len(body) > 1024 * 1024:
            raise F.fail(f"{path}.body", "large direct_responses may impact control plane performance, must be "
                                         "less than 1MB")
    return DirectResponse(status, body)


def _rewrite(obj, path: str) -> Rewrite:
    F.mapping(obj, path, allowed=("uri", "authority", "uriRegexRewrite"))
    uri = F.string(obj.get("uri", ""), f"{path}.uri", empty_ok=True)
    authority = F.string(obj.get("authority", ""), f"{path}.authority", empty_ok=True)
    regex = None
    if obj.get("uriRegexRewrite") is not None:
        if uri:
            raise F.fail(path, "rewrite may only contain one of URI or UriRegexRewrite")
        rp = f"{path}.uriRegexRewrite"
        rr = F.mapping(obj["uriRegexRewrite"], rp, allowed=("match", "rewrite"))
        match = F.string(rr.get("match", ""), f"{rp}.match", empty_ok=True)
        sub = F.string(rr.get("rewrite", ""), f"{rp}.rewrite", empty_ok=True)
        if not match or not sub:
            raise F.fail(rp, "UriRegexRewrite requires both Rewrite and Match fields to be specified")
        regex = RegexRewrite(I.regex(match, f"{rp}.match", "HTTPRewrite.UriRegexRewrite.Match"), match, sub)
    if not uri and regex is None and not authority:
        raise F.fail(path, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of "
                           "URI or UriRegexRewrite may be specified")
    return Rewrite(uri, authority, regex)


def retry_on_entry_is_valid(entry: str) -> bool:
    """istiod's check of one retryOn entry (split on `,`, not trimmed): an Envoy
    condition or an HTTP status code."""
    return entry in RetryOn._value2member_map_ or (entry.isdigit() and int(entry) in KNOWN_STATUS_CODES)


def _retries(obj, path: str) -> HTTPRetry:
    F.mapping(obj, path, allowed=("attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities",
                                  "retryIgnorePreviousHosts", "backoff"))
    attempts = I.integer(obj.get("attempts", 0), f"{path}.attempts")
    if attempts < 0:
        raise F.fail(f"{path}.attempts", "attempts cannot be negative")
    if attempts == 0 and any(obj.get(k) is not None for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities")):
        raise F.fail(path, "http retry policy configured when attempts are set to 0 (disabled)")
    retry_on = F.string(obj.get("retryOn", ""), f"{path}.retryOn", empty_ok=True)
    if retry_on:
        for entry in retry_on.split(","):
            if not retry_on_entry_is_valid(entry):
                raise F.fail(f"{path}.retryOn", f"{entry!r} is not a valid retryOn policy")

    def flag(key):
        return None if obj.get(key) is None else F.boolean(obj[key], f"{path}.{key}")

    return HTTPRetry(
        attempts=attempts,
        per_try_timeout=I.istio_duration(obj["perTryTimeout"], f"{path}.perTryTimeout")
        if obj.get("perTryTimeout") is not None else None,
        retry_on=retry_on,
        retry_remote_localities=flag("retryRemoteLocalities"),
        retry_ignore_previous_hosts=flag("retryIgnorePreviousHosts"),
        backoff=I.istio_duration(obj["backoff"], f"{path}.backoff") if obj.get("backoff") is not None else None,
    )


def _fault(obj, path: str) -> Fault:
    F.mapping(obj, path, allowed=("delay", "abort"))
    if obj.get("delay") is None and obj.get("abort") is None:
        raise F.fail(path, "HTTP fault injection must have an abort and/or a delay")
    delay = abort = None
    if obj.get("delay") is not None:
        dp = f"{path}.delay"
        d = F.mapping(obj["delay"], dp, allowed=("fixedDelay", "exponentialDelay", "percentage", "percent"))
        if d.get("exponentialDelay") is not None:
            raise F.fail(f"{dp}.exponentialDelay", "exponentialDelay not supported yet")
        if d.get("fixedDelay") is None:
            raise F.fail(f"{dp}.fixedDelay", "a delay needs fixedDelay (Istio programs no delay without it)")
        if d.get("percentage") is not None:
            pct = I.percentage(d["percentage"], f"{dp}.percentage")
        else:
            # the deprecated integer field; neither given: 0 %, nothing is delayed (istiod's TranslateFault)
            pct = float(I.integer(d.get("percent", 0), f"{dp}.percent", minimum=0, maximum=100))
        delay = FaultDelay(I.istio_duration(d["fixedDelay"], f"{dp}.fixedDelay"), pct)
    if obj.get("abort") is not None:
        ap = f"{path}.abort"
        a = F.mapping(obj["abort"], ap, allowed=("httpStatus", "grpcStatus", "http2Error", "percentage"))
        # without a percentage istiod leaves Envoy's percentage unset: 0 %, nothing is aborted
        pct = I.percentage(a["percentage"], f"{ap}.percentage") if a.get("percentage") is not None else 0.0
        kinds = [k for k in ("httpStatus", "grpcStatus", "http2Error") if a.get(k) is not None]
        if len(kinds) > 1:
            raise F.fail(ap, f"only one of httpStatus, grpcStatus, http2Error (found {', '.join(kinds)})")
        if "http2Error" in kinds:
            raise F.fail(f"{ap}.http2Error", "HTTP/2 abort fault injection not supported yet")
        if "httpStatus" in kinds:
            status = I.integer(a["httpStatus"], f"{ap}.httpStatus")
            if not 200 <= status <= 599:
                raise F.fail(f"{ap}.httpStatus", f"HTTP status {status} is not in range 200-599")
            abort = FaultAbort(pct, http_status=status)
        elif "grpcStatus" in kinds:
            code = F.string(a["grpcStatus"], f"{ap}.grpcStatus")
            if code not in GRPC_STATUS:
                raise F.fail(f"{ap}.grpcStatus", f"gRPC status {code!r} is not supported. See "
                                                 "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for "
                                                 "a list of supported codes, for example 'NOT_FOUND'")
            abort = FaultAbort(pct, grpc_status=code, grpc_code=GRPC_STATUS[code])
        # no error type: istiod warns and programs no abort; meshcore does the same
    return Fault(delay, abort)


def _mirror_percentage(obj, path: str) -> float:
    F.mapping(obj, path, allowed=("value",))
    value = I.number(obj.get("value", 0), f"{path}.value")
    if value > 100:
        raise F.fail(f"{path}.value", f"mirror_percentage must have a max value of 100 (it has {value:g})")
    if value < 0:
        raise F.fail(f"{path}.value", f"mirror_percentage must have a min value of 0 (it has {value:g})")
    return value


def _mirrors(obj: dict, path: str, namespace: str) -> tuple[Mirror, ...]:
    """`mirror` (with `mirrorPercentage` or the deprecated `mirrorPercent`) and `mirrors`.
    Without a percentage everything is mirrored; an explicit 0 mirrors nothing and is
    dropped, as istiod's MirrorPercent does."""
    out = []
    pct = 100.0
    if obj.get("mirrorPercentage") is not None:
        pct = _mirror_percentage(obj["mirrorPercentage"], f"{path}.mirrorPercentage")
    elif obj.get("mirrorPercent") is not None:
        pct = float(I.integer(obj["mirrorPercent"], f"{path}.mirrorPercent", minimum=0))
        if pct > 100:
            raise F.fail(f"{path}.mirrorPercent", f"mirror_percent must have a max value of 100 (it has {pct:g})")
    if obj.get("mirror") is not None:
        dest = _destination(obj["mirror"], f"{path}.mirror", namespace)
        if pct > 0:
            out.append(Mirror(dest, pct))
    for i, m in enumerate(F.sequence(obj.get("mirrors"), f"{path}.mirrors")):
        mp = f"{path}.mirrors[{i}]"
        if m is None:
            raise F.fail(mp, "mirror cannot be null")
        F.mapping(m, mp, allowed=("destination", "percentage"))
        if m.get("destination") is None:
            raise F.fail(f"{mp}.destination", "destination is required for mirrors")
        dest = _destination(m["destination"], f"{mp}.destination", namespace)
        p = 100.0 if m.get("percentage") is None else _mirror_percentage(m["percentage"], f"{mp}.percentage")
        if p > 0:
            out.append(Mirror(dest, p))
    return tuple(out)


_CORS_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE")


def _cors(obj, path: str) -> CorsPolicy:
    F.mapping(obj, path, allowed=("allowOrigin", "allowOrigins", "allowMethods", "allowHeaders", "exposeHeaders",
                                  "maxAge", "allowCredentials", "unmatchedPreflights"))
    origins = []
    for i, origin in enumerate(F.sequence(obj.get("allowOrigins"), f"{path}.allowOrigins")):
        op = f"{path}.allowOrigins[{i}]"
        m = _string_match(origin, op, "corsPolicy.allowOrigins")
        if m.kind is MatchKind.PRESENT or not m.value:
            raise F.fail(op, "'' is not a valid match type for CORS allow origins")
        origins.append(m)
    methods = F.strings(obj.get("allowMethods"), f"{path}.allowMethods")
    for i, method in enumerate(methods):
        if method not in _CORS_METHODS:
            raise F.fail(f"{path}.allowMethods[{i}]", f"{method!r} is not a supported HTTP method")
    names = {}
    for key in ("allowHeaders", "exposeHeaders"):
        names[key] = F.strings(obj.get(key), f"{path}.{key}")
        for i, h in enumerate(names[key]):
            if h != "*" and not _HEADER_NAME.fullmatch(h):
                raise F.fail(f"{path}.{key}[{i}]", f"header name {h} is not a valid header name")
    age = None
    if obj.get("maxAge") is not None:
        age = I.istio_duration(obj["maxAge"], f"{path}.maxAge")
        if age != int(age):
            raise F.fail(f"{path}.maxAge", "max_age duration is accurate only to seconds precision")
    unmatched = None
    if obj.get("unmatchedPreflights") is not None:
        text = F.string(obj["unmatchedPreflights"], f"{path}.unmatchedPreflights")
        try:
            unmatched = UnmatchedPreflights(text)
        except ValueError:
            raise F.fail(f"{path}.unmatchedPreflights", f"{text!r} is not one of "
                                                        f"{', '.join(UnmatchedPreflights)}") from None

    credentials = None
    if obj.get("allowCredentials") is not None:
        credentials = F.boolean(obj["allowCredentials"], f"{path}.allowCredentials")
    return CorsPolicy(
        allow_origins=tuple(origins),
        allow_origin=tuple(F.strings(obj.get("allowOrigin"), f"{path}.allowOrigin")),
        allow_methods=tuple(methods), allow_headers=tuple(names["allowHeaders"]),
        expose_headers=tuple(names["exposeHeaders"]), max_age=age, allow_credentials=credentials,
        unmatched_preflights=unmatched)
