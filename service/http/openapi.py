"""The OpenAPI 3.1 document of Herald's HTTP API, served at ``GET /openapi.json``.

It describes ``service/http/api.py`` exactly: every route, body, parameter and status code it
can answer with. The bodies' schemas are generated from the msgspec Structs the API decodes
with (``schemas.py``; OpenAPI 3.1 schemas are JSON Schema 2020-12, which msgspec writes);
the paths are written here. ``tests/e2e/test_openapi.py`` checks the document against the
app's URL map and runs schemathesis against a live frontend with it.
"""

from __future__ import annotations

from typing import Any

from service.core.envelope import DEFAULT_SCOPE
from service.http.schemas import IDEMPOTENCY_KEY_JSON, components
from service.store.history import HISTORY_MAX, MAX_LOG_ID
from service.store.logpage import LOG_PAGE_MAX
from service.store.messagelog import PUBLISH_BATCH_MAX

Schema = dict[str, Any]

#: The JSON error body's code for each status the HTTP API answers with.
ERRORS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 429: "rate_limited",
          503: "unavailable"}
_WHY = {400: "invalid body, name or parameter", 401: "missing or invalid bearer API key",
        403: "not granted (the token's join grants) or origin not allowed",
        429: "over a limit the message names (HERALD_MAX_USER_CONNECTIONS)",
        404: "no such task, task name, connection or route (or HERALD_ADMIN=off)",
        405: "method not allowed on this path (with an Allow header)",
        413: "body larger than HERALD_MAX_FRAME", 503: "Postgres or RabbitMQ unavailable"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _string(description: str = "", **extra: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(status: int) -> Schema:
    """A response carrying the JSON error body with the code this status always has."""
    code = {"allOf": [_ref("Error"), {"properties": {"error": {"enum": [ERRORS[status]]}}}]}
    return _json(code, _WHY[status])


def _param(name: str, where: str, schema: Schema, required: bool = True,
           example: str | None = None) -> Schema:
    param: Schema = {"name": name, "in": where, "required": required, "schema": schema}
    return param if example is None else {**param, "example": example}


def _op(summary: str, ok: dict[int, Schema], errors: tuple[int, ...] = (),
        params: list[Schema] | None = None, body: str | None = None,
        secure: bool = True) -> Schema:
    """One operation: its success responses, error statuses, parameters and body."""
    if secure:
        errors = (401, *errors, 503)
    op: Schema = {"summary": summary, "operationId": summary.split(":")[0],
                  "security": [{"bearer": []}] if secure else [],
                  "responses": {**{str(s): r for s, r in ok.items()},
                                **{str(s): _error(s) for s in sorted(set(errors))}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(body)}}}
    return op


def _paths() -> dict[str, Schema]:
    name = _ref("Name")
    group_params = [_param("scope", "path", name, example=DEFAULT_SCOPE),
                    _param("group", "path", name, example="lobby")]
    member_params = [*group_params, _param("connection_id", "path", name)]
    user_param = [_param("user_id", "path", name, example="alice")]
    none = {"description": "done (no body)"}
    return {
        "/api/publish": {"post": _op(
            "publish: send an event to a target on every frontend",
            {202: _json(_ref("PublishResponse"), "accepted")}, (400, 413),
            [_param("Idempotency-Key", "header", _string(
                "a repeat within HERALD_IDEMPOTENCY_TTL answers the first id and is not "
                "delivered again; needs durable", **{
                    k: v for k, v in IDEMPOTENCY_KEY_JSON.items() if k != "description"}),
                required=False)],
            body="PublishRequest")},
        "/api/publish/batch": {"post": _op(
            f"publishBatch: up to {PUBLISH_BATCH_MAX} publishes in one request, in order",
            {202: _json(_ref("PublishBatchResponse"), "accepted")}, (400, 413),
            body="PublishBatchRequest")},
        "/api/messages/{message_id}": {"get": _op(
            "messageReceipt: the delivery receipt of a message published with receipt",
            {200: _json(_ref("ReceiptReport"), "sockets written; complete within a second "
                                                "of the publish")}, (404,),
            [_param("message_id", "path", {"type": "integer", "minimum": 0})])},
        "/api/messages": {"get": _op(
            "recentMessages: the newest durable messages of the whole log, within "
            "retention, newest first (`before`: the previous page's `next`)",
            {200: _json(_ref("MessagesPage"), "newest first")}, (400,),
            [_param(p, "query", {"type": "integer", "minimum": lo, "maximum": hi},
                    required=False)
             for p, lo, hi in (("limit", 1, LOG_PAGE_MAX), ("before", 0, MAX_LOG_ID))])},
        "/api/admin/token": {"post": _op(
            "adminToken: a short-lived client token for the admin console's socket (user "
            "admin:console; may join and monitor every group)",
            {200: _json(_ref("AdminToken"), "the token")}, (404,))},
        "/api/tasks": {"post": _op(
            "startTask: enqueue a public task whose state goes to a target",
            {202: _json(_ref("TaskCreated"), "queued")}, (400, 404, 413), body="TaskRequest")},
        "/api/tasks/{task_id}": {"get": _op(
            "taskStatus: a task's state, progress and outcome",
            {200: _json(_ref("TaskStatus"), "the task record")}, (404,),
            [_param("task_id", "path", _string())])},
        "/api/groups": {"get": _op(
            "groups: every group with members, with counts (pg:which_groups)",
            {200: _json(_array(_ref("GroupCount")), "groups")}, (400,),
            [_param("scope", "query", name, required=False)])},
        "/api/groups/{scope}/{group}/members": {"get": _op(
            "groupMembers: members of a group, cluster-wide or on this frontend only",
            {200: _json(_array(_ref("Member")), "members")}, (400, 404),
            [*group_params, _param("local", "query", _string(
                "1 or true: only this frontend's sockets"), required=False)])},
        "/api/groups/{scope}/{group}/history": {"get": _op(
            "groupHistory: a page of the group's durable events by log id (after, else "
            "the newest before `before`)",
            {200: _json(_ref("HistoryPage"), "events oldest first")}, (400,),
            [*group_params, *(_param(p, "query", {"type": "integer", "minimum": lo,
                                                  "maximum": hi}, required=False)
                              for p, lo, hi in (("limit", 1, HISTORY_MAX),
                                                ("before", 0, MAX_LOG_ID),
                                                ("after", 0, MAX_LOG_ID)))])},
        "/api/groups/{scope}/{group}/members/{connection_id}": {
            "put": {**_op("joinGroup: server-side join of any connection (pg:join), "
                          "optionally with its presence meta",
                          {204: none}, (400, 404), member_params),
                    "requestBody": {"required": False, "content": {
                        "application/json": {"schema": _ref("MemberMeta")}}}},
            "delete": _op("leaveGroup: server-side leave (idempotent; pg:leave)",
                          {204: none}, (400, 404), member_params)},
        "/api/users/{user_id}/connections": {"get": _op(
            "userConnections: a user's sockets, their frontends and groups",
            {200: _json(_array(_ref("UserConnection")), "connections")}, (400, 404),
            user_param)},
        "/api/frontends": {"get": _op(
            "frontends: registered frontends with connection counts and message stats",
            {200: _json(_array(_ref("FrontendInfo")), "frontends")})},
        "/healthz": {"get": _op("healthz: liveness", {200: _json(_ref("Health"), "alive")},
                                secure=False)},
        "/readyz": {"get": _op(
            "readyz: readiness (Postgres, broker, registered, not draining)",
            {200: _json(_ref("Readiness"), "ready"),
             503: _json(_ref("Readiness"), "not ready; reason says why")}, secure=False)},
        "/openapi.json": {"get": _op(
            "openapi: this document", {200: _json({"type": "object"}, "OpenAPI 3.1")},
            secure=False)},
    }


def _sse() -> Schema:
    """``GET /sse`` (service/sockets/sse.py): a client token, not an API key."""
    op = _op("events: a session's events as Server-Sent Events (event: name, id: log id "
             "of a durable event, data: the event frame's JSON); a comment line every "
             "heartbeat; Last-Event-ID resumes as hello.last_id does",
             {200: {"description": "the stream (first event: welcome)",
                    "content": {"text/event-stream": {"schema": _string()}}}},
             (400, 401, 403, 429, 503),
             [_param("groups", "query", _string(
                 "comma-separated <scope>/<group> (a bare group is in the default scope), "
                 "at most HERALD_MAX_GROUPS, each granted by the token"), required=False),
              _param("token", "query", _string("the client token, when there is no "
                                               "Authorization header"), required=False),
              _param("last_id", "query", {"type": "integer", "minimum": 0,
                                          "maximum": MAX_LOG_ID}, required=False),
              _param("epoch", "query", _string("welcome.epoch of last_id"), required=False),
              _param("Last-Event-ID", "header", _string("a log id (EventSource sends it)",
                                                        pattern="^[0-9]{1,19}$"),
                     required=False)],
             secure=False)
    op["security"] = [{"clientToken": []}, {"tokenQuery": []}]
    return op


def spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Herald HTTP API", "version": "1",
                 "description": "Backends publish, start tasks and query the registry with "
                                "a bearer API key; probes need none. Errors are "
                                '{"error": code, "message": text}; any other method on a '
                                "path is 405 with that body."},
        "paths": {**_paths(), "/sse": {"get": _sse()}},
        "components": {
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a key from HERALD_API_KEYS"},
                                "clientToken": {"type": "http", "scheme": "bearer",
                                                "description": "a client token (/sse)"},
                                "tokenQuery": {"type": "apiKey", "in": "query",
                                               "name": "token",
                                               "description": "a client token (/sse)"}},
            "responses": {"MethodNotAllowed": _error(405)},
        },
    }
