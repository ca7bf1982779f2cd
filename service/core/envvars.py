"""Reading one environment variable as a typed setting (``config.py`` names them all)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("service.core.config")  # its warnings are the configuration's


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


def dev_value(directory: Path, filename: str, what: str, warned: set[str]) -> str:
    """Return a development-only value shared by every local process through a file.

    Two frontends and a worker started from one checkout must agree on the secret, so a
    generated value is written once under ``var/`` and read back by the others.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = secrets.token_urlsafe(32)
        try:  # O_EXCL: of processes starting together exactly one writes, 0600 from birth
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            for _ in range(50):  # another process is writing it: read what it wrote
                value = path.read_text().strip()
                if value:
                    break
                time.sleep(0.01)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(value)
    if filename not in warned:
        warned.add(filename)
        log.warning(
            "%s is not set: using a generated development value from %s. "
            "Never run like this in production (HERALD_ENV=production refuses to).",
            what, path,
        )
    return value
