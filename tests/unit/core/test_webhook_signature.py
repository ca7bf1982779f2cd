"""The webhook signature: what a receiver checks, and the sender's backoff."""

from __future__ import annotations

import hashlib
import hmac

from service.core.webhook_signature import sign, verify


def test_the_signature_is_the_hmac_of_t_dot_body() -> None:
    body = b'{"id":"e1","type":"user.online","ts":1.0,"data":{"user_id":"u"}}'
    header = sign("s3cret", body, now=1_700_000_000)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    assert t == "1700000000"
    assert v1 == hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify("s3cret", body, header, now=1_700_000_010)


def test_verify_refuses_tampering_other_secrets_stale_and_garbage() -> None:
    body = b'{"id":"e1"}'
    header = sign("s3cret", body, now=1000)
    assert not verify("s3cret", b'{"id":"e2"}', header, now=1000)
    assert not verify("other", body, header, now=1000)
    assert not verify("s3cret", body, header, now=1000 + 301)  # older than the tolerance
    assert verify("s3cret", body, header, now=1000 + 301, tolerance_s=600)
    for bad in ("", "t=x,v1=00", "v1=00", f"t=1000,v1={'0' * 64}"):
        assert not verify("s3cret", body, bad, now=1000)


def test_backoff_doubles_and_is_capped() -> None:
    from workers.webhooks import RETRY_CAP_S, backoff_s

    assert [backoff_s(n, 2.0) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(40, 2.0) == RETRY_CAP_S
