"""Issue 15, part 5: the client installs into a fresh virtualenv without the frontend's
stack (no gunicorn, gevent, Flask) and publishes through it to a running frontend, plainly
and inside a committed (and a rolled-back) transaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from service.store import registry
from tests.conftest import ENV, Cluster
from tests.support import ROOT, Client, wait_until

#: Bound on creating the virtualenv and on installing the client into it (a cold pip
#: cache downloads SQLAlchemy, psycopg, kombu, msgspec and the build backend).
INSTALL_TIMEOUT_S = 240
#: Settings a frontend needs and a backend using the client does not.
_FRONTEND_ONLY = ("HERALD_SECRET_KEY", "HERALD_API_KEYS", "HERALD_VAR_DIR",
                  "HERALD_ALLOWED_ORIGINS")
#: Bound on the publishing script.
SCRIPT_TIMEOUT_S = 60

_ABSENT = """
import importlib.util, json
print(json.dumps([m for m in ("gunicorn", "gevent", "flask", "flask_sock", "simple_websocket",
                              "greenlet", "celery") if importlib.util.find_spec(m)]))
"""

_PUBLISH = """
import json, sys
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
import service.pg
from service.core.envelope import Target
from service.pg import Herald
from service.store.outbox import create_outbox, enqueue  # noqa: F401 - shipped too

assert service.pg.__file__.startswith(sys.prefix), service.pg.__file__  # not the checkout
user, room = sys.argv[1:3]
herald = Herald()  # settings from HERALD_* in the environment
members = [m["user_id"] for m in herald.get_members("default", room)]
plain = herald.publish(Target.user(user), "from-client", {"how": "plain"})
engine = create_engine(herald.settings.database_url)
with Session(engine) as session:
    dropped = herald.publish(Target.user(user), "from-client", {"how": "rolled back"},
                             session=session)
    session.rollback()
    committed = herald.publish(Target.user(user), "from-client", {"how": "committed"},
                               session=session)
    session.commit()
last = herald.publish(Target.user(user), "from-client", {"how": "last"})
herald.close()
print(json.dumps({"plain": plain, "dropped": dropped, "committed": committed, "last": last,
                  "members": members}))
"""


def _run(args: list[str], env: dict[str, str], timeout: float, cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{args[:3]}: {done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done.stdout


def test_installs_without_the_frontend_stack_and_publishes(
        cluster: Cluster, token: Any, engine: Engine, tmp_path: Path) -> None:
    fe = cluster.frontend()
    # the test's own interpreter and path must not leak into the new environment
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, INSTALL_TIMEOUT_S, tmp_path)
    py = str(venv / "bin" / "python")
    # requirements.txt pins what Herald runs with: as constraints, the same versions install
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-c", str(ROOT / "requirements.txt"), str(ROOT)], env, INSTALL_TIMEOUT_S, tmp_path)
    assert json.loads(_run([py, "-c", _ABSENT], env, SCRIPT_TIMEOUT_S, tmp_path)) == []

    user = f"cli-{uuid.uuid4().hex[:8]}"
    client = Client(fe.ws_url)
    client.hello(token(user))
    room = f"room-{uuid.uuid4().hex[:6]}"
    assert client.request("join", group=room)["op"] == "ack"
    wait_until(lambda: registry.get_members(engine, "default", room))  # written in batches
    # a backend holds only the connection settings: no secret, no API key, no var/ (a
    # production frontend would refuse to start like that; the client must not care)
    backend_env = {k: v for k, v in {**env, **ENV}.items() if k not in _FRONTEND_ONLY}
    ids = json.loads(_run([py, "-c", _PUBLISH, user, room],
                          {**backend_env, "HERALD_ENV": "production"}, SCRIPT_TIMEOUT_S,
                          tmp_path))
    assert ids["members"] == [user]
    got = client.wait_for(lambda f: f.get("event") == "from-client" and f["data"]["how"] ==
                          "last")
    assert got[0]["id"] == ids["last"]
    assert [(e["id"], e["data"]["how"]) for e in client.events("from-client")] == [
        (ids["plain"], "plain"), (ids["committed"], "committed"), (ids["last"], "last")]
    client.close()
