"""The HTTP API's bodies as msgspec Structs: requests are decoded with them, and the OpenAPI
document's components are generated from all of them (``openapi.py``).

Names and targets are documented with ``extra_json_schema`` rather than msgspec
constraints, so decoding stays the one check there is (``envelope.valid_name``,
``Target.from_json``) and its messages say which field and what a name may be; the
document renders the same rule (``NAME_JSON_PATTERN``, ``NAME_MAX``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.core.envelope import DEFAULT_SCOPE, NAME_JSON_PATTERN, NAME_MAX
from service.store.idempotency import KEY_MAX_LEN
from service.store.messagelog import PUBLISH_BATCH_MAX

#: An idempotency key as ``store/idempotency.py`` checks it (the check gives the message).
IDEMPOTENCY_KEY_JSON = {"minLength": 1, "maxLength": KEY_MAX_LEN, "pattern": "^[!-~]+$",
                        "description": f"1-{KEY_MAX_LEN} printable ASCII characters, no "
                                       "spaces (e.g. a UUID)"}
#: Where the generated components live in the document.
REF = "#/components/schemas/{name}"
#: Every code the JSON error body may carry (``internal`` is a 500: a bug).
ERROR_CODES = ["bad_request", "unauthorized", "not_found", "method_not_allowed", "too_large",
               "unavailable", "internal"]
TASK_STATES = ["queued", "started", "succeeded", "failed"]


def _name(what: str) -> Any:
    return Meta(extra_json_schema={
        "description": f"{what}: 1-{NAME_MAX} printable characters, no '/', '@' or white space",
        "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_JSON_PATTERN})


Name = Annotated[str, _name("name")]
EventName = Annotated[str, _name("event")]
Scope = Annotated[str, _name("scope")]
Group = Annotated[str, _name("group")]


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exactly these fields: an unknown one is a 400 (and ``additionalProperties: false``)."""


class TargetAll(_Body):
    all: Literal[True]


class TargetGroup(_Body):
    group: Group
    scope: Scope = DEFAULT_SCOPE


class TargetUser(_Body):
    user: Annotated[str, _name("user id")]


class TargetConnection(_Body):
    connection: Annotated[str, _name("connection id")]


TARGETS = (TargetAll, TargetGroup, TargetUser, TargetConnection)
#: A target is decoded as an object and parsed by ``Target.from_json`` (one kind, its
#: fields only), documented as one of the four shapes.
TargetJSON = Annotated[dict[str, Any], Meta(extra_json_schema={
    "oneOf": [{"$ref": REF.format(name=t.__name__)} for t in TARGETS]})]


class _Publish(_Body):
    target: TargetJSON
    event: EventName
    data: Annotated[msgspec.Raw | UnsetType,
                    Meta(description="any JSON value (default null)")] = UNSET
    durable: Annotated[bool, Meta(description="log in Postgres first and carry an id")] = True
    exclude_connection: Annotated[str | None, Meta(
        description="a connection id not to deliver to")] = None


class PublishRequest(_Publish):
    receipt: Annotated[bool, Meta(description=(
        "report the sockets written per frontend at GET /api/messages/{id}; needs "
        "durable"))] = False


class PublishResponse(_Body):
    id: Annotated[int | None, Meta(description="log id; null when not durable")]


class BatchMessage(_Publish):
    idempotency_key: Annotated[str | None, Meta(
        description="a repeat within HERALD_IDEMPOTENCY_TTL answers the first id and is "
                    "not delivered again; needs durable",
        extra_json_schema=IDEMPOTENCY_KEY_JSON)] = None


class PublishBatchRequest(_Body):
    messages: Annotated[list[BatchMessage], Meta(extra_json_schema={
        "minItems": 1, "maxItems": PUBLISH_BATCH_MAX})]


class ReceiptReport(_Body):
    id: int
    delivered: Annotated[dict[str, int], Meta(
        description="sockets written, per frontend that wrote to any")]
    offline_users: Annotated[list[str], Meta(
        description="the targeted user, when no frontend had a socket of theirs")]


class BatchError(_Body):
    index: int
    error: str
    message: str


class PublishBatchResponse(_Body):
    ids: Annotated[list[int | None], Meta(
        description="log id per message, in order; null when not durable or refused")]
    errors: list[BatchError]


class TaskRequest(_Body):
    name: Annotated[str, Meta(description="a public task name; unknown names are 404",
                              examples=["demo.noop"])]
    notify: TargetJSON
    args: Annotated[dict[str, Any], Meta(description="the task's keyword args")] = {}


class TaskCreated(_Body):
    task_id: str


class TaskStatus(_Body):
    task_id: str
    name: str
    state: Annotated[str, Meta(extra_json_schema={"enum": TASK_STATES})]
    progress: Annotated[float, Meta(description="0..1 as the task reports it")]
    result: Annotated[Any, Meta(description="the task's return value; null until it succeeds")]
    error: str | None


class GroupCount(_Body):
    scope: Scope
    group: Group
    members: Annotated[int, Meta(ge=1)]


class Member(_Body):
    connection_id: str
    user_id: str
    frontend: str
    meta: Annotated[dict[str, Any], Meta(
        description="the member's presence meta ({} when none was given)")]


class MemberMeta(_Body):
    """The optional body of a server-side join."""

    meta: Annotated[dict[str, Any], Meta(
        description="the membership's presence meta, at most HERALD_MAX_META bytes; "
                    "replaces that of an existing membership")]


class ScopedGroup(_Body):
    scope: Scope
    group: Group


class UserConnection(_Body):
    connection_id: str
    frontend: str
    connected_at: float
    groups: list[ScopedGroup]


class FrontendStats(_Body):
    """A frontend's counters since it started, and their rates over ``window_s`` (the
    interval between its last two heartbeats, HERALD_HEARTBEAT)."""

    published: Annotated[int, Meta(ge=0, description="publishes made through it")]
    delivered: Annotated[int, Meta(ge=0, description=(
        "live events written to its sockets (one per socket and event)"))]
    frames_in: Annotated[int, Meta(ge=0, description="client frames received")]
    frames_out: Annotated[int, Meta(ge=0, description="frames written, replies included")]
    published_per_s: Annotated[float, Meta(ge=0)]
    delivered_per_s: Annotated[float, Meta(ge=0)]
    frames_in_per_s: Annotated[float, Meta(ge=0)]
    frames_out_per_s: Annotated[float, Meta(ge=0)]
    window_s: Annotated[float, Meta(ge=0, description="seconds the rates are averaged over")]


class FrontendInfo(_Body):
    id: str
    host: str
    started_at: float
    heartbeat_at: float
    connections: Annotated[int, Meta(ge=0)]
    draining: bool
    stats: Annotated[FrontendStats | None, Meta(
        description="written at each heartbeat; null before the first one")]


class Health(_Body):
    status: Literal["ok"]
    frontend: str


class Readiness(_Body):
    ready: bool
    reason: str
    frontend: str


class LogEvent(_Body):
    """A durable event frame, as a client received it live."""

    op: Literal["event"]
    event: EventName
    data: Any
    target: dict[str, Any]
    ts: Annotated[float, Meta(description="publish time, Unix seconds")]
    id: Annotated[int, Meta(description="log id")]


class HistoryPage(_Body):
    events: Annotated[list[LogEvent], Meta(description="oldest first")]
    gap: Annotated[bool, Meta(description="retention cut the range: older events are gone")]


class LogMessage(_Body):
    """One durable message as the log holds it."""

    id: Annotated[int, Meta(description="log id")]
    ts: Annotated[float, Meta(description="publish time, Unix seconds")]
    target: dict[str, Any]
    event: EventName
    data: Any
    origin: Annotated[str, Meta(description="the frontend or worker that logged it")]


class MessagesPage(_Body):
    messages: Annotated[list[LogMessage], Meta(description="newest first")]
    next: Annotated[int | None, Meta(description=(
        "`before` for the next, older page; null: no older message within retention"))]


class AdminToken(_Body):
    token: Annotated[str, Meta(description="a client token that may join and monitor "
                                           "every group, and nothing else")]
    user: str
    expires_in: Annotated[int, Meta(description="seconds")]


class Error(_Body):
    error: Annotated[str, Meta(extra_json_schema={"enum": ERROR_CODES})]
    message: str


#: Every body the document describes (the rest are reached from these).
DOCUMENTED = (Error, *TARGETS, PublishRequest, PublishResponse, PublishBatchRequest,
              PublishBatchResponse, ReceiptReport, TaskRequest, TaskCreated, TaskStatus,
              GroupCount, Member, MemberMeta, UserConnection, FrontendInfo, Health, Readiness,
              HistoryPage, MessagesPage, AdminToken)


def components() -> dict[str, Any]:
    """The document's ``components.schemas``, generated from the Structs above, plus
    ``Name`` (the path parameters' schema)."""
    _, schemas = msgspec.json.schema_components(DOCUMENTED, ref_template=REF)
    for schema in schemas.values():
        schema.pop("title", None)  # the component's name says it
    name: dict[str, Any] = msgspec.json.schema(Name)
    return {**schemas, "Name": name}
