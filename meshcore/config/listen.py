"""`--listen NAME=HOST:PORT` or `NAME=off`, for the proxies' command lines."""
from __future__ import annotations

import argparse
from collections.abc import Iterable


def listen_type(names: Iterable[str]):
    """An argparse type for one listener option: (name, (host, port)) or (name, None)."""
    names = tuple(names)

    def parse(text: str) -> tuple[str, tuple | None]:
        name, sep, value = text.partition("=")
        if not sep or name not in names:
            raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=HOST:PORT or NAME=off, NAME one of "
                                             f"{', '.join(names)}")
        if value == "off":
            return name, None
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not HOST:PORT (or off)")
        return name, (host.strip("[]"), int(port))
    return parse


def listeners(defaults: dict, listen: dict, address: str) -> dict:
    """name -> (host, port), or None when turned off: the defaults, moved by `listen`
    (`--listen`), with a listener given no host bound to `address` (`--address`)."""
    out = {}
    for name, (host, port) in defaults.items():
        value = listen.get(name, (host or address, port))
        if value is not None and value[0] == "":
            value = (address, value[1])
        out[name] = value
    return out
