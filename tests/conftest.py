"""Fixtures: a namespace per test run (own database, exchange, queues), real processes.

The run's environment is set before anything imports Herald, so in-process code and the
processes tests start share one database and exchange, and nothing collides with
another run. Everything is dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import PYTHON, ROOT, Proc, free_port, namespace_env, stop_all

ENV = namespace_env()
os.environ.update(ENV)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "exclusive: restarts a service every test shares (RabbitMQ, Postgres); "
                   "compose/test.sh runs these after the rest, alone")


def _cleanup_broker() -> None:
    from kombu import Connection, Exchange, Queue

    with Connection(ENV["HERALD_BROKER_URL"]) as conn:
        channel = conn.channel()
        for name in (ENV["HERALD_TASK_QUEUE"],):
            Queue(name, channel=channel).delete()
        for name in (ENV["HERALD_EXCHANGE"], ENV["HERALD_TASK_QUEUE"],
                     ENV["HERALD_TASK_QUEUE"] + ".events"):
            Exchange(name, channel=channel).delete()
        for name in (ENV["HERALD_EXCHANGE"] + ".routed",):  # only once something routed
            with contextlib.suppress(*conn.channel_errors):
                Exchange(name, channel=conn.channel()).delete()


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """Create and migrate this run's database; drop it and the broker objects afterwards."""
    subprocess.run([PYTHON, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT, check=True,
                   env=os.environ.copy(), capture_output=True)
    yield ENV["HERALD_DATABASE_URL"]
    from service.store.db import drop_database

    drop_database(ENV["HERALD_DATABASE_URL"])
    _cleanup_broker()


@pytest.fixture
def engine(database: str) -> Any:
    from service.store.db import get_engine

    return get_engine(database)


class Cluster:
    """Processes one test starts; every one is stopped by its PID at the end."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def frontend(self, name: str = "fe", env: dict[str, str] | None = None) -> Proc:
        return self.frontends(name, env=env)[0]

    def worker(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(f"worker-{len(self.procs)}", ["run", "worker"], {**ENV, **(env or {})})
        self.procs.append(proc)
        return proc

    def beat(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(f"beat-{len(self.procs)}", ["run", "beat"], {**ENV, **(env or {})})
        self.procs.append(proc)
        return proc

    def relay(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(f"relay-{len(self.procs)}", ["run", "relay"], {**ENV, **(env or {})})
        self.procs.append(proc)
        return proc

    def frontends(self, *names: str, env: dict[str, str] | None = None) -> list[Proc]:
        """Several frontends started together, each ready when this returns."""
        procs = []
        for name in names:
            port = free_port()
            procs.append(Proc(f"{name}-{port}", ["run", "frontend", "--port", str(port)],
                              {**ENV, **(env or {})}, port=port))
        self.procs.extend(procs)
        for proc in procs:
            proc.wait_ready()
        return procs

    def stop(self) -> None:
        stop_all(list(reversed(self.procs)))


def _purge_task_queue() -> None:
    """Tasks another test left queued must not run under this test's worker."""
    from kombu import Connection

    with Connection(ENV["HERALD_BROKER_URL"]) as conn:
        channel = conn.channel()
        with contextlib.suppress(*conn.channel_errors):  # not declared yet: nothing to purge
            channel.queue_purge(ENV["HERALD_TASK_QUEUE"])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    _purge_task_queue()
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Proc, Proc]]:
    """Two frontends shared by one module's tests (each test uses its own names)."""
    c = Cluster()
    try:
        pa, pb = c.frontends("pa", "pb")
        yield pa, pb
    finally:
        c.stop()


@pytest.fixture
def token() -> Any:
    """Issue client tokens signed with this run's secret."""
    from service.core.auth import issue_token

    def make(user: str, join: tuple[str, ...] = ("*/*",),
             publish: tuple[str, ...] = ("*/*", "@all", "@user:*", "@connection:*"),
             tasks: tuple[str, ...] = ("demo.*",), ttl_s: int = 600) -> str:
        return issue_token(ENV["HERALD_SECRET_KEY"], user, join=join, publish=publish,
                           tasks=tasks, ttl_s=ttl_s)

    return make


@pytest.fixture
def app(database: str) -> Any:
    """The Flask app with no background work (Flask tutorial style)."""
    from service.app import create_app

    return create_app({"heartbeat_s": 1.0}, start=False)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner() -> Any:
    """Run manage.py as a subprocess with this run's environment."""

    def run(*args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], cwd=ROOT, text=True,
                              capture_output=True, check=check, env={**os.environ, **(env or {})},
                              timeout=120)

    return run
