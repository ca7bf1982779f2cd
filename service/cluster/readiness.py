"""What /readyz says about Postgres: a status kept fresh in the background, read at once.

The frontend serves its sockets without Postgres (live delivery, transient publishes), so
a blip must not take every frontend out of its load balancer at once: an outage counts
only once it has lasted ``DB_UNREADY_AFTER_S``.

Past that the frontend reports itself unready, on purpose. A fresh ``hello`` waits for its
registry row, a resume and a durable publish need Postgres, so new clients are better
turned away by the load balancer (herald.js retries with backoff) than welcomed into a
session that cannot resume. Established sockets are not closed by a failing readiness
probe (Kubernetes only stops sending new connections), so live traffic keeps flowing. And
when only this frontend's path to Postgres is cut (a partition), its peers take its new
clients, which is what readiness is for. The cost: a long outage of Postgres itself makes
every frontend unready, which refuses new connections that could not resume anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two probes of Postgres.
DB_PROBE_EVERY_S = 2.0
#: Seconds one probe may wait for Postgres (a cut link would otherwise hold it for the
#: kernel's TCP retry time, and the status would go stale meanwhile).
DB_PROBE_TIMEOUT_S = 2.0
#: Seconds without an answer from Postgres before the frontend reports itself unready:
#: longer than a restart or a standby promotion (which take a few seconds to ~20 s).
DB_UNREADY_AFTER_S = 30.0


class DatabaseWatch:
    """Runs ``check`` (raises when Postgres cannot answer) every ``every_s`` seconds and
    keeps the outcome; ``status()`` reads it without touching the database."""

    def __init__(self, check: Callable[[], None], *, every_s: float = DB_PROBE_EVERY_S,
                 unready_after_s: float = DB_UNREADY_AFTER_S,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self.every_s = every_s
        self.unready_after_s = unready_after_s
        self._sleep = sleep
        self._clock = clock
        self._last_ok: float | None = None
        self._error = "not checked yet"

    def probe(self) -> None:
        """One check now; never raises (the outcome is kept for ``status``)."""
        try:
            self._check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            if self._error != exc.__class__.__name__:  # once per change, not every probe
                log.warning("Postgres does not answer the readiness probe: %s: %s",
                            exc.__class__.__name__, _first_line(exc))
            self._error = exc.__class__.__name__
        else:
            if self._error and self._last_ok is not None:
                log.info("Postgres answers the readiness probe again")
            self._last_ok = self._clock()
            self._error = ""

    def run(self) -> None:
        """Probe every ``every_s`` forever (a greenlet's body; the first probe is the
        caller's, made before the frontend registers)."""
        while True:
            self._sleep(self.every_s)
            self.probe()

    def status(self) -> tuple[bool, str]:
        """(ready as far as Postgres goes, why): instant, from the last probe."""
        if not self._error:
            return True, "ok"
        if self._last_ok is None:  # never reached since start: nothing to be lenient about
            return False, f"database: not reached yet ({self._error})"
        silent = self._clock() - self._last_ok
        if silent <= self.unready_after_s:
            return True, (f"ok; database silent for {silent:.0f} s ({self._error}), "
                          f"unready after {self.unready_after_s:g} s")
        return False, (f"database: no answer for {silent:.0f} s ({self._error}; "
                       f"unready after DB_UNREADY_AFTER_S={self.unready_after_s:g} s)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
