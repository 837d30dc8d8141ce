"""Multi-document YAML with errors that name the file, the document and the line."""
from __future__ import annotations

import yaml

from meshcore.errors import ConfigError


def documents(text: str, source: str) -> list:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML ({problem}) at {where}", source=source) from None


def located(exc: ConfigError, source: str, document: int | None) -> ConfigError:
    """The same error, with where it came from."""
    return ConfigError(exc.reason, source=source, document=document, path=exc.path)
