"""Transactional publish: a backend's business write and its Herald publish commit or roll
back together (issue 15, part 1, for a backend that shares Herald's database).

``publish_in(session, ...)`` writes the log row through the caller's SQLAlchemy ``Session``,
inside its transaction, and holds the bus message until that transaction commits: the
session's ``after_commit`` event sends it (once; the list is emptied as it is taken). A
rollback drops it, a savepoint's rollback drops what was published inside that savepoint,
and the log row goes with the transaction either way. If the process dies between the
commit and the send, the message is in the log: frontends do not see it live, and a client
resuming past its id (or any replay of the log) gets it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
from sqlalchemy import event
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.store.messagelog import Entry, append_in

from .pipeline import LogPublisher

log = logging.getLogger(__name__)

#: Where a session keeps the messages it publishes on commit (``Session.info``).
PENDING_KEY = "herald.pending"


@dataclass(frozen=True)
class Pending:
    """A message waiting for its transaction: the innermost transaction it was published in
    (a savepoint's rollback drops it), the entry, its log id (None: transient)."""

    tx: SessionTransaction
    entry: Entry
    msg_id: int | None


class AfterCommit:
    """Publishes through the caller's session; ``LogPublisher`` sends after commit."""

    def __init__(self, publisher: LogPublisher) -> None:
        self.publisher = publisher

    def publish_in(self, session: Session | scoped_session[Session], target: Target,
                   event_name: str, data: msgspec.Raw, durable: bool) -> int | None:
        """Log the message in ``session``'s transaction (begun if none is); send it when
        that transaction commits. Returns its log id (None when transient)."""
        if isinstance(session, scoped_session):  # Flask-SQLAlchemy's db.session
            session = session()
        if not isinstance(session, Session):
            # SQLAlchemy's Connection has no after-commit event (its commit event fires
            # before the commit), so a message could go out for a failed commit
            raise TypeError("session= takes a sqlalchemy.orm.Session on Herald's database, "
                            f"not {type(session).__name__} (a Connection has no event "
                            "after its commit to send on)")
        db = session.connection()  # begins the session's transaction if none is open
        msg_id = None
        if durable:
            try:
                msg_id = append_in(db, self.publisher.origin, target, event_name, data)
            except DataError:
                # Postgres refused the row (jsonb has no \u0000), which aborts the caller's
                # transaction as any failed statement does: say so, rather than the driver
                raise BadRequest("data cannot be stored (a \\u0000 in a string?); the "
                                 "session's transaction is aborted: roll it back") from None
        tx = session.get_nested_transaction() or session.get_transaction()
        assert tx is not None  # session.connection() began one
        pending = session.info.get(PENDING_KEY)
        if pending is None:
            pending = session.info[PENDING_KEY] = []
            self._listen(session)
        pending.append(Pending(tx, Entry(target, event_name, data), msg_id))
        return msg_id

    def _listen(self, session: Session) -> None:
        # listeners on this session only, once per session (the list above marks it)
        event.listen(session, "after_commit", self._on_commit)
        event.listen(session, "after_soft_rollback", self._on_rollback)

    def _on_commit(self, session: Session) -> None:
        pending: list[Pending] = session.info.get(PENDING_KEY, [])
        taken, pending[:] = list(pending), []
        if not taken:
            return
        try:
            self.publisher.send_logged_many([p.entry for p in taken],
                                            [p.msg_id for p in taken])
        except Exception:
            # the commit has happened: raising would make the caller think it did not. A
            # durable message is in the log (a resume replays it); a transient one is lost
            log.exception("after commit: could not send %d messages (ids %s)", len(taken),
                          [p.msg_id for p in taken])

    def _on_rollback(self, session: Session, previous: SessionTransaction) -> None:
        pending: list[Pending] = session.info.get(PENDING_KEY, [])
        pending[:] = [p for p in pending if not _inside(p.tx, previous)]


def _inside(tx: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """True when ``tx`` is ``ended`` or nested in it (so rolled back with it)."""
    while tx is not None:
        if tx is ended:
            return True
        tx = tx.parent
    return False
