"""Field checks shared by meshcore's VirtualService and DestinationRule parsers, with
istiod's rules: durations, percentages, hostnames, label maps, RE2 regexes, exportTo.
Each refusal is a ConfigError through meshcore.config.fields.fail (path and reason).
"""
from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone
from decimal import Decimal

from meshcore.config import fields as F

DOMAIN_SUFFIX = "cluster.local"

# what Kubernetes adds to objects it returns (kubectl get -o yaml): accepted and ignored
METADATA_FIELDS = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
                   "creationTimestamp", "managedFields", "ownerReferences", "finalizers")
ISTIO_NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                             "networking.istio.io/v1alpha3")

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NANOS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
               "m": 60_000_000_000, "h": 3_600_000_000_000}
_DNS_LABEL = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_WILDCARD_LABEL = re.compile(r"\*|(\*|\*-)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _nanoseconds(obj, path: str) -> int:
    text = F.string(obj, path) if not isinstance(obj, (int, float)) or isinstance(obj, bool) else None
    if text is None:
        raise F.fail(path, f"{obj!r} is not a duration: write it with a unit (`1s`, `100ms`, `1m`)")
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    if not body:
        raise F.fail(path, f"{text!r} is not a duration (a number and a unit: ns, us, ms, s, m, h)")
    pos, total = 0, Decimal(0)
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise F.fail(path, f"{text!r} is not a duration (a number and a unit: ns, us, ms, s, m, h)")
        total += Decimal(m.group(1)) * _UNIT_NANOS[m.group(2)]
        pos = m.end()
    nanos = int(total)               # Go truncates fractions of a nanosecond
    return -nanos if text.startswith("-") else nanos


def duration(obj, path: str) -> float:
    """Seconds from a duration as Istio's CRDs take it: protobuf JSON (`1.5s`) or Go's
    syntax (`1h2m`, `100ms`)."""
    return _nanoseconds(obj, path) / 1e9


def istio_duration(obj, path: str) -> float:
    """A duration istiod accepts where it calls ValidateDuration: at least 1ms, whole ms."""
    nanos = _nanoseconds(obj, path)
    if nanos < 1_000_000:
        raise F.fail(path, "duration must be greater than 1ms")
    if nanos % 1_000_000:
        raise F.fail(path, "only durations to ms precision are supported")
    return nanos / 1e9


def creation_timestamp(obj, path: str) -> str:
    """metadata.creationTimestamp as RFC 3339 UTC text, so that timestamps sort in time
    order whether YAML read them as text or as datetimes; "" when absent."""
    if obj is None or obj == "":
        return ""
    if isinstance(obj, datetime):
        when = obj if obj.tzinfo is not None else obj.replace(tzinfo=timezone.utc)
    else:
        try:
            when = datetime.fromisoformat(F.string(obj, path).replace("Z", "+00:00"))
        except ValueError:
            raise F.fail(path, f"{obj!r} is not an RFC 3339 time (2024-01-31T12:00:00Z)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def networking_document(doc) -> tuple[str, str, str]:
    """(name, namespace, creationTimestamp) of a networking.istio.io document (v1,
    v1beta1 or v1alpha3), its top level and metadata checked; the spec is the caller's."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata", "spec"))
    if doc["apiVersion"] not in ISTIO_NETWORKING_VERSIONS:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not one of {', '.join(ISTIO_NETWORKING_VERSIONS)}")
    meta = F.mapping(doc["metadata"], "metadata", allowed=METADATA_FIELDS, required=("name",))
    return (F.string(meta["name"], "metadata.name"),
            F.string(meta.get("namespace", "default"), "metadata.namespace"),
            creation_timestamp(meta.get("creationTimestamp"), "metadata.creationTimestamp"))


def integer(obj, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        if isinstance(obj, str) and re.fullmatch(r"-?\d+", obj.strip()):
            obj = int(obj)
        else:
            raise F.fail(path, f"expected a whole number, got {obj!r}")
    if minimum is not None and obj < minimum:
        raise F.fail(path, f"{obj} is below {minimum}")
    if maximum is not None and obj > maximum:
        raise F.fail(path, f"{obj} is above {maximum}")
    return obj


def number(obj, path: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        raise F.fail(path, f"expected a number, got {obj!r}")
    return float(obj)


def percentage(obj, path: str) -> float:
    """Istio's Percent message `{value: 12.5}`: 0, or 0.0001 to 100."""
    F.mapping(obj, path, allowed=("value",))
    value = number(obj.get("value", 0), f"{path}.value")
    if value < 0 or value > 100 or 0 < value < 0.0001:
        raise F.fail(f"{path}.value", f"percentage {value:g} is neither 0.0, nor in range [0.0001, 100.0]")
    return value


def port_number(obj, path: str) -> int:
    value = integer(obj, path)
    if not 1 <= value <= 65535:
        raise F.fail(path, f"port number {value} must be in the range 1..65535")
    return value


def dns_labels(domain: str, path: str) -> None:
    parts = domain.split(".")
    if parts[-1].isdigit():
        raise F.fail(path, f"domain name {domain!r} invalid (top level domain {parts[-1]!r} cannot be all-numeric)")
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return
        if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
            raise F.fail(path, f"domain name {domain!r} invalid (label {label!r} invalid)")


def wildcard_domain(domain: str, path: str) -> None:
    """istiod's ValidateWildcardDomain: DNS-1123 labels, a wildcard only in the first."""
    if not domain:
        raise F.fail(path, "empty domain name not allowed")
    if len(domain) > 255:
        raise F.fail(path, f"domain name {domain!r} too long (max 255)")
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.fullmatch(first):
        raise F.fail(path, f"domain name {domain!r} invalid (label {first!r} invalid)")
    if rest:
        dns_labels(rest, path)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def fqdn(hostname: str, namespace: str, domain_suffix: str = DOMAIN_SUFFIX) -> str:
    """A short name (no dot) completed the way istiod does, in the resource's namespace:
    `reviews` in `prod` is `reviews.prod.svc.cluster.local`."""
    if hostname == "*" or "." in hostname or is_ip(hostname):
        return hostname
    return f"{hostname}.{namespace}.svc.{domain_suffix}"


def host_matches(pattern: str, hostname: str) -> bool:
    """istiod's host.Name.Matches, both ways round for wildcards: `*.ns.svc.cluster.local`
    takes `a.ns.svc.cluster.local`, `*` takes anything."""
    if pattern == hostname:
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        if hostname.startswith("*"):
            return hostname[1:].endswith(suffix) or suffix.endswith(hostname[1:])
        return hostname.endswith(suffix)
    if hostname.startswith("*"):
        return pattern.endswith(hostname[1:])
    return False


def dns_label(text: str, path: str, what: str) -> str:
    """istiod's IsDNS1123Label (which takes upper case too)."""
    if not text or len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise F.fail(path, f"{what} is invalid: {text}")
    return text


def labels(obj, path: str) -> tuple[tuple[str, str], ...]:
    """A Kubernetes label map, checked as istiod's labels.Instance.Validate does."""
    out = []
    for k, v in F.mapping(obj or {}, path).items():
        key = F.string(k, path)
        value = F.string("" if v is None else str(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                         else v, f"{path}.{key}", empty_ok=True)
        prefix, slash, name = key.partition("/")
        if not slash:
            prefix, name = "", key
        if slash and (len(prefix) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in prefix.split("."))):
            raise F.fail(f"{path}.{key}", f"invalid tag key: {key!r}")
        if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            raise F.fail(f"{path}.{key}", f"invalid tag key: {key!r}")
        if not _LABEL_VALUE.fullmatch(value):
            raise F.fail(f"{path}.{key}", f"invalid tag value: {value!r}")
        out.append((key, value))
    return tuple(sorted(out))


def export_to(obj, path: str, namespace: str) -> tuple[str, ...]:
    """istiod's validateExportTo for VirtualService and DestinationRule."""
    entries = F.strings(obj, path)
    seen: set[str] = set()
    for i, e in enumerate(entries):
        key = namespace if e == "." else e
        if key in seen:
            reason = (f"duplicate entries in exportTo: . and current namespace {namespace}" if key != e
                      else f"duplicate entries in exportTo for entry {e}")
            raise F.fail(f"{path}[{i}]", reason)
        if e == "~":
            raise F.fail(f"{path}[{i}]", "exportTo ~ (none) is not allowed for Istio configuration objects")
        if e not in (".", "*") and (len(e) > 63 or not _DNS_LABEL.fullmatch(e)):
            raise F.fail(f"{path}[{i}]", f"only .,*, or a valid DNS 1123 label is allowed as exportTo entry "
                                         f"(got {e!r})")
        seen.add(key)
    if "*" in entries and len(entries) > 1:
        raise F.fail(path, "cannot have both public (*) and non-public exportTo values for a resource")
    return tuple(entries)


# -- regular expressions -----------------------------------------------------------------

_RE2_REFUSES = (
    ("(?=", "lookahead"), ("(?!", "negative lookahead"), ("(?<=", "lookbehind"), ("(?<!", "negative lookbehind"),
    ("(?>", "atomic group"), ("(?P=", "backreference"), ("(?(", "conditional group"), ("(?#", "comment group"),
)


def _re2_refusal(pattern: str) -> str | None:
    """Why RE2 (Envoy's and istiod's engine) refuses `pattern`, or why meshcore's engine
    would read it differently; None when both agree on it."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and nxt in tuple("123456789"):
                return f"backreference \\{nxt} (RE2 has no backreferences)"
            if not in_class and nxt in ("k", "g"):
                return f"\\{nxt} backreference (RE2 has no backreferences)"
            if nxt in ("p", "P"):
                return "Unicode classes (\\p) are not supported by meshcore's regex engine"
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                return "POSIX classes ([:alpha:]) are not supported by meshcore's regex engine"
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 1
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":          # a leading ] is a literal
                i += 1
            continue
        if c == "(":
            for opener, what in _RE2_REFUSES:
                if pattern.startswith(opener, i):
                    return f"{what} {opener!r} (RE2 does not support it)"
        if c in "*+?}" and pattern[i + 1:i + 2] == "+":
            return f"possessive quantifier {c}+ (RE2 does not support it)"
        i += 1
    return None


def regex(text: str, path: str, where: str) -> re.Pattern:
    """An RE2 pattern as istiod accepts it (at most 1024 characters, RE2 syntax), compiled
    for full matches with Python's re."""
    if not text:
        raise F.fail(path, f"{where!r}: regex string match should not be empty")
    if len(text) > 1024:
        raise F.fail(path, f"{where!r}: regex is too large, max length allowed is 1024")
    why = _re2_refusal(text)
    if why is None:
        try:
            return re.compile(text)
        except re.error as e:
            why = str(e)
    raise F.fail(path, f"{where!r}: {why}; Istio uses RE2 style regex-based match "
                       "(https://github.com/google/re2/wiki/Syntax)")
