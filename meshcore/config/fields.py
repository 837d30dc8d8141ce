"""Typed access to parsed YAML with precise error paths.

Every check raises ConfigError(path=..., reason=...); the file loader fills in the
file name and document number, so a refusal reads
`policy.yaml, document 2, at spec.rules[0].from[1].source.ipBlocks[0]: ...`.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshcore.errors import ConfigError


def fail(path: str, reason: str) -> ConfigError:
    return ConfigError(reason, path=path)


def mapping(obj, path: str, allowed: Iterable[str] | None = None, required: Iterable[str] = ()) -> dict:
    if not isinstance(obj, dict):
        raise fail(path, f"expected a mapping, got {_kind(obj)}")
    if allowed is not None:
        unknown = sorted(set(map(str, obj)) - set(allowed))
        if unknown:
            raise fail(f"{path}.{unknown[0]}" if path else unknown[0],
                       f"unknown field (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj or obj[key] is None:
            raise fail(f"{path}.{key}" if path else key, "required field is missing")
    return obj


def sequence(obj, path: str) -> list:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise fail(path, f"expected a list, got {_kind(obj)}")
    return obj


def string(obj, path: str, *, empty_ok: bool = False) -> str:
    if not isinstance(obj, str) or isinstance(obj, bool):
        raise fail(path, f"expected a string, got {_kind(obj)}")
    if not obj and not empty_ok:
        raise fail(path, "must not be empty")
    return obj


def strings(obj, path: str) -> list[str]:
    return [string(v, f"{path}[{i}]") for i, v in enumerate(sequence(obj, path))]


def port(obj, path: str) -> int:
    if isinstance(obj, bool):
        raise fail(path, f"expected a port number, got {_kind(obj)}")
    try:
        value = int(obj) if isinstance(obj, (int, str)) else None
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 65535 or (isinstance(obj, str) and not obj.strip().isdigit()):
        raise fail(path, f"{obj!r} is not a port number (0-65535)")
    return value


def network(obj, path: str):
    text = string(obj, path)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise fail(path, f"{text!r} is not an IP address or CIDR block") from None


def boolean(obj, path: str) -> bool:
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, str) and obj.lower() in ("true", "false"):
        return obj.lower() == "true"
    raise fail(path, f"expected true or false, got {obj!r}")


def _kind(obj) -> str:
    if obj is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"the string {obj!r}", bool: f"{obj}"}.get(
        type(obj), f"{type(obj).__name__} {obj!r}")
