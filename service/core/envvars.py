"""Reading one environment variable as a typed setting (``config.py`` names them all)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the process must not start."""


def _parse(name: str, default: T, kind: Callable[[str], T], what: str) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from exc


def env_int(name: str, default: int) -> int:
    return _parse(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    return _parse(name, default, float, "a number")


#: What a true boolean setting or query flag may be spelled as (anything else is false).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def parse_bool(raw: str | None, default: bool = False) -> bool:
    """The one boolean parse: environment variables and query flags alike."""
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in TRUE_WORDS


def env_bool(name: str, default: bool) -> bool:
    return parse_bool(os.environ.get(name), default)


def env_list(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())
