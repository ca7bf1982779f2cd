"""Logging for every role: plain lines, or one JSON object per line (HERALD_LOG_JSON=1)."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from service.core.envvars import parse_bool


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, process, and any error."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure() -> None:
    """Set up the root logger from HERALD_LOG_JSON and HERALD_LOG_LEVEL (env, read early,
    before the settings object exists, so a configuration error is logged the same way)."""
    json_lines = parse_bool(os.environ.get("HERALD_LOG_JSON"))
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("HERALD_LOG_LEVEL", "INFO").upper())
