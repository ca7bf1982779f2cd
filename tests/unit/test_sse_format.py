"""SSE formatting of the hub's WebSocket frames (service/delivery/sse.py)."""

from __future__ import annotations

import json

from service.core.envelope import encode, ws_text_frame
from service.delivery.sse import SseFormat, sse_event, ws_payloads


def test_frames_of_every_length_class_are_split_back() -> None:
    payloads = [b"x" * 5, b"y" * 300, b"z" * 70_000]
    chunk = b"".join(ws_text_frame(p) for p in payloads)
    assert ws_payloads(chunk) == payloads


def test_an_event_frame_names_its_event_and_log_id() -> None:
    frame = encode({"op": "event", "event": "said", "id": 42, "data": {"a": 1}})
    assert sse_event(frame) == b"event: said\nid: 42\ndata: " + frame + b"\n\n"


def test_other_frames_are_named_by_op_and_take_an_explicit_id() -> None:
    frame = encode({"op": "welcome", "id": 9})
    assert sse_event(frame, 7) == b"event: welcome\nid: 7\ndata: " + frame + b"\n\n"
    assert b"id:" not in sse_event(encode({"op": "presence", "id": 3}))


def test_newlines_in_a_publishers_json_become_data_lines_that_join_back() -> None:
    frame = b'{"op":"event","event":"e","data":{\r\n "a":\r1,\n"b":2}}'
    out = sse_event(frame).decode()
    lines = [ln[len("data: "):] for ln in out.split("\n") if ln.startswith("data: ")]
    assert len(lines) == 4 and "\r" not in out
    assert json.loads("\n".join(lines))["data"] == {"a": 1, "b": 2}


def test_one_fan_out_is_converted_once() -> None:
    fmt = SseFormat()
    chunk = ws_text_frame(encode({"op": "event", "event": "e"}))
    first = fmt(chunk)
    assert fmt(chunk) is first
    assert fmt(ws_text_frame(encode({"op": "event", "event": "f"}))) != first
