"""Issue 5: thousands of generated frames, valid and malformed, against a live frontend.

The process must never die, every reply must be a documented frame or error code, every
close a documented close code, and afterwards the registry must match the live sockets.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Client, api, wait_until

OPS = ["hello", "refresh", "join", "leave", "publish", "members", "monitor", "demonitor",
       "task", "history", "update", "ping"]
REPLY_OPS = {"ack", "error", "pong", "members", "presence", "event", "history"}
ERROR_CODES = {"bad_request", "unknown_op", "unauthorized", "forbidden", "not_found",
               "too_large", "rate_limited", "internal"}
CLOSE_CODES = {1007, 1008, 1009, 4401}  # 1007: invalid UTF-8 in a text frame
MAX_FRAME = 64 * 1024

json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-2**80, 2**80)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
             | st.sampled_from(["", "a/b", "@x", "g", "default", "x" * 200, "\u0000", "ünï"]))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
field_names = st.sampled_from(["group", "scope", "token", "event", "data", "all", "user",
                               "connection", "ref", "local", "durable", "name", "args",
                               "notify", "last_id", "resume", "epoch", "rewind", "limit",
                               "before", "after", "meta"])
op_frames = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | st.text(max_size=10) | json_leaf},
    optional={"ref": json_value}).flatmap(
    lambda base: st.dictionaries(field_names, json_value, max_size=6).map(
        lambda extra: json.dumps({**extra, **base}, allow_nan=False)))
deep = st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n)
huge_numbers = st.sampled_from(["1" * 5000, "1e999999", "-0.0", "9" * 400 + ".5"]).map(
    lambda n: json.dumps({"op": "publish", "all": True, "event": "e"})[:-1] + f', "data": {n}}}')
oversize = st.just(json.dumps({"op": "publish", "all": True, "event": "e",
                               "data": "x" * (MAX_FRAME + 10)}))
bad_utf8 = st.binary(min_size=1, max_size=64).filter(lambda b: _not_utf8(b))
frames = (op_frames | st.text(max_size=200) | deep | huge_numbers
          | bad_utf8.map(lambda b: ("text", b)) | bad_utf8.map(lambda b: ("binary", b))
          | st.binary(max_size=100).map(lambda b: ("binary", b)) | oversize)


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return True
    return False


class Fuzzer:
    def __init__(self, fe: Any, token: str) -> None:
        self.fe, self.token = fe, token
        self.client = self._fresh()
        self.seen_ops: set[str] = set()
        self.seen_codes: set[str] = set()
        self.closes: list[int | None] = []
        self.sent = 0

    def _fresh(self) -> Client:
        c = Client(self.fe.ws_url)
        c.hello(self.token)
        return c

    def send(self, frame: Any) -> None:
        c = self.client
        start = len(c.frames)
        try:
            if isinstance(frame, tuple):
                c.ws.send(frame[1], text=frame[0] == "text")
            else:
                c.send(frame)
            self.sent += 1
            ref = f"sync-{uuid.uuid4().hex}"
            c.send({"op": "ping", "ref": ref})
            c.wait_for(lambda f: f.get("ref") == ref, timeout=60)
        except Exception:
            assert c.closed.wait(60), "the socket neither answered nor closed"
        for f in c.frames[start:]:
            assert f.get("op") in REPLY_OPS, f
            self.seen_ops.add(f["op"])
            if f["op"] == "error":
                assert f["code"] in ERROR_CODES and isinstance(f["message"], str), f
                self.seen_codes.add(f["code"])
        if c.closed.is_set():
            assert c.close_code in CLOSE_CODES, c.close_code
            self.closes.append(c.close_code)
            self.client = self._fresh()


def test_generated_frames_never_break_the_frontend(cluster: Any, token: Any) -> None:
    fe = cluster.frontend("fuzz", env={"HERALD_RATE_LIMIT": "1000000",
                                       "HERALD_RATE_BURST": "1000000",
                                       "HERALD_MAX_USER_CONNECTIONS": "1000"})
    user = f"fuzz-{uuid.uuid4().hex[:6]}"
    fuzzer = Fuzzer(fe, token(user, join=("*/*",), publish=("*/*",), tasks=()))
    bystander = Client(fe.ws_url)
    bystander.hello(token(user))

    @settings(max_examples=2200, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames)
    def run(frame: Any) -> None:
        fuzzer.send(frame)

    run()
    assert fuzzer.sent >= 2000
    assert fe.alive() and api(fe, "GET", "/healthz").status_code == 200
    assert {"bad_request", "unknown_op"} <= fuzzer.seen_codes
    assert 1009 in fuzzer.closes  # the oversize frames were met with 1009
    assert bystander.request("ping")["op"] == "pong"

    # the registry matches the live sockets: rows for exactly the open connections,
    # and each one's memberships equal to the frontend's own index
    live = {fuzzer.client.frames[0]["connection_id"], bystander.frames[0]["connection_id"]}

    def registry_rows() -> dict[str, set[tuple[str, str]]]:
        rows = api(fe, "GET", f"/api/users/{user}/connections").json()
        return {r["connection_id"]: {(g["scope"], g["group"]) for g in r["groups"]}
                for r in rows}

    wait_until(lambda: set(registry_rows()) == live)
    rows = registry_rows()
    for cid, groups in rows.items():
        for scope, group in groups:
            local = api(fe, "GET", f"/api/groups/{scope}/{group}/members?local=1").json()
            assert cid in {m["connection_id"] for m in local}
    joined = fuzzer.client.request("members", group="fuzz-check")
    assert joined["op"] == "members"


def test_generated_frames_before_hello_never_break_the_frontend(cluster: Any) -> None:
    """Each generated frame (deep nesting among them) is the first thing a fresh socket
    sends, repeated: every reply is a documented error, every socket ends closed with a
    documented code within HERALD_HELLO_MAX_FRAMES, and nothing is logged as a crash."""
    from tests.rawws import RawClient

    fe = cluster.frontend("prefuzz")
    seen_codes: set[str] = set()
    closes: list[int | None] = []
    deep_hellos = st.integers(1, 30_000).map(
        lambda n: '{"op": "hello", "token": %s}' % ("[" * n + "]" * n))

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames | deep_hellos)
    def run(frame: Any) -> None:
        c = RawClient("127.0.0.1", fe.port)
        try:
            for _ in range(4):  # one more than HERALD_HELLO_MAX_FRAMES
                if isinstance(frame, tuple):
                    c.send_frame(0x1 if frame[0] == "text" else 0x2, frame[1])
                else:
                    c.send_frame(0x1, frame.encode())
        except OSError:
            pass  # closed meanwhile (1009, 1007, 4401)
        got, code, _ = c.collect_until_close(30)
        c.close()
        for f in got:
            assert f.get("op") == "error" and f["code"] in ERROR_CODES, f
            seen_codes.add(f["code"])
        assert len(got) <= 3
        closes.append(code)

    run()
    assert set(closes) <= CLOSE_CODES | {None}, set(closes)
    assert closes.count(None) < len(closes) // 10  # a reset now and then, after a 1009
    assert 4401 in closes and "bad_request" in seen_codes
    assert fe.alive() and api(fe, "GET", "/healthz").status_code == 200
    log = fe.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "RecursionError" not in log
