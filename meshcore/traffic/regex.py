r"""Regular expressions as Istio's routes use them: Envoy evaluates RE2, meshcore Python's
`re`. compile_re2 refuses what RE2 has no meaning for (backreferences, lookaround,
atomic groups, possessive quantifiers, conditionals) and the RE2 spellings Python
would read otherwise (POSIX classes like [[:alpha:]]; RE2's \z becomes Python's \Z),
so a pattern meshcore accepts means the same in both, matched whole as Envoy does."""
from __future__ import annotations

import re
import warnings

try:                                    # the parser moved in Python 3.11
    from re import _constants as _C, _parser as _P
except ImportError:                     # pragma: no cover
    import sre_constants as _C          # type: ignore[no-redef]
    import sre_parse as _P              # type: ignore[no-redef]

_NOT_RE2 = {
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "ASSERT": "a lookahead or lookbehind",
    "ASSERT_NOT": "a negative lookahead or lookbehind",
    "ATOMIC_GROUP": "an atomic group",
    "POSSESSIVE_REPEAT": "a possessive quantifier",
}

_POSIX_CLASS = re.compile(r"\[:\^?[a-z]+:\]")


def compile_re2(pattern: str) -> tuple[re.Pattern | None, str]:
    """(compiled, "") or (None, why RE2 or Python refuses it)."""
    # RE2 writes the end of text \z, Python \Z
    text = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern)
    if _POSIX_CLASS.search(text):
        # RE2 reads [[:alpha:]] as letters, Python as a set of characters followed by "]"
        return None, (f"{pattern!r} uses a POSIX character class ([:name:]), which Python reads differently: "
                      "write the characters out (like [a-zA-Z])")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)     # syntax Python may read differently later
            tree = _P.parse(text)
            compiled = re.compile(text)
    except (re.error, FutureWarning) as exc:
        return None, f"{pattern!r} is not a regular expression: {exc}"
    found = _unsupported(tree)
    if found:
        return None, f"{pattern!r} uses {found}, which RE2 (Envoy's regular expressions) does not support"
    return compiled, ""


def _unsupported(tree) -> str:
    for op, arg in tree:
        name = str(op)
        if name in _NOT_RE2:
            return _NOT_RE2[name]
        for sub in _children(op, arg):
            found = _unsupported(sub)
            if found:
                return found
    return ""


def _children(op, arg):
    """The sub-patterns under one parsed node."""
    if op is _C.SUBPATTERN:
        yield arg[-1]
    elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
        yield arg[2]
    elif op is _C.BRANCH:
        yield from arg[1]
    elif op in (_C.ASSERT, _C.ASSERT_NOT):
        yield arg[1]
    elif str(op) == "ATOMIC_GROUP" or str(op) == "POSSESSIVE_REPEAT":
        yield arg[-1] if str(op) == "POSSESSIVE_REPEAT" else arg
    elif op is _C.GROUPREF_EXISTS:
        yield arg[1]
        if arg[2] is not None:
            yield arg[2]


def literal_prefix(pattern: re.Pattern) -> str:
    """The longest text every full match of `pattern` starts with: its leading literal
    characters (through plain groups, past zero-width anchors), "" when it starts with
    anything else or ignores case. Route tables index regular-expression paths by it, so
    a request only tries the patterns whose prefix its path starts with."""
    cached = _PREFIXES.get(pattern)
    if cached is None:
        if len(_PREFIXES) >= 4096:
            _PREFIXES.clear()
        cached = _PREFIXES[pattern] = _literal_prefix(pattern)
    return cached


# tables are rebuilt on every change of their routes: the patterns they keep are not parsed again
_PREFIXES: dict[re.Pattern, str] = {}


def _literal_prefix(pattern: re.Pattern) -> str:
    if pattern.flags & re.IGNORECASE or not isinstance(pattern.pattern, str):
        return ""
    try:
        tree = _P.parse(pattern.pattern, pattern.flags)
    except re.error:                     # pragma: no cover (it compiled)
        return ""
    if tree.state.flags & re.IGNORECASE:
        return ""
    out: list[str] = []
    _leading_literals(tree, out)
    return "".join(out)


def _leading_literals(items, out: list[str]) -> bool:
    """Appends the leading literals of `items`; True when all of it was literal (what
    follows it still starts where it ended)."""
    for op, arg in items:
        if op is _C.LITERAL:
            out.append(chr(arg))
        elif op is _C.AT:
            continue                      # zero width: the next character is still the next one
        elif op is _C.SUBPATTERN and not arg[1] and not arg[2]:
            if not _leading_literals(arg[-1], out):
                return False
        else:
            return False
    return True
