"""Targets, bus envelopes and the server→client frames built from them.

A message is encoded once: the envelope travels the fanout as bytes, ``data`` stays a
``msgspec.Raw`` slice of the publisher's JSON (never parsed on the fan-out path), and each
frontend builds one WebSocket frame per message that every recipient socket shares.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from service.core.errors import BadRequest

TARGET_KINDS = ("all", "group", "user", "connection")
DEFAULT_SCOPE = "default"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes: everyone, a group in a scope, a user, or one connection."""

    kind: str
    key: str = ""
    scope: str = ""

    @classmethod
    def all(cls) -> Target:
        return cls("all")

    @classmethod
    def group(cls, group: str, scope: str = DEFAULT_SCOPE) -> Target:
        return cls("group", group, scope)

    @classmethod
    def user(cls, user_id: str) -> Target:
        return cls("user", user_id)

    @classmethod
    def connection(cls, connection_id: str) -> Target:
        return cls("connection", connection_id)

    def as_json(self) -> dict[str, Any]:
        """The target as PROTOCOL.md writes it in `event` frames."""
        if self.kind == "all":
            return {"all": True}
        if self.kind == "group":
            return {"group": self.key, "scope": self.scope}
        return {self.kind: self.key}

    def log_key(self) -> str:
        """The key the durable log indexes this target by."""
        if self.kind == "group":
            return f"{self.scope}/{self.key}"
        return self.key

    @classmethod
    def from_log(cls, kind: str, key: str) -> Target:
        """The target of a log row (``target_kind``, ``target_key``: see ``log_key``)."""
        if kind == "group":
            scope, _, group = key.partition("/")
            return cls.group(group, scope)
        return cls(kind, key)

    @classmethod
    def from_json(cls, obj: Any) -> Target:
        """Parse a target object; exactly one of all, group (+scope), user, connection."""
        if not isinstance(obj, dict):
            raise BadRequest("target must be an object")
        kinds = [k for k in TARGET_KINDS if k in obj and obj[k] is not None and obj[k] is not False]
        if len(kinds) != 1:
            raise BadRequest("target needs exactly one of all, group, user, connection")
        kind = kinds[0]
        if kind == "all":
            if obj["all"] is not True:
                raise BadRequest("target.all must be true")
            return cls.all()
        key = obj[kind]
        if not isinstance(key, str) or not valid_name(key):
            raise BadRequest(f"target.{kind} must be a name of 1-128 characters")
        if kind == "group":
            scope = obj.get("scope", DEFAULT_SCOPE)
            if not isinstance(scope, str) or not valid_name(scope):
                raise BadRequest("target.scope must be a name of 1-128 characters")
            return cls.group(key, scope)
        return cls(kind, key)


NAME_MAX = 128
#: Group, scope, user, connection and event names: 1-128 characters, none of them '/',
#: '@', whitespace or a control character. The one rule, for frames, bodies and paths.
NAME_CHARS = r"[^/@\s\x00-\x1f\x7f-\x9f]"
NAME_PATTERN = rf"\A{NAME_CHARS}{{1,{NAME_MAX}}}\Z"
#: The same rule in JSON Schema's (ECMA-262) syntax, for the OpenAPI document.
NAME_JSON_PATTERN = f"^{NAME_CHARS}+$"
_NAME_RE = re.compile(NAME_PATTERN)


def valid_name(name: str) -> bool:
    """True when ``name`` follows NAME_PATTERN (and is printable)."""
    return bool(_NAME_RE.match(name)) and name.isprintable()


class Envelope(msgspec.Struct, array_like=True, omit_defaults=True):
    """What travels on the fanout exchange. ``origin`` lets a frontend drop its own."""

    origin: str
    kind: str  # "event" or "presence"
    target: dict[str, Any]
    event: str
    data: msgspec.Raw
    ts: float
    id: int | None = None
    exclude: str | None = None
    #: 1: a delivery receipt was asked for, frontends report the sockets they wrote it to.
    #: Last, so older frontends ignore it; an int, since array_like structs encode every
    #: field and "0" costs 2 bytes an envelope where "false" costs 6.
    receipt: int = 0


class EventFrame(msgspec.Struct, tag="event", tag_field="op", omit_defaults=True):
    """The `event` frame a client receives."""

    event: str
    data: msgspec.Raw
    target: dict[str, Any]
    ts: float
    id: int | None = None


_encoder = msgspec.json.Encoder()
_env_decoder = msgspec.json.Decoder(Envelope)
_batch_decoder = msgspec.json.Decoder(list[Envelope])
NULL = msgspec.Raw(b"null")


def raw_json(value: Any) -> msgspec.Raw:
    """Encode a Python value once into a Raw JSON slice."""
    return msgspec.Raw(_encoder.encode(value))


def encode(value: Any) -> bytes:
    """JSON-encode any value (Structs, dicts, Raw) to bytes."""
    return _encoder.encode(value)


def make_envelope(origin: str, target: Target, event: str, data: msgspec.Raw,
                  msg_id: int | None = None, exclude: str | None = None,
                  ts: float | None = None, receipt: bool = False) -> Envelope:
    """Stamp a new event envelope with the publish time."""
    return Envelope(origin=origin, kind="event", target=target.as_json(), event=event,
                    data=data, ts=time.time() if ts is None else ts, id=msg_id, exclude=exclude,
                    receipt=int(receipt))


def decode_envelope(body: bytes) -> Envelope:
    """Decode an envelope from the bus; raises msgspec.DecodeError on garbage."""
    return _env_decoder.decode(body)


def encode_bus(envs: list[Envelope]) -> bytes:
    """One bus message for one or more envelopes (a batch is a JSON array of them)."""
    return _encoder.encode(envs[0] if len(envs) == 1 else envs)


def decode_bus(body: bytes) -> list[Envelope]:
    """The envelopes in one bus message: one, or a batch from a group commit.

    An envelope is itself a JSON array whose first item is a string, so ``[[`` can only
    open a batch."""
    if body[:2] == b"[[":
        return _batch_decoder.decode(body)
    return [_env_decoder.decode(body)]


def event_frame(env: Envelope) -> bytes:
    """The JSON text of the client `event` frame for an envelope."""
    return _encoder.encode(EventFrame(event=env.event, data=env.data, target=env.target,
                                      ts=env.ts, id=env.id))


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked server→client WebSocket text frame (RFC 6455 §5.2) around ``payload``.

    Built once per message and written as the same bytes to every recipient socket.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def target_of(env: Envelope) -> Target:
    """Rebuild the Target from an envelope's JSON target."""
    t = env.target
    if t.get("all"):
        return Target.all()
    if "group" in t:
        return Target.group(t["group"], t.get("scope", DEFAULT_SCOPE))
    if "user" in t:
        return Target.user(t["user"])
    return Target.connection(t["connection"])


def presence_envelope(origin: str, scope: str, group: str, joins: list[dict[str, Any]],
                      leaves: list[dict[str, Any]],
                      updates: list[dict[str, Any]] | None = None) -> Envelope:
    """A presence change for monitors of one group; ``data`` holds joins, leaves and
    (meta) updates, each entry with its ``meta``."""
    data: dict[str, Any] = {"joins": joins, "leaves": leaves}
    if updates:  # absent when empty: what older frontends sent
        data["updates"] = updates
    return Envelope(origin=origin, kind="presence", target={"group": group, "scope": scope},
                    event="presence", data=raw_json(data), ts=time.time())



def control_envelope(origin: str, connection_id: str, action: str, scope: str,
                     group: str, meta: dict[str, Any] | None = None) -> Envelope:
    """Ask the frontend holding ``connection_id`` to join or leave a group (server-side pg);
    a join may carry the membership's ``meta``."""
    data: dict[str, Any] = {"scope": scope, "group": group}
    if meta is not None:
        data["meta"] = meta
    return Envelope(origin=origin, kind="control", target={"connection": connection_id},
                    event=action, data=raw_json(data), ts=time.time())
