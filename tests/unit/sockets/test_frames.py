"""service.sockets.frames: the client frame parser, op by op, and every way a frame is refused."""

from __future__ import annotations

import json

import pytest

from service.core.errors import BadRequest, UnknownOp
from service.sockets import frames


def test_hello() -> None:
    f = frames.parse(b'{"op":"hello","token":"t.k.n","resume":"c1","last_id":7,"ref":1}')
    assert isinstance(f, frames.Hello)
    assert (f.op, f.token, f.resume, f.last_id, f.ref) == ("hello", "t.k.n", "c1", 7, 1)
    bare = frames.parse('{"op":"hello","token":"x"}')
    assert isinstance(bare, frames.Hello)
    assert (bare.resume, bare.last_id, bare.ref) == (None, None, None)


def test_refresh() -> None:
    f = frames.parse(b'{"op":"refresh","token":"new.tok.en","ref":"r"}')
    assert isinstance(f, frames.Refresh)
    assert (f.token, f.ref) == ("new.tok.en", "r")
    with pytest.raises(BadRequest):
        frames.parse(b'{"op":"refresh"}')


@pytest.mark.parametrize(("op", "cls"), [("join", frames.Join), ("leave", frames.Leave),
                                         ("monitor", frames.Monitor),
                                         ("demonitor", frames.Demonitor)])
def test_group_ops(op: str, cls: type) -> None:
    f = frames.parse(json.dumps({"op": op, "group": "chat:1", "ref": "r1"}))
    assert type(f) is cls
    assert (f.op, f.group, f.scope, f.ref) == (op, "chat:1", "default", "r1")
    scoped = frames.parse(json.dumps({"op": op, "group": "g", "scope": "room"}))
    assert (scoped.group, scoped.scope) == ("g", "room")


def test_history_rewind_and_epoch_fields() -> None:
    h = frames.parse(b'{"op":"history","group":"g","after":5}')
    assert isinstance(h, frames.History)
    assert (h.scope, h.limit, h.before, h.after) == ("default", 100, None, 5)
    j = frames.parse(b'{"op":"join","group":"g","rewind":1}')
    assert isinstance(j, frames.Join) and j.rewind == 1
    hello = frames.parse(b'{"op":"hello","token":"t","epoch":"abc.1.2"}')
    assert isinstance(hello, frames.Hello) and hello.epoch == "abc.1.2"


def test_publish_defaults_and_fields() -> None:
    f = frames.parse(b'{"op":"publish","group":"g","event":"msg"}')
    assert isinstance(f, frames.Publish)
    assert (f.group, f.scope, f.user, f.connection, f.all, f.event, f.durable) == (
        "g", "default", None, None, False, "msg", False)
    assert bytes(f.data) == b"null"
    full = frames.parse(b'{"op":"publish","user":"u1","event":"e","durable":true,"ref":2.5}')
    assert (full.user, full.durable, full.ref) == ("u1", True, 2.5)
    assert frames.parse(b'{"op":"publish","all":true,"event":"e"}').all is True
    assert frames.parse(b'{"op":"publish","connection":"c9","event":"e"}').connection == "c9"


def test_publish_data_is_kept_raw() -> None:
    data = b'{ "b" : [1, 2.50, "\\u00e9"],\n  "a":null }'
    raw = b'{"op":"publish","all":true,"event":"e","data":' + data + b',"ref":"x"}'
    f = frames.parse(raw)
    assert bytes(f.data) == data  # the exact slice, whitespace and escapes included


def test_members_task_ping() -> None:
    m = frames.parse(b'{"op":"members","group":"g","local":true}')
    assert isinstance(m, frames.Members)
    assert (m.group, m.scope, m.local) == ("g", "default", True)
    t = frames.parse(b'{"op":"task","name":"demo.sleep","args":{"seconds":1},'
                     b'"notify":"connection"}')
    assert isinstance(t, frames.StartTask)
    assert (t.name, t.args, t.notify) == ("demo.sleep", {"seconds": 1}, "connection")
    t2 = frames.parse(b'{"op":"task","name":"demo.x"}')
    assert (t2.args, t2.notify) == ({}, "user")
    p = frames.parse(b'{"op":"ping","ref":true}')
    assert type(p) is frames.Ping
    assert p.ref is True


def test_extra_fields_are_ignored() -> None:
    f = frames.parse(b'{"op":"ping","ref":"a","future":{"x":[1,2]},"more":1}')
    assert type(f) is frames.Ping
    assert f.ref == "a"


@pytest.mark.parametrize("raw", [b"not json", b'{"op":"ping"', b"\xff\xfe{}", b""])
def test_not_json(raw: bytes) -> None:
    with pytest.raises(BadRequest, match=r"not valid (JSON|UTF-8)"):
        frames.parse(raw)


@pytest.mark.parametrize("raw", [b"[1,2]", b"42", b'"ping"', b"null"])
def test_top_level_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        frames.parse(raw)


@pytest.mark.parametrize("raw", [b"{}", b'{"ref":1}', b'{"op":1}', b'{"op":null}',
                                 b'{"op":["ping"]}'])
def test_op_missing_or_not_a_string(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="string field 'op'") as exc:
        frames.parse(raw)
    assert exc.value.code == "bad_request"


def test_unknown_op() -> None:
    with pytest.raises(UnknownOp) as exc:
        frames.parse(b'{"op":"subscribe","group":"g"}')
    assert exc.value.code == "unknown_op"
    assert "'subscribe'" in exc.value.message


@pytest.mark.parametrize("raw", [
    b'{"op":"hello"}',                                  # token missing
    b'{"op":"hello","token":""}',                       # token empty
    b'{"op":"hello","token":5}',
    b'{"op":"hello","token":"t","last_id":-1}',
    b'{"op":"hello","token":"t","last_id":"3"}',
    b'{"op":"join"}',                                   # group missing
    b'{"op":"join","group":7}',
    b'{"op":"join","group":"g","scope":""}',
    b'{"op":"publish","group":"g"}',                    # event missing
    b'{"op":"publish","all":"yes","event":"e"}',
    b'{"op":"publish","all":true,"event":"e","durable":1}',
    b'{"op":"members","group":"g","local":"no"}',
    b'{"op":"task"}',
    b'{"op":"task","name":"t","args":[1]}',
    b'{"op":"task","name":"t","notify":"all"}',
    b'{"op":"join","group":"g","rewind":101}',          # past HISTORY_MAX
    b'{"op":"join","group":"g","rewind":-1}',
    b'{"op":"history"}',
    b'{"op":"history","group":"g","limit":0}',
    b'{"op":"history","group":"g","limit":101}',
    b'{"op":"history","group":"g","before":-1}',
    b'{"op":"hello","token":"t","epoch":7}',
])
def test_missing_or_wrong_typed_fields(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        frames.parse(raw)


@pytest.mark.parametrize("name", ["", "x" * 129, "a/b", "a@b", "a b", "a\tb", " a", "\n"])
def test_group_and_scope_name_rules(name: str) -> None:
    with pytest.raises(BadRequest):
        frames.parse(json.dumps({"op": "join", "group": name}))
    with pytest.raises(BadRequest):
        frames.parse(json.dumps({"op": "join", "group": "ok", "scope": name}))
    with pytest.raises(BadRequest):
        frames.parse(json.dumps({"op": "publish", "all": True, "event": name}))


def test_name_length_limit_is_inclusive() -> None:
    f = frames.parse(json.dumps({"op": "join", "group": "x" * 128, "scope": "s" * 128}))
    assert (len(f.group), len(f.scope)) == (128, 128)


def test_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(BadRequest):
        frames.parse(json.dumps({"op": "join", "group": "chat\n"}))


@pytest.mark.parametrize("ref", [[1], {"a": 1}])
def test_ref_must_be_a_scalar(ref: object) -> None:
    with pytest.raises(BadRequest, match=r"\$\.ref"):
        frames.parse(json.dumps({"op": "ping", "ref": ref}))


def test_invalid_utf8_inside_a_string_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        frames.parse(b'{"op":"join","group":"\xff"}')


def test_publish_data_with_invalid_utf8_is_refused() -> None:
    with pytest.raises(BadRequest):
        frames.parse(b'{"op":"publish","all":true,"event":"e","data":"\xff"}')


def test_peek_ref() -> None:
    assert frames.peek_ref(b'{"op":"nope","ref":"r7"}') == "r7"
    assert frames.peek_ref('{"ref":3}') == 3
    assert frames.peek_ref(b'{"ref":false,"op":9}') is False
    assert frames.peek_ref(b'{"op":"join","group":"a/b","ref":1.5}') == 1.5
    assert frames.peek_ref(b'{"ref":{"a":1}}') is None
    assert frames.peek_ref(b'{"ref":[1]}') is None
    assert frames.peek_ref(b"[1]") is None
    assert frames.peek_ref(b"garbage") is None
    assert frames.peek_ref(b'{"op":"ping"}') is None


@pytest.mark.parametrize("where", ["ref", "data", "args", "token", "unknown"])
def test_deep_nesting_is_a_bad_request_not_a_crash(where: str) -> None:
    """Nesting past the interpreter's recursion limit raises RecursionError inside msgspec:
    parse turns it into bad_request, peek_ref into no ref."""
    deep = "[" * 100_000 + "]" * 100_000
    op = {"ref": "hello", "data": "publish", "args": "task", "token": "hello",
          "unknown": "ping"}[where]
    raw = (f'{{"op": "{op}", "{where}": {deep}, "event": "e", "all": true, '
           '"name": "n"}').encode()
    with pytest.raises(BadRequest):
        frames.parse(raw)
    assert frames.peek_ref(raw) is None
    with pytest.raises(BadRequest):
        frames.parse(deep.encode())


def test_members_page_fields() -> None:
    f = frames.parse(b'{"op": "members", "group": "g", "limit": 10, "after": "c9"}')
    assert isinstance(f, frames.Members) and (f.limit, f.after) == (10, "c9")
    with pytest.raises(BadRequest):
        frames.parse(b'{"op": "members", "group": "g", "limit": 0}')


def test_join_meta_and_update() -> None:
    j = frames.parse(b'{"op":"join","group":"g","meta":{"status":"away","n":[1]}}')
    assert isinstance(j, frames.Join) and j.meta == {"status": "away", "n": [1]}
    bare = frames.parse(b'{"op":"join","group":"g"}')
    assert isinstance(bare, frames.Join) and bare.meta is None
    u = frames.parse(b'{"op":"update","group":"g","scope":"s","meta":{}}')
    assert isinstance(u, frames.Update) and (u.group, u.scope, u.meta) == ("g", "s", {})
    for bad in (b'{"op":"update","group":"g"}', b'{"op":"update","group":"g","meta":[1]}',
                b'{"op":"join","group":"g","meta":"x"}'):
        with pytest.raises(BadRequest):
            frames.parse(bad)
