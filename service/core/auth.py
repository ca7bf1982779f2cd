"""Client tokens (HS256 JWT) and their grants; API keys for backends.

A token's ``sub`` is the user id. Grants are lists of patterns: an exact name, or a
``prefix*`` pattern (``chat:*`` matches ``chat:1`` but not ``chatroom``). A group pattern
may name its scope as ``scope/pattern``; without one it means the ``default`` scope.
Publish grants also take ``@all``, ``@user:<pattern>`` and ``@connection:*``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt

from service.core.envelope import DEFAULT_SCOPE, Target
from service.core.errors import Unauthorized

ALGORITHM = "HS256"
DEFAULT_TOKEN_TTL_S = 3600
#: Seconds of clock skew tolerated between the issuer and the frontends.
LEEWAY_S = 5


def pattern_matches(pattern: str, name: str) -> bool:
    """Exact match, or prefix match for a pattern that ends with ``*``."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _split_scope(pattern: str) -> tuple[str, str]:
    scope, sep, rest = pattern.partition("/")
    return (scope, rest) if sep else (DEFAULT_SCOPE, pattern)


def group_allowed(patterns: Iterable[str], scope: str, group: str) -> bool:
    """True when some ``[scope/]pattern`` grants this group in this scope."""
    for pattern in patterns:
        if pattern.startswith("@"):
            continue
        p_scope, p_group = _split_scope(pattern)
        if pattern_matches(p_scope, scope) and pattern_matches(p_group, group):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Grants:
    """What one token lets its holder do (each socket keeps one for its life: slots, and
    not the token's decoded claims, which nothing reads after the check)."""

    user_id: str
    expires_at: float
    join: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()

    def may_join(self, scope: str, group: str) -> bool:
        return group_allowed(self.join, scope, group)

    def may_start(self, task_name: str) -> bool:
        return any(pattern_matches(p, task_name) for p in self.tasks)

    def may_publish(self, target: Target) -> bool:
        if target.kind == "group":
            return group_allowed(self.publish, target.scope, target.key)
        if target.kind == "all":
            return "@all" in self.publish
        prefix = f"@{target.kind}:"
        return any(p.startswith(prefix) and pattern_matches(p[len(prefix):], target.key)
                   for p in self.publish)


def _str_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Unauthorized(f"token claim {name!r} must be a list of strings")
    return tuple(value)


def issue_token(secret: str, user_id: str, *, join: Sequence[str] = (),
                publish: Sequence[str] = (), tasks: Sequence[str] = (),
                ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
    """Sign a client token (what a backend, or ``manage.py token``, hands a browser)."""
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + ttl_s,
              "join": list(join), "publish": list(publish), "tasks": list(tasks)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


#: The header PyJWT (so ``issue_token``) writes for HS256, as it appears in a token.
HS256_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')
#: Claims the fast check knows; a token with any other (aud, iss, jti, …) goes to PyJWT.
_PLAIN_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "join", "publish", "tasks", "cid",
                           "typ", "gen"})
#: Claims only Herald's own resume tokens carry: a client token with one is refused, so a
#: resume token (or anything shaped like one) can never open or refresh a session.
RESERVED_CLAIMS = frozenset({"typ", "cid", "gen"})
#: How long a resume token stays valid (a client must come back within it).
RESUME_TOKEN_TTL_S = 24 * 3600


def sign_hs256(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT with PyJWT's header, without PyJWT's generic machinery."""
    signing_input = f"{HS256_HEADER}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def plain_hs256_claims(secret: str, token: str) -> dict[str, Any] | None:
    """The claims of a token PyJWT would surely accept (``exp`` required, ``LEEWAY_S``),
    checked in a fraction of its time; None whenever there is any doubt.

    Only accepts: the exact header ``issue_token`` writes, a canonical signature that
    matches, integer times with ``exp`` in the future and ``iat``/``nbf`` not, and only
    claims Herald knows. Everything else, and every refusal with its reason, is PyJWT's.
    """
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if header != HS256_HEADER or not payload or "." in signature:
        return None
    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature.encode(), _b64url(mac).encode()):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict) or not claims.keys() <= _PLAIN_CLAIMS:
        return None
    now = time.time()
    exp = claims.get("exp")
    if not _is_int(exp) or exp <= now or not isinstance(claims.get("sub"), str):
        return None
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is not None and (not _is_int(value) or value > now):
            return None
    return claims


def _decode(secret: str, token: str) -> dict[str, Any]:
    """Signature, algorithm and expiry checked (``LEEWAY_S``); the claims, or Unauthorized."""
    claims = plain_hs256_claims(secret, token)
    if claims is None:  # anything unusual, or wrong: PyJWT decides and says why
        try:
            claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
    return claims


def verify_token(secret: str, token: str) -> Grants:
    """Check a client token (signature, algorithm, expiry); return its grants.

    Raise Unauthorized, also for a token carrying a resume token's claims: only a client
    token opens (``hello.token``) or refreshes (``refresh.token``) a session."""
    claims = _decode(secret, token)
    if not claims.keys().isdisjoint(RESERVED_CLAIMS):
        raise Unauthorized("not a client token: a resume token goes in hello.resume, and "
                           "only a client token opens or refreshes a session")
    sub = claims["sub"]
    if not isinstance(sub, str) or not 0 < len(sub) <= 128:
        raise Unauthorized("token sub must be a user id string")
    return Grants(user_id=sub, expires_at=float(claims["exp"]),
                  join=_str_list(claims, "join"), publish=_str_list(claims, "publish"),
                  tasks=_str_list(claims, "tasks"))


def resume_key(secret: str) -> str:
    """The key resume tokens are signed with: derived from the secret for that one use, so
    a resume token's signature is never valid as a client token's (domain separation)."""
    return hmac.new(secret.encode(), b"herald resume token v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ResumeClaim:
    """What a valid resume token names: a connection, its user, and the generation of the
    session it was issued for (a resume bumps it, so each token works once)."""

    connection_id: str
    user_id: str
    gen: int


def issue_resume_token(secret: str, claim: ResumeClaim,
                       ttl_s: int = RESUME_TOKEN_TTL_S) -> str:
    return sign_hs256(resume_key(secret), {
        "cid": claim.connection_id, "sub": claim.user_id, "gen": claim.gen, "typ": "resume",
        "exp": int(time.time()) + ttl_s})


def verify_resume_token(secret: str, token: str | None, user_id: str) -> ResumeClaim | None:
    """The claim of a valid resume token of ``user_id``; None for anything else (the
    client then gets a fresh session)."""
    if not token:
        return None
    try:
        claims = _decode(resume_key(secret), token)
    except Unauthorized:
        return None
    cid, gen = claims.get("cid"), claims.get("gen")
    if (claims.get("typ") != "resume" or claims.get("sub") != user_id
            or not isinstance(cid, str) or not _is_int(gen)):
        return None
    return ResumeClaim(cid, user_id, gen)


def api_key_valid(presented: str, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok
