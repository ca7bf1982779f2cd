"""Herald's exception hierarchy: each error carries the PROTOCOL.md code and HTTP status."""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error a client may be told about."""

    code = "internal"
    status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class BadRequest(HeraldError):
    code = "bad_request"
    status = 400


class UnknownOp(HeraldError):
    code = "unknown_op"
    status = 400


class Unauthorized(HeraldError):
    code = "unauthorized"
    status = 401


class Forbidden(HeraldError):
    code = "forbidden"
    status = 403


class NotFound(HeraldError):
    code = "not_found"
    status = 404


class TooLarge(HeraldError):
    code = "too_large"
    status = 413


class RateLimited(HeraldError):
    code = "rate_limited"
    status = 429


class Unavailable(HeraldError):
    code = "unavailable"
    status = 503
