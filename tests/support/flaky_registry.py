"""A real HTTP server on loopback that speaks the /v2/ pull API and misbehaves on purpose.

* ``cut``: digests whose first full GET sends the headers and half of the body, then closes the
  connection (a dropped link mid-blob); later requests with ``Range: bytes=N-`` get a 206;
* ``fail_first``: paths answered 503 that many times before they work (a registry having a bad minute);
* ``slow``: digests whose body trickles out 64 KiB at a time, this many seconds apart (a slow link),
  until the client hangs up.

Every request's path and Range header is recorded, so a test can see that a pull resumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.http_server import serve_in_thread


@dataclass
class FlakyRoutes:
    routes: dict[str, tuple[bytes, str]]
    cut: set[str] = field(default_factory=set)
    fail_first: dict[str, int] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)


@contextmanager
def flaky_registry(spec: FlakyRoutes) -> Iterator[str]:
    """Serve ``spec``; yields the ``127.0.0.1:PORT`` host."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with lock:
                spec.seen.append((self.path, self.headers.get("Range")))
                failures = spec.fail_first.get(self.path, 0)
                if failures:
                    spec.fail_first[self.path] = failures - 1
            if failures:
                self._send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}', "application/json")
                return
            route = spec.routes.get(self.path)
            if route is None:
                self._send(404, b"", "text/plain")
                return
            body, content_type = route
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])
                return
            digest = self.path.rsplit("/", 1)[-1]
            if digest in spec.cut:
                spec.cut.discard(digest)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(200, body, content_type, pause=spec.slow.get(digest, 0.0))

        def _send(self, status: int, body: bytes, content_type: str, pause: float = 0.0) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not pause:
                self.wfile.write(body)
                return
            try:
                for start in range(0, len(body), 64 << 10):
                    self.wfile.write(body[start : start + (64 << 10)])
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up on this blob

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_in_thread(Handler) as host:
        yield host
