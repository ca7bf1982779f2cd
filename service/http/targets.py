"""Publish targets as the HTTP API takes them (shared by the Flask views and the lean path)."""

from __future__ import annotations

from typing import Any

from service.core.envelope import TARGET_KINDS, Target
from service.core.errors import BadRequest

#: The fields each kind of target may have (the first one names the kind).
_TARGET_FIELDS = {"all": {"all"}, "group": {"group", "scope"}, "user": {"user"},
                  "connection": {"connection"}}


def parse_target(obj: dict[str, Any], field: str) -> Target:
    """A target object exactly as documented: one kind, no other fields, no nulls."""
    kinds = [k for k in TARGET_KINDS if k in obj]
    if len(kinds) != 1 or not set(obj) <= _TARGET_FIELDS[kinds[0]]:
        raise BadRequest(f"{field} must be one of {{all: true}}, {{group, scope?}}, {{user}}, "
                         "{connection}")
    try:
        return Target.from_json(obj)
    except BadRequest as exc:
        raise BadRequest(exc.message.replace("target", field, 1)) from None
