"""The HTTP API for backends (bearer API key) and the unauthenticated probes."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import msgspec
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from kombu.exceptions import OperationalError as BrokerOperationalError
from msgspec import UNSET
from sqlalchemy.exc import DataError
from sqlalchemy.exc import OperationalError as DBOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.bus import BROKER_ERRORS
from service.cluster.frontend import Frontend
from service.core.auth import api_key_valid
from service.core.envelope import NULL, raw_json, valid_name
from service.core.envvars import parse_bool
from service.core.errors import BadRequest, HeraldError, NotFound, Unauthorized, Unavailable
from service.core.metrics import render as render_metrics
from service.core.presence import check_meta
from service.http.openapi import spec
from service.http.schemas import (
    BatchMessage,
    MemberMeta,
    PublishBatchRequest,
    PublishRequest,
    TaskRequest,
)
from service.http.targets import parse_target as _target
from service.store import idempotency, receipts, registry
from service.store.messagelog import PUBLISH_BATCH_MAX, Entry
from service.store.models import ID_LEN, TaskRecord

api = Blueprint("api", __name__, url_prefix="/api")
probes = Blueprint("probes", __name__)


def node() -> Frontend:
    return current_app.extensions["herald"]  # type: ignore[no-any-return]


def require_key(view: Callable[..., Any]) -> Callable[..., Any]:
    """Bearer API key check, constant-time against every configured key."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("missing bearer API key")
        if not api_key_valid(key.strip(), node().settings.api_keys):
            raise Unauthorized("invalid API key")
        return view(*args, **kwargs)

    return wrapper


def _body(schema: type[Any]) -> Any:
    if not request.is_json:
        raise BadRequest("body must be JSON (Content-Type: application/json)")
    try:
        return msgspec.json.decode(request.get_data(cache=False), type=schema)
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(str(exc)) from None


def _data(body: PublishRequest | BatchMessage) -> msgspec.Raw:
    return NULL if body.data is UNSET else body.data


@api.post("/publish")
@require_key
def publish() -> tuple[Response, int]:
    body: PublishRequest = _body(PublishRequest)
    target = _target(body.target, "target")
    if not valid_name(body.event):
        raise BadRequest("event must be a name of 1-128 characters")
    key = request.headers.get("Idempotency-Key")
    if body.receipt:
        if not body.durable or key is not None:
            raise BadRequest("receipt needs durable: true and no Idempotency-Key (a receipt "
                             "is kept by log id, for one publish)")
        return jsonify({"id": node().publish_receipted(
            target, body.event, _data(body), body.exclude_connection)}), 202
    if key is None:
        msg_id = node().publish(target, body.event, _data(body), durable=body.durable,
                                exclude=body.exclude_connection)
        return jsonify({"id": msg_id}), 202
    scoped = _idempotency_key(key, body.durable, "Idempotency-Key")
    [result] = node().publish_keyed(
        [Entry(target, body.event, _data(body), body.exclude_connection)], [scoped])
    if isinstance(result, BadRequest):
        raise result
    return jsonify({"id": result}), 202


def _idempotency_key(key: str, durable: bool, field: str) -> str:
    """The caller's key in its API key's namespace (two tenants' keys never meet)."""
    if not durable:
        # the key remembers the first publish's log id, which only a durable one has
        raise BadRequest(f"{field} needs durable: true (a key remembers the log id)")
    api_key = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return idempotency.scoped(idempotency.namespace_of_api_key(api_key), key, field)


@api.post("/publish/batch")
@require_key
def publish_batch() -> tuple[Response, int]:
    """Many publishes in one request, in order, sharing log inserts and bus messages.

    Every message is checked before any is published; one Postgres refuses alone (a
    \u0000 in its data) gets a null id and an entry in ``errors``."""
    body: PublishBatchRequest = _body(PublishBatchRequest)
    if not 1 <= len(body.messages) <= PUBLISH_BATCH_MAX:
        raise BadRequest(f"messages must hold 1-{PUBLISH_BATCH_MAX} messages")
    entries: list[tuple[Entry, bool]] = []
    keys: list[str | None] = []
    for i, msg in enumerate(body.messages):
        target = _target(msg.target, f"messages[{i}].target")
        if not valid_name(msg.event):
            raise BadRequest(f"messages[{i}].event must be a name of 1-128 characters")
        entries.append((Entry(target, msg.event, _data(msg), msg.exclude_connection),
                        msg.durable))
        keys.append(None if msg.idempotency_key is None else _idempotency_key(
            msg.idempotency_key, msg.durable, f"messages[{i}].idempotency_key"))
    ids: list[int | None] = []
    errors: list[dict[str, Any]] = []
    start = 0
    while start < len(entries):  # runs of the same durability, in order
        end = start
        while end < len(entries) and entries[end][1] == entries[start][1]:
            end += 1
        run = [e for e, _ in entries[start:end]]
        if any(k is not None for k in keys[start:end]):  # a durable run with some keys
            results: list[int | BadRequest | None] = list(
                node().publish_keyed(run, keys[start:end]))
        else:
            results = node().publish_many(run, durable=entries[start][1])
        for i, result in enumerate(results, start):
            if isinstance(result, BadRequest):
                errors.append({"index": i, "error": result.code, "message": result.message})
                ids.append(None)
            else:
                ids.append(result)
        start = end
    return jsonify({"ids": ids, "errors": errors}), 202


@api.get("/messages/<int:message_id>")
@require_key
def message_receipt(message_id: int) -> Response:
    """The delivery receipt of a message published with ``receipt: true``."""
    found = receipts.report(node().engine, message_id) if message_id < 2**63 else None
    if found is None:
        raise NotFound(f"no receipt for message {message_id} (publish with receipt: true; "
                       "receipts are kept as long as the log, HERALD_HISTORY_TTL)")
    return jsonify(found)


@api.post("/tasks")
@require_key
def start_task() -> tuple[Response, int]:
    from workers.client import start_task as enqueue

    body: TaskRequest = _body(TaskRequest)
    target = _target(body.notify, "notify")
    fe = node()
    return jsonify({"task_id": enqueue(body.name, body.args, target, settings=fe.settings,
                                       engine=fe.engine, publish=fe.publish_task_note)}), 202


@api.get("/tasks/<task_id>")
@require_key
def task_status(task_id: str) -> Response:
    if len(task_id) > ID_LEN or not task_id.isprintable():  # no such id can exist
        raise NotFound(f"no task {task_id[:ID_LEN + 2]!r}")
    with Session(node().engine) as db:
        rec = db.get(TaskRecord, task_id)
    if rec is None:
        raise NotFound(f"no task {task_id!r}")
    return jsonify({"task_id": rec.id, "name": rec.name, "state": rec.state,
                    "progress": rec.progress, "result": rec.result, "error": rec.error})


def _names(*names: str) -> None:
    for name in names:
        if not valid_name(name):
            raise BadRequest(f"invalid name {name[:130]!r}")


@api.get("/groups")
@require_key
def groups() -> Response:
    scope = request.args.get("scope")
    if scope is not None:
        _names(scope)
    return jsonify(registry.which_groups(node().engine, scope))


@api.get("/groups/<scope>/<group>/members")
@require_key
def group_members(scope: str, group: str) -> Response:
    _names(scope, group)
    if parse_bool(request.args.get("local")):
        fe = node()
        return jsonify([fe.member_info(c, (scope, group))
                        for c in fe.hub.local_members((scope, group))])
    return jsonify(registry.get_members(node().engine, scope, group))


@api.route("/groups/<scope>/<group>/members/<connection_id>", methods=["PUT", "DELETE"])
@require_key
def server_membership(scope: str, group: str, connection_id: str) -> tuple[str, int]:
    _names(scope, group, connection_id)
    action = "join" if request.method == "PUT" else "leave"
    meta = None
    if action == "join" and request.content_length != 0 and request.get_data(cache=True):
        meta = check_meta(_body(MemberMeta).meta, node().settings.max_meta)
    node().server_membership(action, (scope, group), connection_id, meta)
    return "", 204


@api.get("/users/<user_id>/connections")
@require_key
def user_connections(user_id: str) -> Response:
    _names(user_id)
    return jsonify(registry.user_connections(node().engine, user_id))


@api.get("/frontends")
@require_key
def frontends() -> Response:
    return jsonify(registry.list_frontends(node().engine))


@probes.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok", "frontend": node().id})


@probes.get("/metrics")
def metrics() -> Response:
    fe = node()
    return Response(render_metrics(fe.meter, fe.gauges, fe.id),
                    mimetype="text/plain; version=0.0.4")


@probes.get("/readyz")
def readyz() -> tuple[Response, int]:
    ready, reason = node().readiness()
    return jsonify({"ready": ready, "reason": reason, "frontend": node().id}), 200 if ready else 503


@probes.get("/openapi.json")
def openapi() -> Response:
    return jsonify(spec())


def _error_response(exc: HeraldError) -> tuple[Response, int]:
    return jsonify({"error": exc.code, "message": exc.message}), exc.status


@api.errorhandler(DataError)
def _data_error(exc: DataError) -> tuple[Response, int]:
    """Input Postgres refuses (NUL in text, an out-of-range number): the caller's fault."""
    return _error_response(BadRequest(f"refused by the database: {first_line(exc.orig)}"))


def _unavailable(exc: Exception) -> tuple[Response, int]:
    current_app.logger.warning("backend unavailable: %s", first_line(exc))
    return _error_response(Unavailable("Postgres or the broker is unavailable; retry"))


def first_line(exc: BaseException | None) -> str:
    """The first line of an error, cut to 200 characters (what an answer or a log shows)."""
    return (str(exc).splitlines() or [""])[0][:200]


#: Outages of Postgres or the broker during an /api call (the probes report them themselves).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    DBOperationalError, PoolTimeout, BrokerOperationalError, *BROKER_ERRORS)
for _exc_type in (DBOperationalError, PoolTimeout, BrokerOperationalError, *BROKER_ERRORS):
    api.register_error_handler(_exc_type, _unavailable)


def init_app(app: Flask) -> None:
    """Register the blueprints and the JSON error handlers."""
    app.register_blueprint(api)
    app.register_blueprint(probes)
    app.register_error_handler(HeraldError, _error_response)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 429: "rate_limited"}.get(
            exc.code or 500, "internal")
        response = jsonify({"error": code, "message": exc.description})
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, exc.code or 500

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> tuple[Response, int]:
        current_app.logger.exception("unhandled error")
        return jsonify({"error": "internal", "message": "internal error"}), 500


__all__ = ["init_app", "raw_json"]
