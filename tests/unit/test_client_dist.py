"""Issue 15, part 5: the installable client (``pyproject.toml``) ships exactly what
``service.pg`` imports, and none of it imports the frontend's stack."""

from __future__ import annotations

import json
import subprocess
import tomllib

from tests.support import PYTHON, ROOT

#: What a backend must never pull in through the client (the frontend's stack).
FRONTEND_STACK = ("flask", "flask_sock", "gunicorn", "gevent", "simple_websocket",
                  "greenlet", "werkzeug", "celery")
#: The client's public modules.
CLIENT_MODULES = ("service.pg", "service.cluster.aftercommit", "service.store.outbox")

_PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def _shipped() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    return list(project["tool"]["hatch"]["build"]["targets"]["wheel"]["only-include"])


def _loaded_by_client() -> list[str]:
    out = subprocess.run([PYTHON, "-c", _PROBE, *CLIENT_MODULES], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return list(json.loads(out))


def test_the_wheel_ships_every_module_the_client_imports_and_only_those() -> None:
    shipped = _shipped()
    assert all((ROOT / path).is_file() for path in shipped), "a listed file is missing"
    modules = {p.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for p in shipped if p.endswith(".py")}
    loaded = {m for m in _loaded_by_client() if m == "service" or m.startswith("service.")}
    assert loaded == modules
    assert "service/py.typed" in shipped


def test_the_client_imports_nothing_of_the_frontends_stack() -> None:
    tops = {m.split(".")[0] for m in _loaded_by_client()}
    assert tops.isdisjoint(FRONTEND_STACK), sorted(tops & set(FRONTEND_STACK))


_READINESS = """
import socket, sys
if sys.argv[1] == "patched":
    from gevent import monkey
    monkey.patch_all()
from service.bus import amqp_consumer
a, b = socket.socketpair()
r = amqp_consumer.Readiness(a, b.fileno())
b.send(b"x")
print(r.loop is not None, r.wait(5.0), "gevent" in sys.modules)
"""


def test_the_consumer_waits_on_gevent_loop_only_where_gevent_patched() -> None:
    def probe(mode: str) -> list[str]:
        return subprocess.run([PYTHON, "-c", _READINESS, mode], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.split()
    # a frontend (patched): gevent's io watchers
    assert probe("patched") == ["True", "True", "True"]
    # the client (plain threads): select, and gevent never imported
    assert probe("plain") == ["False", "True", "False"]
