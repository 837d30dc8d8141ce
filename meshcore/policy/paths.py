"""Request paths as Istio's authorization sees them.

Path templates (an AuthorizationPolicy path holding `{*}` or `{**}`) follow Envoy's URI
templates, which Istio compiles them to: `{*}` is exactly one path segment (one or more
characters, no `/`), `{**}` any number of characters including `/` (zero or more
segments) and must be the last operator; each operator is a whole segment. Anything
else inside braces is refused, never matched literally.

`normalize()` is Istio's `pathNormalization` (mesh config): the query and fragment are
never part of the path; `%00` is refused in every mode; BASE decodes the percent-encoded
unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`, any hex case, once: `%252e`
stays `%252e`), then resolves `.`/`..` segments (RFC 3986 5.2.4) and turns `\\` into
`/`; MERGE_SLASHES also merges `//`; DECODE_AND_MERGE_SLASHES also decodes `%2F`, `%5C`
(any case). An L7 proxy normalizes once, before routing and policy, and forwards the
normalized path: `request_path()` does it for a request-target.
"""
from __future__ import annotations

import re

# the characters Envoy's `*` matches: RFC 3986 pchar without '/'
_SEGMENT = r"[A-Za-z0-9\-._~%!$&'()+,;:@=*]+"
_REST = r"[A-Za-z0-9\-._~%!$&'()+,;:@=*/]*"
_OPERATOR = re.compile(r"\{[^}]*\}")

NORMALIZATIONS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ABSOLUTE = re.compile(r"(?i)(https?)://([^/?#]*)(.*)\Z", re.S)


def is_template(path: str) -> bool:
    return "{" in path or "}" in path


def check_template(path: str) -> None:
    """ValueError saying what is wrong with a path template (Istio refuses the policy)."""
    if not path.startswith("/"):
        raise ValueError(f"path template {path!r} must start with /")
    operators = _OPERATOR.findall(path)
    if not operators or "{" in _OPERATOR.sub("", path) or "}" in _OPERATOR.sub("", path):
        raise ValueError(f"path template {path!r} has an unbalanced brace")
    for op in operators:
        if op not in ("{*}", "{**}"):
            raise ValueError(f"path template {path!r}: {op} is not an operator (only {{*}} and {{**}})")
    if "{**}" in operators and operators.index("{**}") != len(operators) - 1:
        raise ValueError(f"path template {path!r}: {{**}} must be the last operator")
    for segment in path.split("/")[1:]:
        if _OPERATOR.search(segment) and segment not in ("{*}", "{**}"):
            raise ValueError(f"path template {path!r}: an operator must be a whole segment, not {segment!r}")
    if "*" in _OPERATOR.sub("", path):
        raise ValueError(f"path template {path!r} mixes a template with a * wildcard")


def template_regex(path: str) -> re.Pattern:
    check_template(path)
    out = []
    for part in re.split(r"(\{\*\*\}|\{\*\})", path):
        out.append(_REST if part == "{**}" else _SEGMENT if part == "{*}" else re.escape(part))
    return re.compile("".join(out))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    output: list[str] = []
    for segment in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    result = "/" + "/".join(output)
    if path.endswith(("/.", "/..")) and not result.endswith("/"):
        result += "/"
    return result


def _decode(path: str, slashes: bool) -> str:
    """One pass over the escapes: what it decodes is never decoded again."""
    def one(m: re.Match) -> str:
        char = chr(int(m.group(1), 16))
        if char in _UNRESERVED or (slashes and char in "/\\"):
            return char
        return m.group(0)
    return _ESCAPE.sub(one, path)


def normalize(path: str, mode: str = "BASE") -> str:
    """The path (no query, no fragment) under Istio's normalization `mode`. ValueError for
    a path no mode lets through (`%00`: the caller answers 400) or an unknown mode."""
    path = path.partition("?")[0].partition("#")[0]
    if mode not in NORMALIZATIONS:
        raise ValueError(f"path normalization {mode!r} is not one of {', '.join(NORMALIZATIONS)}")
    if "%00" in path:
        # a NUL ends the path for some servers and not for others: never decided on
        raise ValueError("the path holds %00")
    if mode == "NONE":
        return path
    # decoded before the dot segments are resolved: /x/%2e%2e/admin is /admin to a server
    path = _decode(path, mode == "DECODE_AND_MERGE_SLASHES")
    path = remove_dot_segments(path.replace("\\", "/"))
    if mode in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        path = re.sub(r"/{2,}", "/", path)
    return path


def request_path(target: str, mode: str = "BASE", *, method: str | None = None) -> tuple[str, str]:
    """(path, query) of an HTTP request-target (RFC 9112 3.2), the path normalized by
    `mode`; query without its `?`, "" if none (forward `path + ("?" + query if query
    else "")`). The path is what both the policy check and the upstream request get.

    origin-form `/a/b?q`: as is; absolute-form `http://host/a?q` (http or https): its
    path ("/" if empty; its authority: `request_authority()`); asterisk-form `*`: only
    with method OPTIONS, returned as ("*", ""). ValueError, with the reason, for what
    the caller must refuse with 400: another form, a fragment, a byte outside visible
    ASCII, userinfo in an absolute-form authority, %00."""
    if not target:
        raise ValueError("empty request-target")
    bad = next((c for c in target if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"request-target holds {bad!r}")
    if "#" in target:
        raise ValueError("request-target holds a fragment")
    if target == "*":
        if method != "OPTIONS":
            raise ValueError("asterisk-form is for OPTIONS only")
        return "*", ""
    if not target.startswith("/"):
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise ValueError("request-target is neither origin-form nor absolute-form")
        if "@" in absolute.group(2):
            raise ValueError("absolute-form authority holds userinfo")
        if not absolute.group(2):
            raise ValueError("absolute-form without a host")
        target = absolute.group(3)
        if not target.startswith("/"):
            target = "/" + target            # http://host?q is /?q (RFC 9112 3.2.1)
    path, _, query = target.partition("?")
    return normalize(path, mode), query


def request_authority(target: str) -> str | None:
    """The authority of an absolute-form request-target (what a proxy uses as the request's
    host, RFC 9112 3.2.2); None for any other form."""
    absolute = _ABSOLUTE.match(target)
    return absolute.group(2) if absolute is not None else None
