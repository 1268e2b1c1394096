"""A tiny real HTTP server on loopback that answers the /v2/ pull API from a fixed table.

Used to serve bytes a real registry never would (a blob that does not match its digest), over a
real socket so the client's streaming and verification paths run exactly as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

from tests.support.http_server import serve_in_thread


@contextmanager
def static_registry(routes: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    """Serve ``routes`` (URL path → (body, content type)); yields the ``127.0.0.1:PORT`` host."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            route = routes.get(self.path)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, content_type = route
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_in_thread(Handler) as host:
        yield host
