"""Multi-document YAML with errors that name the file, the document and the line.

libyaml parses when PyYAML was built with it (several times faster). A text that is
one JSON document (valid YAML too, and what generators and xDS mirrors write) is read
by the json module: a configuration of 10,000 workloads, services and policies is
read in a tenth of a second that way, against seconds as YAML.
"""
from __future__ import annotations

import json

from meshcore.errors import ConfigError


_WS = json.decoder.WHITESPACE.match
_DECODER = json.JSONDecoder()


def _json_document(text: str):
    """One JSON document, the arrays of its top-level object decoded an element at a
    time. json.loads holds the GIL for the whole text (about 45 ms for 5 MB, the event
    loop stopped even when a worker thread parses); each element here is one short call,
    so the loop gets the GIL between them. ValueError if the text is not JSON."""
    pos = _WS(text, 0).end()
    if text[pos:pos + 1] != "{":
        return json.loads(text)
    out = {}
    pos = _WS(text, pos + 1).end()
    while text[pos:pos + 1] != "}":
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _WS(text, pos).end()
        if not isinstance(key, str) or text[pos:pos + 1] != ":":
            raise ValueError(f"not a JSON object member at character {pos}")
        pos = _WS(text, pos + 1).end()
        if text[pos:pos + 1] == "[":
            value = []
            pos = _WS(text, pos + 1).end()
            while text[pos:pos + 1] != "]":
                item, pos = _DECODER.raw_decode(text, pos)
                value.append(item)
                pos = _WS(text, pos).end()
                if text[pos:pos + 1] == ",":
                    pos = _WS(text, pos + 1).end()
                    if text[pos:pos + 1] == "]":
                        raise ValueError(f"trailing ',' at character {pos}")
                elif text[pos:pos + 1] != "]":
                    raise ValueError(f"expected ',' or ']' at character {pos}")
        else:
            value, pos = _DECODER.raw_decode(text, pos)
            pos -= 1                             # the "]" branch ends past its bracket
        out[key] = value
        pos = _WS(text, pos + 1).end()
        if text[pos:pos + 1] == ",":
            pos = _WS(text, pos + 1).end()
            if text[pos:pos + 1] == "}":
                raise ValueError(f"trailing ',' at character {pos}")
        elif text[pos:pos + 1] != "}":
            raise ValueError(f"expected ',' or '}}' at character {pos}")
    if _WS(text, pos + 1).end() != len(text):
        raise ValueError(f"extra data at character {pos + 1}")
    return out


def documents(text: str, source: str) -> list:
    if text.lstrip()[:1] in ("{", "["):
        try:
            return [_json_document(text)]
        except ValueError:
            pass                        # a YAML flow collection, not JSON: YAML says what is wrong
    # imported here: a configuration written as JSON never needs PyYAML (~1 MB)
    import yaml
    try:
        return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML ({problem}) at {where}", source=source) from None


def located(exc: ConfigError, source: str, document: int | None) -> ConfigError:
    """The same error, with where it came from."""
    return ConfigError(exc.reason, source=source, document=document, path=exc.path)
