"""What /readyz says about Postgres (service/cluster/readiness.py): a blip shorter than
DB_UNREADY_AFTER_S keeps the frontend ready, a longer outage does not, an answer brings it
back; and nothing is known as ready before Postgres was reached once."""

from __future__ import annotations

from service.cluster.readiness import DB_UNREADY_AFTER_S, DatabaseWatch


class Postgres:
    """A check that fails while ``down``, and a clock the test moves."""

    def __init__(self) -> None:
        self.down = False
        self.now = 1000.0

    def check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("connection refused")

    def clock(self) -> float:
        return self.now


def watch(pg: Postgres) -> DatabaseWatch:
    return DatabaseWatch(pg.check, clock=pg.clock, sleep=lambda s: None)


def test_a_blip_shorter_than_the_grace_keeps_it_ready_and_a_long_outage_does_not() -> None:
    pg = Postgres()
    w = watch(pg)
    w.probe()
    assert w.status() == (True, "ok")
    pg.down = True
    pg.now += 1
    w.probe()
    ready, why = w.status()
    assert ready and "database silent" in why and "ConnectionRefusedError" in why
    pg.now += DB_UNREADY_AFTER_S - 2  # still within the grace (silent since the last answer)
    w.probe()
    assert w.status()[0] is True
    pg.now += 2
    w.probe()
    ready, why = w.status()
    assert not ready
    assert "DB_UNREADY_AFTER_S" in why and "ConnectionRefusedError" in why
    pg.down = False
    w.probe()
    assert w.status() == (True, "ok")


def test_not_ready_before_postgres_answered_once() -> None:
    pg = Postgres()
    w = watch(pg)
    assert w.status()[0] is False  # not probed yet
    pg.down = True
    w.probe()
    ready, why = w.status()
    assert not ready and why.startswith("database: not reached yet")
    pg.down = False
    w.probe()
    assert w.status() == (True, "ok")


def test_the_status_is_read_without_running_the_check() -> None:
    calls: list[int] = []
    w = DatabaseWatch(lambda: calls.append(1), sleep=lambda s: None)
    w.probe()
    for _ in range(5):
        w.status()
    assert calls == [1]
