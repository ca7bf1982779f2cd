"""A Postgres primary and a synchronous streaming standby that one test owns.

``PgPair`` makes a fresh cluster with initdb in a directory of its own (under /tmp: the
``postgres`` OS user must reach it, and a checkout under /root may be closed to it), on
free ports, and a standby of it with ``pg_basebackup -R``. The primary names the standby
in ``synchronous_standby_names``, so a commit at ``synchronous_commit = on`` returns only
once the standby has flushed it. Every server runs in the foreground as a child of this
process (``postgres`` refuses to run as root, so as the ``postgres`` user), in its own
process group, and is stopped by its PID; ``cleanup`` removes the directory.

    with PgPair.running() as pg:
        url = pg.url("herald_x")     # both hosts, target_session_attrs=read-write
        pg.kill_primary()            # SIGKILL to the primary's postmaster
        pg.promote()                 # the standby becomes the primary
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from tests.support import ARTIFACTS, WAIT_S, free_port

#: The newest installed server's binaries (Debian's layout), unless PG_BIN says otherwise.
PG_BIN = Path(os.environ.get("PG_BIN") or max(glob.glob("/usr/lib/postgresql/*/bin"),
                                              default="/usr/lib/postgresql/15/bin"))
#: The OS user the servers run as.
PG_USER = "postgres"
#: The standby's name on the primary (its primary_conninfo's application_name).
STANDBY_NAME = "herald_standby"
#: Seconds a fast shutdown may take before the server is killed.
STOP_WAIT_S = 15.0
#: Settings both servers share (the standby's copy of postgresql.conf has them too).
COMMON_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "5",
    "hot_standby": "on",
    "max_connections": "200",
    # the tests lose processes, not machines: the page cache outlives a SIGKILL, so
    # fsync buys nothing here and costs the shared CI machine's disk
    "fsync": "off",
    # the standby reports its flush position at least this often (s); the primary releases
    # commits waiting for it only on a report, so a changed synchronous_standby_names
    # takes effect within a second rather than ten
    "wal_receiver_status_interval": "1",
    "log_line_prefix": "'%m [%p] '",
}


class Node:
    """One server of the pair: its directory, port and postmaster process."""

    def __init__(self, name: str, data: Path, port: int) -> None:
        self.name = name
        self.data = data
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _as_postgres(argv: Sequence[str], cwd: Path) -> None:
    """Run one of the server's tools as the postgres user (what ``runuser -u postgres``
    does); raise with its output when it fails."""
    done = subprocess.run(list(argv), cwd=cwd, user=PG_USER, group=PG_USER, extra_groups=[],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")


class PgPair:
    """A primary and its synchronous standby on this machine, for one test module.

    ``listen_addresses``: where both servers listen (other addresses for network
    namespaces, e.g. ``"127.0.0.1,10.200.0.1"``); ``trusted_cidrs``: networks besides
    127.0.0.1 that may connect and replicate without a password; ``host``: the address
    clients and the standby use; ``synchronous_commit``: the servers' default, ``local``
    unless told (Herald must not rely on the default: its log asks for ``on`` itself).
    """

    def __init__(self, *, listen_addresses: str = "127.0.0.1",
                 trusted_cidrs: Sequence[str] = (), host: str = "127.0.0.1",
                 synchronous_commit: str = "local", tag: str = "pg") -> None:
        self.listen_addresses = listen_addresses
        self.trusted_cidrs = tuple(trusted_cidrs)
        self.host = host
        self.synchronous_commit = synchronous_commit
        self.root = Path(tempfile.mkdtemp(prefix=f"herald-{tag}-"))
        shutil.chown(self.root, PG_USER, PG_USER)
        self.primary = Node("primary", self.root / "primary", free_port())
        self.standby = Node("standby", self.root / "standby", free_port())
        self.promoted = False
        ARTIFACTS.mkdir(exist_ok=True)
        self._logs = {n: ARTIFACTS / f"{self.root.name}-{n}.log" for n in ("primary", "standby")}

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kw: Any) -> Iterator[PgPair]:
        """Start a pair; stop and remove it afterwards, whatever happened."""
        pair = cls(**kw)
        try:
            pair.start()
            yield pair
        finally:
            pair.cleanup()

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """initdb the primary, start it, clone the standby from it, start that, and wait
        until the primary reports it as its synchronous standby."""
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.primary.data), "-U", "postgres",
                      "--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8",
                      "--locale=C"], self.root)
        self._configure_primary()
        self._launch(self.primary, {})
        self._wait_accepting(self.primary)
        _as_postgres([str(PG_BIN / "pg_basebackup"), "-D", str(self.standby.data), "-h",
                      self.host, "-p", str(self.primary.port), "-U", "postgres", "-X",
                      "stream", "-R", "--no-sync", "-c", "fast"], self.root)
        with open(self.standby.data / "postgresql.auto.conf", "a") as conf:
            # later lines win: -R's line has no application_name, which the primary's
            # synchronous_standby_names matches against
            conf.write(f"primary_conninfo = 'host={self.host} port={self.primary.port} "
                       f"user=postgres application_name={STANDBY_NAME}'\n")
        # its copy of postgresql.conf is the primary's; promoted, it has no standby, so it
        # must not wait for one (its commits would hang): set nothing here, explicitly
        self._launch(self.standby, {"synchronous_standby_names": ""})
        self._wait_accepting(self.standby)
        self.wait_sync()

    def _configure_primary(self) -> None:
        data = self.primary.data
        with open(data / "postgresql.conf", "a") as conf:
            # the standby's copy of this file names the standby too: it overrides that
            # on its command line (set_synchronous_standbys needs it here, not there)
            settings = {**COMMON_SETTINGS, "synchronous_commit": self.synchronous_commit,
                        "synchronous_standby_names": STANDBY_NAME}
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        lines = ["local all all trust", "local replication all trust",
                 "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
        for cidr in self.trusted_cidrs:
            lines += [f"host all all {cidr} trust", f"host replication all {cidr} trust"]
        (data / "pg_hba.conf").write_text("\n".join(lines) + "\n")

    def _launch(self, node: Node, settings: dict[str, str]) -> None:
        """Start ``postgres`` in the foreground: its PID is the postmaster's own."""
        argv = [str(PG_BIN / "postgres"), "-D", str(node.data), "-c", f"port={node.port}",
                "-c", f"listen_addresses={self.listen_addresses}",
                # its own socket directory: nothing shared with the system server
                "-c", f"unix_socket_directories={node.data}"]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = open(self._logs[node.name], "ab")  # noqa: SIM115 - the child holds it open
        try:
            node.proc = subprocess.Popen(argv, cwd=self.root, user=PG_USER, group=PG_USER,
                                         extra_groups=[], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _wait_accepting(self, node: Node, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited: see {self._logs[node.name]}")
            try:
                with psycopg.connect(self.conninfo(node), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_sync(self, timeout: float = WAIT_S) -> None:
        """Wait until the primary streams to the standby as its synchronous standby."""
        deadline = time.monotonic() + timeout
        while self.query(self.primary, "SELECT sync_state FROM pg_stat_replication WHERE "
                         "application_name = %s", STANDBY_NAME) != [("sync",)]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby is not synchronous: see {self._logs}")
            time.sleep(0.1)

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster (a crash); its backends notice and exit."""
        os.kill(self.primary.pid, signal.SIGKILL)
        assert self.primary.proc is not None
        self.primary.proc.wait(WAIT_S)

    def promote(self) -> None:
        """Promote the standby (``pg_ctl promote -w``: returns once it takes writes)."""
        _as_postgres([str(PG_BIN / "pg_ctl"), "promote", "-w", "-t", str(int(WAIT_S)), "-D",
                      str(self.standby.data)], self.root)
        self.promoted = True

    def set_synchronous_standbys(self, names: str) -> None:
        """Change the primary's synchronous_standby_names now (ALTER SYSTEM, reload): a
        name no standby has makes every ``on`` commit wait, as a lost standby does."""
        with psycopg.connect(self.conninfo(self.primary), autocommit=True) as db:
            db.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
            db.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        """Fast shutdown of whatever still runs (SIGINT to each postmaster), standby first."""
        for node in (self.standby, self.primary):
            if node.proc is None or not node.alive():
                continue
            os.kill(node.pid, signal.SIGINT)
            try:
                node.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(node.pid, signal.SIGKILL)
                node.proc.wait(WAIT_S)

    def cleanup(self) -> None:
        """Stop both servers, then remove the directory. A postmaster that was killed
        leaves its children to exit on their own: any still there are in its process
        group (start_new_session made it the leader), and only they get the SIGKILL."""
        try:
            self.stop()
        finally:
            for node in (self.standby, self.primary):
                if node.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.pid, signal.SIGKILL)
            shutil.rmtree(self.root, ignore_errors=True)

    # --- addresses -----------------------------------------------------------------------

    def conninfo(self, node: Node, database: str = "postgres") -> str:
        return f"host={self.host} port={node.port} user=postgres dbname={database}"

    def node_url(self, node: Node, database: str) -> str:
        """A SQLAlchemy URL for one server only."""
        return f"postgresql+psycopg://postgres@{self.host}:{node.port}/{database}"

    def url(self, database: str) -> str:
        """The URL Herald is given: both servers, the one that takes writes wins."""
        return (f"postgresql+psycopg://postgres@/{database}?host={self.host}:{self.primary.port}"
                f"&host={self.host}:{self.standby.port}&target_session_attrs=read-write")

    @property
    def writable(self) -> Node:
        """The server that takes writes now."""
        return self.standby if self.promoted else self.primary

    def query(self, node: Node, sql: str, *params: Any,
              database: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo(node, database), autocommit=True,
                             connect_timeout=5) as db:
            cursor = db.execute(sql, params or None)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
