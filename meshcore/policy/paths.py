"""Request paths as Istio's authorization sees them.

Path templates (an AuthorizationPolicy path holding `{*}` or `{**}`) follow Envoy's URI
templates, which Istio compiles them to: `{*}` is exactly one path segment (one or more
characters, no `/`), `{**}` any number of characters including `/` (zero or more
segments) and must be the last operator; each operator is a whole segment. Anything
else inside braces is refused, never matched literally.

`normalize()` is Istio's `pathNormalization` (mesh config): the query and fragment are
never part of the path; BASE resolves `.`/`..` segments (RFC 3986 5.2.4) and turns `\\`
into `/`; MERGE_SLASHES also merges `//`; DECODE_AND_MERGE_SLASHES first decodes
`%2F`, `%5C` (any case). An L7 proxy normalizes once, before routing and policy.
"""
from __future__ import annotations

import re

# the characters Envoy's `*` matches: RFC 3986 pchar without '/'
_SEGMENT = r"[A-Za-z0-9\-._~%!$&'()+,;:@=*]+"
_REST = r"[A-Za-z0-9\-._~%!$&'()+,;:@=*/]*"
_OPERATOR = re.compile(r"\{[^}]*\}")

NORMALIZATIONS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")


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


def normalize(path: str, mode: str = "BASE") -> str:
    """The path (no query, no fragment) under Istio's normalization `mode`."""
    path = path.partition("?")[0].partition("#")[0]
    if mode == "NONE":
        return path
    if mode not in NORMALIZATIONS:
        raise ValueError(f"path normalization {mode!r} is not one of {', '.join(NORMALIZATIONS)}")
    if mode == "DECODE_AND_MERGE_SLASHES":
        path = re.sub(r"%2[Ff]", "/", re.sub(r"%5[Cc]", "\\\\", path))
    path = remove_dot_segments(path.replace("\\", "/"))
    if mode in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        path = re.sub(r"/{2,}", "/", path)
    return path
