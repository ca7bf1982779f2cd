"""gunicorn's internals, touched for speed in this one module (pinned by
``tests/unit/test_internals.py``, which compares the bytes on the wire with gunicorn's own).

Two costs of every small HTTP response (the API's JSON answers, the probes):

* gunicorn writes the status line and headers with one ``sendall`` and the body with
  another: two system calls and two trips through gevent's socket wrapper where one
  does. When the first body write is the whole body of a response of known length (what
  Flask's JSON responses are), the two are joined into one write.
* ``Date:`` is formatted from scratch (``email.utils.formatdate``) for every response;
  it has one-second resolution, so it is formatted once a second.

Everything else (chunked, streamed, HEAD and 204/304, sendfile, upgrades) takes
gunicorn's own path unchanged.
"""

from __future__ import annotations

import time
from typing import Any

_MARK = "_herald_speed"


def install() -> None:
    """Patch gunicorn's ``Response.write`` and ``util.http_date`` (idempotent)."""
    from gunicorn import util
    from gunicorn.http import wsgi

    response: Any = wsgi.Response
    if getattr(response, _MARK, False):
        return
    original_write = response.write
    format_date = util.http_date
    cached: list[Any] = [None, ""]

    def http_date(timestamp: float | None = None) -> str:
        if timestamp is not None:
            return str(format_date(timestamp))
        now = int(time.time())
        if cached[0] != now:
            cached[0], cached[1] = now, format_date(now)
        return str(cached[1])

    def write(self: Any, arg: Any) -> None:
        if (not self.headers_sent and type(arg) is bytes and not self.chunked
                and self.response_length == len(arg) and arg and not self._omits_body):
            lines = self.default_headers()
            lines.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])  # noqa: UP031 - gunicorn's own formatting
            head = ("%s\r\n" % "".join(lines)).encode("latin-1")  # noqa: UP031
            self.headers_sent = True
            self.sent += len(arg)
            util.write(self.sock, head + arg)
            return
        original_write(self, arg)

    util.http_date = http_date
    response.write = write
    setattr(response, _MARK, True)
