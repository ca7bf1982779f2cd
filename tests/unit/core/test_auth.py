"""service.core.auth: grant patterns, HS256 tokens and API keys."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from service.core.auth import (
    Grants,
    ResumeClaim,
    api_key_valid,
    group_allowed,
    issue_resume_token,
    issue_token,
    pattern_matches,
    plain_hs256_claims,
    resume_key,
    sign_hs256,
    verify_resume_token,
    verify_token,
)
from service.core.envelope import Target
from service.core.errors import Unauthorized

SECRET = "k" * 64


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _signed(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("chat:*", "chat:1", True),
    ("chat:*", "chat:", True),
    ("chat:*", "chatroom", False),
    ("chat:*", "chat", False),
    ("chat", "chat", True),
    ("chat", "chat:1", False),
    ("chat", "cha", False),
    ("*", "", True),
    ("*", "anything", True),
    ("a*b", "a*b", True),    # a * not at the end is literal
    ("a*b", "axb", False),
])
def test_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


def test_group_allowed_default_scope_and_scope_patterns() -> None:
    assert group_allowed(["chat:*"], "default", "chat:1") is True
    assert group_allowed(["chat:*"], "room", "chat:1") is False  # no scope = default only
    assert group_allowed(["chat:*"], "default", "chatroom") is False
    assert group_allowed(["room/lobby"], "room", "lobby") is True
    assert group_allowed(["room/lobby"], "default", "lobby") is False
    assert group_allowed(["room/lobby"], "room", "lobby2") is False
    assert group_allowed(["t:*/g"], "t:9", "g") is True
    assert group_allowed(["t:*/g"], "u:9", "g") is False
    assert group_allowed(["*/*"], "any", "thing") is True
    assert group_allowed(["default/x"], "default", "x") is True
    assert group_allowed([], "default", "x") is False
    # '@' grants are for publish targets and never grant a group
    assert group_allowed(["@all", "@user:*"], "default", "x") is False
    assert group_allowed(["nope", "room/*"], "room", "z") is True


def _grants(*publish: str) -> Grants:
    return Grants(user_id="u", expires_at=time.time() + 60, publish=publish)


def test_may_publish_group() -> None:
    g = _grants("chat:*", "ops/alerts")
    assert g.may_publish(Target.group("chat:1")) is True
    assert g.may_publish(Target.group("chat:1", "other")) is False
    assert g.may_publish(Target.group("alerts", "ops")) is True
    assert g.may_publish(Target.group("alerts")) is False
    assert g.may_publish(Target.all()) is False
    assert g.may_publish(Target.user("chat:1")) is False


def test_may_publish_all_user_connection() -> None:
    assert _grants("@all").may_publish(Target.all()) is True
    assert _grants("*/*").may_publish(Target.all()) is False
    g = _grants("@user:team-*", "@connection:*")
    assert g.may_publish(Target.user("team-a")) is True
    assert g.may_publish(Target.user("other")) is False
    assert g.may_publish(Target.connection("c-123")) is True
    assert g.may_publish(Target.all()) is False
    assert g.may_publish(Target.group("team-a")) is False
    assert _grants("@user:u1").may_publish(Target.connection("u1")) is False
    assert _grants("@connection:c1").may_publish(Target.user("c1")) is False


def test_may_join_and_may_start() -> None:
    g = Grants(user_id="u", expires_at=0, join=("room/*",), tasks=("demo.*", "exact"))
    assert g.may_join("room", "x") is True
    assert g.may_join("default", "x") is False
    assert g.may_start("demo.sleep") is True
    assert g.may_start("exact") is True
    assert g.may_start("exactly") is False
    assert g.may_start("demox") is False


def test_issue_verify_round_trip() -> None:
    before = int(time.time())
    token = issue_token(SECRET, "user-1", join=["chat:*"], publish=["@all"], tasks=["demo.*"],
                        ttl_s=120)
    g = verify_token(SECRET, token)
    assert g.user_id == "user-1"
    assert (g.join, g.publish, g.tasks) == (("chat:*",), ("@all",), ("demo.*",))
    assert before + 120 <= g.expires_at <= int(time.time()) + 120
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"] == "user-1"
    assert header["alg"] == "HS256"


def test_missing_grant_claims_default_to_empty() -> None:
    g = verify_token(SECRET, _signed({"sub": "u", "exp": int(time.time()) + 60}))
    assert (g.join, g.publish, g.tasks) == ((), (), ())


def test_expired_token() -> None:
    token = _signed({"sub": "u", "exp": int(time.time()) - 60})
    with pytest.raises(Unauthorized, match="token expired"):
        verify_token(SECRET, token)
    with pytest.raises(Unauthorized, match="token expired"):
        verify_token(SECRET, issue_token(SECRET, "u", ttl_s=-60))


def test_bad_signature() -> None:
    token = issue_token("another-secret-" + "x" * 30, "u")
    with pytest.raises(Unauthorized, match="invalid token"):
        verify_token(SECRET, token)
    good = issue_token(SECRET, "u")
    head, _body, sig = good.split(".")
    forged_body = _b64({"sub": "admin", "exp": int(time.time()) + 60, "publish": ["@all"]})
    with pytest.raises(Unauthorized):
        verify_token(SECRET, f"{head}.{forged_body}.{sig}")


@pytest.mark.parametrize("alg", ["none", "None", "HS512"])
def test_other_algorithms_refused(alg: str) -> None:
    claims = {"sub": "admin", "exp": int(time.time()) + 600, "publish": ["@all"]}
    unsigned = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(Unauthorized, match="invalid token"):
        verify_token(SECRET, unsigned)


def test_hs512_signed_with_the_right_secret_is_still_refused() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
    with pytest.raises(Unauthorized, match="invalid token"):
        verify_token(SECRET, token)


def test_missing_exp_refused() -> None:
    with pytest.raises(Unauthorized, match='"exp"'):
        verify_token(SECRET, _signed({"sub": "u"}))


def test_missing_or_bad_sub_refused() -> None:
    exp = int(time.time()) + 60
    with pytest.raises(Unauthorized, match='"sub"'):
        verify_token(SECRET, _signed({"exp": exp}))
    for sub in (5, "", "x" * 129):
        with pytest.raises(Unauthorized):
            verify_token(SECRET, _signed({"sub": sub, "exp": exp}))
    assert verify_token(SECRET, _signed({"sub": "x" * 128, "exp": exp})).user_id == "x" * 128


@pytest.mark.parametrize("claim", ["join", "publish", "tasks"])
@pytest.mark.parametrize("value", ["chat:*", None, [1], {"a": "b"}, ["ok", None]])
def test_non_list_claims_refused(claim: str, value: object) -> None:
    token = _signed({"sub": "u", "exp": int(time.time()) + 60, claim: value})
    with pytest.raises(Unauthorized, match=f"'{claim}' must be a list of strings"):
        verify_token(SECRET, token)


def test_garbage_token() -> None:
    for token in ("", "abc", "a.b.c", "a.b"):
        with pytest.raises(Unauthorized):
            verify_token(SECRET, token)


def test_the_fast_check_accepts_what_pyjwt_accepts() -> None:
    token = issue_token(SECRET, "user-1", join=["chat:*"], ttl_s=120)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert plain_hs256_claims(SECRET, token) == decoded
    now = int(time.time())
    signed = sign_hs256(SECRET, {"sub": "u", "exp": now + 60, "iat": now, "cid": "c1"})
    assert jwt.decode(signed, SECRET, algorithms=["HS256"]) == plain_hs256_claims(
        SECRET, signed) == {"sub": "u", "exp": now + 60, "iat": now, "cid": "c1"}


@pytest.mark.parametrize("claims", [
    lambda now: {"sub": "u", "exp": now - 60},                  # expired
    lambda now: {"sub": "u", "exp": now - 2},                   # within the leeway
    lambda now: {"sub": "u", "exp": now + 60.5},                # a float time
    lambda now: {"sub": "u", "exp": True},
    lambda now: {"sub": "u", "exp": now + 60, "nbf": now + 30},  # not valid yet
    lambda now: {"sub": "u", "exp": now + 60, "iat": now + 30},  # issued in the future
    lambda now: {"sub": "u", "exp": now + 60, "aud": "someone"},  # a claim it does not know
    lambda now: {"sub": 5, "exp": now + 60},
    lambda now: {"exp": now + 60},
])
def test_the_fast_check_leaves_everything_unusual_to_pyjwt(claims: Any) -> None:
    c = claims(int(time.time()))
    assert plain_hs256_claims(SECRET, sign_hs256(SECRET, c)) is None
    assert plain_hs256_claims(SECRET, _signed(c)) is None


def test_the_fast_check_never_refuses_a_token_pyjwt_accepts() -> None:
    now = int(time.time())
    # within the leeway, a float expiry, a header PyJWT writes differently: all accepted
    for claims in ({"sub": "u", "exp": now - 2}, {"sub": "u", "exp": now + 60.5}):
        assert verify_token(SECRET, _signed(claims)).user_id == "u"
    other_header = jwt.encode({"sub": "u", "exp": now + 60}, SECRET, algorithm="HS256",
                              headers={"kid": "k1"})
    assert plain_hs256_claims(SECRET, other_header) is None
    assert verify_token(SECRET, other_header).user_id == "u"


@pytest.mark.parametrize("mangle", [
    lambda h, p, s: f"{h}.{p}.{s[:-2]}",          # signature cut short
    lambda h, p, s: f"{h}.{p}.{s}=",              # not canonical
    lambda h, p, s: f"{h}.{p}x.{s}",              # payload changed
    lambda h, p, s: f"{h}.{p}.{s}.extra",
    lambda h, p, s: f"{h}.{p}",
])
def test_the_fast_check_refuses_a_mangled_token(mangle: Any) -> None:
    token = issue_token(SECRET, "u")
    assert plain_hs256_claims(SECRET, mangle(*token.split("."))) is None
    assert plain_hs256_claims("another-" + SECRET, token) is None


def test_api_key_valid() -> None:
    keys = ("key-one", "key-two")
    assert api_key_valid("key-one", keys) is True
    assert api_key_valid("key-two", keys) is True
    assert api_key_valid("key-thre", keys) is False
    assert api_key_valid("key-one ", keys) is False
    assert api_key_valid("KEY-ONE", keys) is False
    assert api_key_valid("", keys) is False
    assert api_key_valid("key-one", ()) is False
    assert api_key_valid("ключ", ("ключ",)) is True


def test_a_resume_token_is_never_a_client_token() -> None:
    """A resume token neither opens nor refreshes a session: its signature is made with a
    key derived for that one use, and its claims are reserved anyway."""
    resume = issue_resume_token(SECRET, ResumeClaim("c1", "u", 0))
    with pytest.raises(Unauthorized):
        verify_token(SECRET, resume)
    assert verify_resume_token(SECRET, resume, "u") == ResumeClaim("c1", "u", 0)
    assert verify_resume_token(SECRET, resume, "someone-else") is None
    # a client token is no resume token either
    assert verify_resume_token(SECRET, issue_token(SECRET, "u"), "u") is None
    assert resume_key(SECRET) != SECRET and resume_key(SECRET) != resume_key("other" + SECRET)


@pytest.mark.parametrize("claim", ["typ", "cid", "gen"])
def test_client_tokens_with_a_resume_claim_are_refused(claim: str) -> None:
    """Signed with the real secret (an old-style resume token, or a backend's mistake):
    still not a client token."""
    now = int(time.time())
    claims = {"sub": "u", "exp": now + 60, claim: "resume" if claim == "typ" else "c1"}
    for token in (sign_hs256(SECRET, claims), _signed(claims)):
        with pytest.raises(Unauthorized, match="not a client token"):
            verify_token(SECRET, token)


def test_resume_tokens_expire() -> None:
    expired = issue_resume_token(SECRET, ResumeClaim("c1", "u", 3), ttl_s=-60)
    assert verify_resume_token(SECRET, expired, "u") is None
    assert verify_resume_token(SECRET, None, "u") is None
    assert verify_resume_token(SECRET, "garbage", "u") is None
