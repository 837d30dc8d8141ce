"""The node's log output, in ztunnel's shapes: text lines
`<RFC3339 time>\t<level>\t<target>\t<message>\tkey=value ...` or one JSON object per line,
and the access log: one line per completed connection."""
from __future__ import annotations

import json
import logging
import re
import sys
import time

from meshcore.node.record import ConnectionRecord

access_log = logging.getLogger("meshcore.access")

_TARGETS = {"meshcore.access": "access"}


# printable ASCII but `"` and `\\`: quoted as it is, the same as json.dumps would
_PLAIN = re.compile(r'[ !#-\[\]-~]*')


def _text_value(key: str, value) -> str:
    """ztunnel's text form: numbers and addresses bare, other values quoted."""
    if isinstance(value, int) or key.endswith("addr"):
        return str(value)
    text = str(value)
    return f'"{text}"' if _PLAIN.fullmatch(text) else json.dumps(text)


class _Clock:
    """RFC 3339 UTC times with microseconds; the part up to the second is made once
    per second, as a busy proxy writes many lines in each."""
    __slots__ = ("second", "prefix")

    def __init__(self):
        self.second, self.prefix = -1, ""

    def format(self, created: float) -> str:
        second = int(created)
        micros = round((created - second) * 1e6)          # rounded as datetime rounds it
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self.second:
            self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{micros:06d}Z"


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json
        self.clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        when = self.clock.format(record.created)
        level = record.levelname.lower().replace("warning", "warn")
        target = _TARGETS.get(record.name, record.name.removeprefix("meshcore.").replace(".", "::"))
        fields = getattr(record, "fields", None) or {}
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps({"level": level, "time": when, "scope": target, "message": message, **fields},
                              separators=(",", ":"))
        parts = [when, level, target, message]
        if fields:
            # _text_value() in a plain loop: an access line has some 15 fields, and a
            # call and a generator step each for every one cost more than the rest
            out = []
            for k, v in fields.items():
                if isinstance(v, int) or k.endswith("addr"):
                    out.append(f"{k}={v!s}")
                else:
                    text = str(v)
                    out.append(f'{k}="{text}"' if _PLAIN.fullmatch(text) else f"{k}={json.dumps(text)}")
            parts.append(" ".join(out))
        return "\t".join(parts)


def configure(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def lean_records() -> None:
    """For a proxy process whose only output is configure()'s: neither line shape shows
    a record's source file, thread or process, so they are not looked up for every
    record, an access line per connection included (the logging HOWTO's
    "Optimization" settings). Process-wide, hence not part of configure()."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 10}


def set_level(level: str) -> None:
    """`info`, or ztunnel's `target=level,...` form (`access=warn,info`)."""
    for part in level.split(","):
        target, sep, value = part.strip().rpartition("=")
        if value.lower() not in LEVELS:
            raise ValueError(f"unknown log level {value!r} (one of {', '.join(LEVELS)})")
        name = "meshcore." + target.replace("::", ".") if sep else ""
        logging.getLogger(name or None).setLevel(LEVELS[value.lower()])


def access(record: ConnectionRecord) -> None:
    if record.error:
        access_log.warning("connection failed", extra={"fields": record.log_fields()})
    else:
        access_log.info("connection complete", extra={"fields": record.log_fields()})
