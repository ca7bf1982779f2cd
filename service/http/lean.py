"""``POST /api/publish`` served before Flask: the API's hottest endpoint, in its plain form.

A backend that publishes one message per call pays, per request, gunicorn's parsing plus
Flask's request context, routing, ``Request``/``Response`` objects and error plumbing: about
a third of the request's CPU for a view that decodes one body and calls ``publish``. This
middleware answers the common case itself: the right path and method, a JSON body with a
``Content-Length`` within ``MAX_CONTENT_LENGTH``, a valid API key, no ``Idempotency-Key``,
no ``receipt``, and a body that validates. Anything else (a bad key, a body to refuse, the
rarer options) goes on to the Flask view with the body it read put back, so every answer but
the plain success keeps exactly one implementation; the same validation runs on both
paths (``service/http/targets.py``, the same schema), and the tests run each case on both.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import msgspec
from msgspec import UNSET
from sqlalchemy.exc import DataError

from service.cluster.frontend import Frontend
from service.core.auth import api_key_valid
from service.core.envelope import NULL, valid_name
from service.core.errors import BadRequest, HeraldError, Unavailable
from service.http.api import UNAVAILABLE_ERRORS, first_line
from service.http.schemas import PublishRequest
from service.http.targets import parse_target

log = logging.getLogger(__name__)

PATH = "/api/publish"
_JSON = [("Content-Type", "application/json")]
_decoder = msgspec.json.Decoder(PublishRequest)
_encoder = msgspec.json.Encoder()


def _json_type(content_type: str) -> bool:
    """Werkzeug's ``is_json``: ``application/json`` or ``application/*+json``."""
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/")
                                          and mime.endswith("+json"))


class LeanPublish:
    """WSGI middleware: plain single publishes answered here, everything else by Flask."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], node: Frontend,
                 max_body: int) -> None:
        self.wsgi_app = wsgi_app
        self.node = node
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
                or "HTTP_IDEMPOTENCY_KEY" in environ or not self._authorized(environ)
                or not _json_type(environ.get("CONTENT_TYPE", ""))):
            return self.wsgi_app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if not 0 <= length <= self.max_body:  # chunked, missing or too large: Flask says
            return self.wsgi_app(environ, start_response)
        raw = environ["wsgi.input"].read(length)
        try:
            body = _decoder.decode(raw)
            target = parse_target(body.target, "target")
        except (msgspec.ValidationError, msgspec.DecodeError, BadRequest, RecursionError):
            body = None
        if body is None or body.receipt or not valid_name(body.event):
            environ["wsgi.input"] = io.BytesIO(raw)  # the view reads it again and answers
            return self.wsgi_app(environ, start_response)
        data = NULL if body.data is UNSET else body.data
        try:
            msg_id = self.node.publish(target, body.event, data, durable=body.durable,
                                       exclude=body.exclude_connection)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("backend unavailable: %s", first_line(exc))
            return _error(start_response,
                          Unavailable("Postgres or the broker is unavailable; retry"))
        except DataError as exc:  # NUL in text and the like: the caller's, as in the view
            return _error(start_response,
                          BadRequest(f"refused by the database: {first_line(exc.orig)}"))
        except HeraldError as exc:
            return _error(start_response, exc)
        except Exception:  # answered as Flask's own handler answers it
            log.exception("unhandled error")
            return _answer(start_response, 500, {"error": "internal",
                                                 "message": "internal error"})
        return _answer(start_response, 202, {"id": msg_id})

    def _authorized(self, environ: dict[str, Any]) -> bool:
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        return (scheme.lower() == "bearer" and bool(key)
                and api_key_valid(key.strip(), self.node.settings.api_keys))


def _error(start_response: Callable[..., Any], exc: HeraldError) -> list[bytes]:
    return _answer(start_response, exc.status, {"error": exc.code, "message": exc.message})


def _answer(start_response: Callable[..., Any], status: int,
            body: dict[str, Any]) -> list[bytes]:
    # the same bytes as Flask's jsonify (compact, newline-terminated)
    payload = _encoder.encode(body) + b"\n"
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [*_JSON, ("Content-Length", str(len(payload)))])
    return [payload]
