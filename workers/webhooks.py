"""Webhook delivery: one Celery task per (event, URL), retried with capped backoff.

An event is ``{"id", "type", "ts", "data"}`` (PROTOCOL.md, "Webhooks"), serialised once by
``emit`` and POSTed as is to every URL of ``HERALD_WEBHOOK_URLS`` with a fresh
``Herald-Signature`` per attempt (``service/core/webhook_signature.py``). Any 2xx
acknowledges; anything else, or no answer, is retried after
``HERALD_WEBHOOK_RETRY_BASE_S * 2**n`` seconds, at most ``RETRY_CAP_S``, for
``MAX_ATTEMPTS`` attempts in all. Retries carry the same body, hence the same ``id``:
receivers de-duplicate on it (delivery is at least once). Frontends only enqueue these
tasks; the receiver is only ever called from a worker, so it never slows sockets.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import requests
from celery import Task

from service.core.config import Settings
from service.core.webhook_signature import HEADER, sign
from workers.celery_app import app, settings

log = logging.getLogger(__name__)

#: Attempts per (event, URL), the first included, before the event is dropped (logged):
#: with the default 2 s base and the cap, about 35 minutes of retries.
MAX_ATTEMPTS = 12
#: The longest wait between two attempts.
RETRY_CAP_S = 600.0
#: How long one POST may take (connect and read) before it counts as failed.
REQUEST_TIMEOUT_S = 10.0

#: Every event type (PROTOCOL.md); ``member.*`` are sent only when HERALD_WEBHOOK_EVENTS
#: names them.
TYPES = ("user.online", "user.offline", "group.occupied", "group.vacated",
         "member.joined", "member.left", "message.undelivered")


def enabled(cfg: Settings, kind: str) -> bool:
    """Whether events of type ``kind`` are sent: listed in HERALD_WEBHOOK_EVENTS, or by
    default every type but the chatty member.*; never without a URL."""
    if not cfg.webhook_urls:
        return False
    if cfg.webhook_events:
        return kind in cfg.webhook_events
    return not kind.startswith("member.")


def secret_of(cfg: Settings) -> str:
    """The signing secret: HERALD_WEBHOOK_SECRET, else HERALD_SECRET_KEY."""
    return cfg.webhook_secret or cfg.secret_key


def event_body(kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One event's JSON body, with a fresh id unless given."""
    return json.dumps({"id": event_id or uuid.uuid4().hex, "type": kind, "ts": time.time(),
                       "data": data}, separators=(",", ":"))


def emit(kind: str, data: dict[str, Any], cfg: Settings = settings) -> None:
    """Enqueue one event for every configured URL (nothing when its type is off)."""
    if not enabled(cfg, kind):
        return
    body = event_body(kind, data)
    for url in cfg.webhook_urls:
        deliver.apply_async((url, body))


def post(url: str, body: str, secret: str) -> int:
    """POST a signed body once; the HTTP status (raises on no answer)."""
    raw = body.encode()
    answer = requests.post(url, data=raw, timeout=REQUEST_TIMEOUT_S, allow_redirects=False,
                           headers={"Content-Type": "application/json",
                                    HEADER: sign(secret, raw)})
    return answer.status_code


def backoff_s(retries: int, base_s: float) -> float:
    """The wait before retry ``retries + 1``: doubling from ``base_s``, capped."""
    return float(min(RETRY_CAP_S, base_s * 2 ** min(retries, 30)))


@app.task(bind=True, name="herald.webhook_deliver", ignore_result=True,
          max_retries=MAX_ATTEMPTS - 1)
def deliver(self: Task[Any, Any], url: str, body: str) -> int | None:
    """POST one event to one URL; retried (same body, same id) until a 2xx."""
    try:
        status = post(url, body, secret_of(settings))
        if 200 <= status < 300:
            return status
        why = f"HTTP {status}"
    except requests.RequestException as exc:
        why = exc.__class__.__name__
    if self.request.retries >= MAX_ATTEMPTS - 1:
        log.error("webhook to %s dropped after %d attempts (%s): %s", url, MAX_ATTEMPTS,
                  why, body[:200])
        return None
    delay = backoff_s(self.request.retries, settings.webhook_retry_base_s)
    log.warning("webhook to %s failed (%s); retry in %.1fs", url, why, delay)
    raise self.retry(countdown=delay)


def send_test(cfg: Settings) -> list[tuple[str, str]]:
    """``manage.py webhooks test``: POST a signed sample to every URL now (no Celery, no
    retry); each URL with its answer."""
    body = event_body("user.online", {"user_id": "herald-webhook-test"})
    answers = []
    for url in cfg.webhook_urls:
        try:
            answers.append((url, f"HTTP {post(url, body, secret_of(cfg))}"))
        except requests.RequestException as exc:
            answers.append((url, f"no answer: {exc}"))
    return answers
