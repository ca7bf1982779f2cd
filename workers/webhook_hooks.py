"""A frontend's side of the webhooks: enqueue checks, never call a receiver.

Wired by the app factory only when ``HERALD_WEBHOOK_URLS`` is set. ``registry_committed``
runs after each registry batch commits (``RegistryWriter.on_commit``; a resume's and a
server-side membership's writes are reported the same way): one
``herald.webhook_presence`` task per batch for the users and groups it touched, and the
opt-in member events. ``logged`` runs after each durable log insert
(``LogPublisher.on_logged``): one ``herald.webhook_undelivered`` task per batch for the
user-targeted messages whose user has no socket here (a local socket proves it has one).
Both enqueue on a greenlet of their own, so neither the writer nor a publish waits on
the broker. Per-message delivery is untouched: nothing here runs per socket written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from service.core.config import Settings
from service.store.messagelog import Entry
from service.store.registry_writer import Op
from workers import undelivered, webhook_presence, webhooks

log = logging.getLogger(__name__)

#: Registry op kinds that can change who is online or which groups are occupied.
_USER_KINDS = frozenset({"open", "connect", "disconnect", "detach", "resume"})

#: The member event of a socket's groups when it goes (or resumes: its groups come back).
_MEMBER_EVENT = {"disconnect": "member.left", "detach": "member.left", "resume": "member.joined"}


class FrontendHooks:
    """Turns registry commits and log inserts into enqueued webhook work."""

    def __init__(self, settings: Settings, spawn: Callable[[Callable[[], None]], Any],
                 user_of: Callable[[str], str | None], has_local: Callable[[str], bool]
                 ) -> None:
        self.settings = settings
        self.spawn = spawn  # runs the enqueue off the caller's greenlet
        self.user_of = user_of  # a local connection's user (member events)
        self.has_local = has_local  # whether a user has a socket on this frontend
        self.members = (webhooks.enabled(settings, "member.joined")
                        or webhooks.enabled(settings, "member.left"))

    def registry_committed(self, ops: Sequence[Op]) -> None:
        keys: dict[tuple[str, str], None] = {}  # ordered, no repeats
        members: list[tuple[str, dict[str, Any]]] = []
        for op in ops:
            p = op.params
            if op.kind in _USER_KINDS and p.get("user_id"):
                keys[("user", p["user_id"])] = None
            if op.kind in ("join", "leave"):
                keys[("group", f"{p['scope']}/{p['group']}")] = None
                if self.members:
                    members.append((f"member.{op.kind}ed" if op.kind == "join"
                                    else "member.left", {
                        "scope": p["scope"], "group": p["group"],
                        "connection_id": p["connection_id"],
                        "user_id": self.user_of(p["connection_id"]) or p.get("user_id", "")}))
            elif op.kind in ("disconnect", "detach", "resume"):
                for scope, group in p.get("groups", ()):
                    keys[("group", f"{scope}/{group}")] = None
                    if self.members:
                        members.append((_MEMBER_EVENT[op.kind], {
                            "scope": scope, "group": group, "connection_id": p["id"],
                            "user_id": p.get("user_id", "")}))
        if keys or members:
            self.spawn(lambda: self._enqueue([list(k) for k in keys], members))

    def _enqueue(self, keys: list[list[str]], members: list[tuple[str, dict[str, Any]]]
                 ) -> None:
        try:
            if keys:
                webhook_presence.presence.apply_async(kwargs={"keys": keys})
            for kind, data in members:
                webhooks.emit(kind, data, self.settings)
        except Exception:  # the broker is away: the sweep's reconcile and
            log.exception("could not enqueue webhook checks")  # the next change catch up

    def logged(self, entries: Sequence[Entry], ids: Sequence[object]) -> None:
        items = undelivered.items(entries, ids, self.has_local)
        if items:
            self.spawn(lambda: self._undelivered(items))

    def _undelivered(self, items: list[list[Any]]) -> None:
        try:
            webhook_presence.check_undelivered.apply_async((items,))
        except Exception:  # the broker is away: the event is lost, logged
            log.exception("could not enqueue message.undelivered for %d messages", len(items))
