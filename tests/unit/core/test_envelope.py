"""service.core.envelope: targets, bus envelopes, and the server→client frames built from them."""

from __future__ import annotations

import json

import msgspec
import pytest

from service.core import presence
from service.core.envelope import (
    NULL,
    Target,
    control_envelope,
    decode_envelope,
    encode,
    event_frame,
    make_envelope,
    presence_envelope,
    raw_json,
    target_of,
    valid_name,
    ws_text_frame,
)
from service.core.errors import BadRequest
from tests.fakes import unframe


@pytest.mark.parametrize(("obj", "expected"), [
    ({"all": True}, Target("all")),
    ({"group": "g"}, Target("group", "g", "default")),
    ({"group": "g", "scope": "room"}, Target("group", "g", "room")),
    ({"user": "u1"}, Target("user", "u1")),
    ({"connection": "c1"}, Target("connection", "c1")),
    ({"all": False, "user": "u1"}, Target("user", "u1")),        # false/null are "absent"
    ({"group": None, "connection": "c1"}, Target("connection", "c1")),
    ({"user": "u1", "extra": 1}, Target("user", "u1")),
])
def test_target_from_json_valid(obj: dict[str, object], expected: Target) -> None:
    assert Target.from_json(obj) == expected


@pytest.mark.parametrize("obj", [
    {}, {"all": False}, {"all": True, "user": "u"}, {"group": "g", "user": "u"},
    {"user": "u", "connection": "c"},
])
def test_target_needs_exactly_one(obj: dict[str, object]) -> None:
    with pytest.raises(BadRequest, match="exactly one of"):
        Target.from_json(obj)


@pytest.mark.parametrize("value", [1, "yes", "true", [True]])
def test_target_all_must_be_true(value: object) -> None:
    with pytest.raises(BadRequest, match=r"target\.all must be true"):
        Target.from_json({"all": value})


@pytest.mark.parametrize("obj", [
    {"group": ""}, {"group": "a/b"}, {"group": 5}, {"user": "a@b"}, {"user": "x" * 129},
    {"connection": "line\n"}, {"group": "g", "scope": ""}, {"group": "g", "scope": "s/t"},
    {"group": "g", "scope": None}, {"group": "g", "scope": 3},
])
def test_target_invalid_names(obj: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        Target.from_json(obj)


@pytest.mark.parametrize("obj", [None, [], "all", 1])
def test_target_must_be_an_object(obj: object) -> None:
    with pytest.raises(BadRequest, match="must be an object"):
        Target.from_json(obj)


def test_valid_name() -> None:
    assert valid_name("x" * 128) and valid_name("chat:1") and valid_name("é")
    for bad in ("", "x" * 129, "a/b", "a@b", "a\nb", "a\x00b"):
        assert not valid_name(bad), bad


def test_log_key_and_as_json() -> None:
    assert Target.group("g", "room").log_key() == "room/g"
    assert Target.group("g").log_key() == "default/g"
    assert Target.user("u1").log_key() == "u1"
    assert Target.connection("c1").log_key() == "c1"
    assert Target.all().log_key() == ""
    assert Target.all().as_json() == {"all": True}
    assert Target.group("g", "s").as_json() == {"group": "g", "scope": "s"}
    assert Target.user("u").as_json() == {"user": "u"}
    assert Target.connection("c").as_json() == {"connection": "c"}


@pytest.mark.parametrize("target", [Target.all(), Target.group("g", "s"), Target.user("u"),
                                    Target.connection("c")])
def test_target_of_round_trips_as_json(target: Target) -> None:
    env = make_envelope("fe", target, "e", NULL, ts=1.0)
    assert target_of(decode_envelope(encode(env))) == target


def _decode_ws(frame: bytes) -> tuple[int, bytes]:
    """Decode one unmasked server frame by hand: (first byte, payload)."""
    first, payload, rest = unframe(frame)
    assert rest == b""
    return first, payload


@pytest.mark.parametrize(("size", "header_len", "len7"), [
    (0, 2, 0), (1, 2, 1), (125, 2, 125), (126, 4, 126), (65535, 4, 126),
    (65536, 10, 127), (70000, 10, 127),
])
def test_ws_text_frame_lengths(size: int, header_len: int, len7: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = ws_text_frame(payload)
    assert len(frame) == header_len + size
    assert frame[1] == len7
    first, body = _decode_ws(frame)
    assert first == 0x81  # FIN + text
    assert body == payload


def test_ws_text_frame_extended_length_bytes() -> None:
    assert ws_text_frame(b"x" * 300)[:4] == b"\x81\x7e\x01\x2c"
    assert ws_text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + b"\x00" * 5 + b"\x01\x00\x00"


def test_event_frame() -> None:
    data = msgspec.Raw(b'{"z": 1, "a" : [true]}')
    env = make_envelope("fe-1", Target.group("g", "room"), "chat", data, msg_id=42, ts=12.5)
    text = event_frame(env)
    assert text.startswith(b'{"op":"event",')
    assert b'"data":{"z": 1, "a" : [true]}' in text  # verbatim, not re-encoded
    assert json.loads(text) == {"op": "event", "event": "chat", "data": {"z": 1, "a": [True]},
                                "target": {"group": "g", "scope": "room"}, "ts": 12.5, "id": 42}


def test_event_frame_omits_id_when_none() -> None:
    env = make_envelope("fe", Target.user("u"), "e", raw_json([1, "two"]), ts=3.0)
    assert env.id is None
    assert json.loads(event_frame(env)) == {"op": "event", "event": "e", "data": [1, "two"],
                                            "target": {"user": "u"}, "ts": 3.0}
    assert b'"id"' not in event_frame(env)


def test_envelope_round_trip() -> None:
    env = make_envelope("fe", Target.all(), "e", msgspec.Raw(b'"x"'), msg_id=7, exclude="c1",
                        ts=9.0)
    back = decode_envelope(encode(env))
    assert (back.origin, back.kind, back.target, back.event, bytes(back.data), back.ts,
            back.id, back.exclude) == ("fe", "event", {"all": True}, "e", b'"x"', 9.0, 7, "c1")
    assert make_envelope("fe", Target.all(), "e", NULL).ts > 0


def test_presence_round_trip() -> None:
    joins = [{"connection_id": "c1", "user_id": "u1", "frontend": "fe"}]
    leaves = [{"connection_id": "c2", "user_id": "u2", "frontend": "fe2"}]
    env = presence_envelope("fe", "room", "g", joins, leaves)
    assert (env.kind, env.event, env.target) == ("presence", "presence",
                                                 {"group": "g", "scope": "room"})
    back = decode_envelope(encode(env))
    change = presence.decode(back.data)
    assert (change.joins, change.leaves) == (joins, leaves)
    frame = presence.frame(back.target["scope"], back.target["group"], change)
    assert json.loads(encode(frame)) == {"op": "presence", "group": "g", "scope": "room",
                                         "joins": joins, "leaves": leaves, "updates": []}
    updates = [{"connection_id": "c1", "user_id": "u1", "frontend": "fe", "meta": {"s": 1}}]
    assert presence.decode(presence_envelope("fe", "s", "g", [], [], updates).data
                           ).updates == updates
    empty = presence.decode(presence_envelope("fe", "s", "g", [], []).data)
    assert (empty.joins, empty.leaves) == ([], [])


def test_control_envelope_round_trip() -> None:
    env = decode_envelope(encode(control_envelope("fe", "c1", "join", "room", "g")))
    assert (env.origin, env.kind, env.target, env.event) == ("fe", "control",
                                                             {"connection": "c1"}, "join")
    assert json.loads(bytes(env.data)) == {"scope": "room", "group": "g"}
    assert target_of(env) == Target.connection("c1")


@pytest.mark.parametrize("body", [b"", b"garbage", b"{}", b"[1,2]", b'["fe","event"]',
                                  b'["fe","event",{},"e",null,"not-a-ts"]', b"\xff"])
def test_decode_envelope_garbage(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(body)


def test_bus_batch_round_trip_keeps_order_and_singles_stay_plain() -> None:
    from service.core.envelope import decode_bus, encode_bus

    envs = [make_envelope("fe", Target.all(), f"e{i}", raw_json({"i": i}), msg_id=i)
            for i in range(3)]
    single = encode_bus(envs[:1])
    assert single == encode(envs[0])  # one envelope travels exactly as before batching
    assert [e.event for e in decode_bus(single)] == ["e0"]
    batch = encode_bus(envs)
    assert batch.startswith(b"[[")
    back = decode_bus(batch)
    assert [(e.event, e.id, bytes(e.data)) for e in back] == [
        (f"e{i}", i, b'{"i":%d}' % i) for i in range(3)]
