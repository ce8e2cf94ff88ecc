"""The bottom of the settings: one strict pydantic base, YAML read safely, and validation errors
as one line naming each dotted key. Every YAML-backed settings model (run config, analysis,
training, evaluation, backend parameters) is built on these; nothing here imports slidecell."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, short_repr

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def safe_yaml(text: str):
    """``yaml.safe_load`` of a config, refusing anchors/aliases first: a config never needs
    them, and nested aliases expand exponentially (a "billion laughs" file takes minutes and
    gigabytes). The event scan reads the text without building anything."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(f"YAML aliases (*name) are not allowed in slidecell configs "
                                 f"(line {event.start_mark.line + 1})")
    return yaml.safe_load(text)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The YAML data of a settings file, or :class:`ConfigError` ``"{what} {path}: ..."`` (not
    found, unreadable, not valid YAML)."""
    p = Path(path)
    try:
        return safe_yaml(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {p}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {p}: cannot read it: {exc}") from None


def format_errors(source: str, err: ValidationError, what: str = "config") -> str:
    """A pydantic error as one line: each problem with its dotted key and the value given."""
    parts = []
    errors = err.errors()
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = short_repr(e.get("input"))
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}' (value {value})")
        elif e["type"] == "missing":
            parts.append(f"'{loc}' is required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"'{loc}' = {value}: {msg}")
    more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
    return f"{what} {source}: " + "; ".join(parts) + more


def validate(model: type[M], data: Any, source: str, what: str = "config") -> M:
    """``model`` validated from ``data``, or :class:`ConfigError` naming ``source``'s keys."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(source, err, what)) from None


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s keys set, nested mappings merged key by key."""
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
