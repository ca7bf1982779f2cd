"""A small Server-Sent Events client for the tests: one reader thread parses the stream
into events (``event``, ``id``, parsed ``data``) and counts comment lines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

WAIT_S = 20.0


class SseClient:
    """``GET url`` as a stream; events arrive in ``events`` as they are parsed."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, headers=headers or {}, stream=True, timeout=30)
        self.events: list[dict[str, Any]] = []
        self.comments = 0
        self.retry: int | None = None
        self.ended = False
        self._lock = threading.Lock()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, Any] = {}
        data: list[str] = []
        try:
            for raw in self.response.iter_lines(chunk_size=1, decode_unicode=False):
                line = raw.decode()
                if not line:
                    if data or fields:
                        with self._lock:
                            self.events.append({**fields, "data": json.loads("\n".join(data))})
                    fields, data = {}, []
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    elif name == "id":
                        fields["id"] = int(value)
                    elif name == "retry":
                        self.retry = int(value)
                    else:
                        fields[name] = value
        except (requests.RequestException, OSError, ValueError, AttributeError):
            pass  # closed by the test (AttributeError: closed under the reader)
        self.ended = True

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = WAIT_S) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = list(self.events)
            if pred(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"condition not met; events so far: {got[-5:]}")

    def close(self) -> None:
        self.response.close()
