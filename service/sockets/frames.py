"""Client→server frames: one declarative msgspec schema per op, and the parser.

Parsing is two steps: a cheap head decode (``op`` and ``ref`` only) that tells
``bad_request`` from ``unknown_op``, then a typed decode of the whole frame against that
op's schema. ``data`` stays raw JSON so a publish is never re-encoded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.core.envelope import NAME_MAX, NAME_PATTERN, NULL
from service.core.errors import BadRequest, UnknownOp
from service.store.history import HISTORY_MAX

#: Longest ``hello.epoch`` accepted (the server's is about 40 characters).
EPOCH_MAX = 128

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]
Scope = Name
Ref = str | int | float | bool | None


class Frame(msgspec.Struct, kw_only=True):
    """Fields every client frame may carry."""

    op: str
    ref: Ref = None


class Hello(Frame, kw_only=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    resume: str | None = None
    last_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    #: The ``welcome.epoch`` the client's ``last_id`` belongs to; another: not recovered.
    epoch: Annotated[str, msgspec.Meta(max_length=EPOCH_MAX)] | None = None


class Refresh(Frame, kw_only=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class GroupFrame(Frame, kw_only=True):
    group: Name
    scope: Scope = "default"


class Join(GroupFrame, kw_only=True):
    #: The group's last N durable events, sent after the ack (``HISTORY_MAX`` at most).
    rewind: Annotated[int, msgspec.Meta(ge=0, le=HISTORY_MAX)] = 0
    #: This connection's presence meta in the group (``HERALD_MAX_META`` bytes at most).
    meta: dict[str, Any] | None = None


class Update(GroupFrame, kw_only=True):
    """Replace this connection's presence meta in a group it is a member of."""

    meta: dict[str, Any]


class Leave(GroupFrame):
    pass


class Publish(Frame, kw_only=True):
    group: Name | None = None
    scope: Scope = "default"
    user: Name | None = None
    connection: Name | None = None
    all: bool = False
    event: Name
    data: msgspec.Raw = NULL
    durable: bool = False


class Members(Frame, kw_only=True):
    group: Name
    scope: Scope = "default"
    local: bool = False
    #: A page: at most ``limit`` entries (capped by ``HERALD_MEMBERS_LIMIT``), those whose
    #: connection id sorts after ``after`` (the previous page's ``next``).
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    after: Annotated[str, msgspec.Meta(max_length=NAME_MAX)] | None = None


class Monitor(GroupFrame):
    pass


class Demonitor(GroupFrame):
    pass


LogId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class History(GroupFrame, kw_only=True):
    """A page of the group's durable events: after ``after``, else before ``before``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_MAX)] = HISTORY_MAX
    before: LogId | None = None
    after: LogId | None = None


class StartTask(Frame, kw_only=True):
    name: Name
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    notify: Literal["user", "connection"] = "user"


class Ping(Frame, kw_only=True):
    pass


SCHEMAS: dict[str, type[Frame]] = {
    "hello": Hello,
    "refresh": Refresh,
    "join": Join,
    "leave": Leave,
    "publish": Publish,
    "members": Members,
    "monitor": Monitor,
    "demonitor": Demonitor,
    "task": StartTask,
    "history": History,
    "update": Update,
    "ping": Ping,
}


class _Head(msgspec.Struct):
    op: Any = None
    ref: Any = None


_head = msgspec.json.Decoder(_Head)
_decoders = {op: msgspec.json.Decoder(schema) for op, schema in SCHEMAS.items()}


#: What a decode of hostile input can raise besides msgspec's own errors: nesting deeper
#: than the interpreter's recursion limit raises RecursionError inside msgspec.
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                 RecursionError)


def peek_ref(raw: bytes | str) -> Ref:
    """Best-effort ``ref`` of a frame, so even a rejected frame's error can echo it."""
    try:
        ref = _head.decode(raw).ref
    except DECODE_ERRORS:
        return None
    return ref if isinstance(ref, (str, int, float, bool)) else None


def parse(raw: bytes | str) -> Frame:
    """Decode and validate one client frame; raise BadRequest or UnknownOp."""
    if isinstance(raw, bytes):  # a binary frame: its JSON must still be UTF-8 throughout,
        try:                    # since `data` is copied verbatim into text frames
            raw.decode()
        except UnicodeDecodeError:
            raise BadRequest("frame is not valid UTF-8") from None
    try:
        head = _head.decode(raw)
    except RecursionError:
        raise BadRequest("frame is nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise BadRequest(f"frame must be a JSON object: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"frame is not valid JSON: {exc}") from None
    if not isinstance(head.op, str):
        raise BadRequest("frame needs a string field 'op'")
    decoder = _decoders.get(head.op)
    if decoder is None:
        raise UnknownOp(f"unknown op {head.op[:64]!r}")
    try:
        return decoder.decode(raw)
    except RecursionError:
        raise BadRequest("frame is nested too deeply") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(str(exc)) from None
