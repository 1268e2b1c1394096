"""Blob bodies and manifests over ``http.client``: the hot loop of a pull, at close to curl's speed.

httpx parses a response body through h11 in 64 KiB events, which caps one Python process at about
a quarter of what the loopback link and the disk can do. ``http.client`` hands the socket to
``readinto`` a large buffer, and hashing, socket reads and file writes all release the GIL, so
several blobs in flight on threads keep the disk busy. Manifests come this way too, so that a pull
from a registry that asks for no credentials never imports httpx (~0.15 s of a cold pull's start).
Everything else — the auth challenge flow, uploads, error mapping, retries — stays on httpx: this
module only GETs with the ``Authorization`` header httpx's flow already earned, and raises
``Fallback`` for any answer it does not handle (401, 404, 5xx, …) so the caller repeats the request
through httpx.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Callable, Iterator
from email.message import Message
from urllib.parse import urljoin, urlsplit

__all__ = ["CHUNK", "Dropped", "Fallback", "Unreachable", "get_blob", "get_document"]

CHUNK = 1 << 20  # read and hashed whole; written in 64 KiB pieces (store.Download.write)
MAX_REDIRECTS = 5


class Fallback(Exception):
    """An answer this path does not handle; nothing was consumed, so httpx can ask again."""


class Dropped(Exception):
    """The connection broke after the response started: resume from the bytes already written."""


class Unreachable(Exception):
    """The connection could not be made at all."""


def get_blob(
    url: str,
    headers: dict[str, str],
    *,
    context: ssl.SSLContext | None,
    connect_timeout: float,
    read_timeout: float,
    offset: int,
    on_start: Callable[[bool], None],
    write: Callable[[memoryview], None],
) -> int:
    """GET ``url`` (from ``offset`` via Range), feed the body to ``write`` in ``CHUNK`` pieces; bytes received.

    ``on_start(resumed)`` is called once the status is known, with whether the server honoured the
    Range (206 starting at ``offset``); a 200 to a Range request means "from the start".
    """
    request_headers = dict(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    with _response(url, request_headers, context, connect_timeout, read_timeout, (200, 206)) as response:
        if response.status == 206:
            content_range = response.getheader("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise Fallback(f"unexpected Content-Range {content_range!r}")
        on_start(response.status == 206)
        return _drain(response, write)


def get_document(
    url: str,
    headers: dict[str, str],
    *,
    context: ssl.SSLContext | None,
    connect_timeout: float,
    read_timeout: float,
    limit: int,
) -> tuple[bytes, Message]:
    """GET a small body (a manifest) whole: at most ``limit + 1`` bytes, so the caller sees an oversize one.

    Only a 200 is handled; a 401 goes back to httpx, whose auth flow answers the challenge.
    """
    with _response(url, dict(headers), context, connect_timeout, read_timeout, (200,)) as response:
        try:
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise Dropped(f"{type(exc).__name__}: {exc}") from exc
        return body, response.headers


@contextlib.contextmanager
def _response(
    url: str,
    headers: dict[str, str],
    context: ssl.SSLContext | None,
    connect_timeout: float,
    read_timeout: float,
    statuses: tuple[int, ...],
) -> Iterator[http.client.HTTPResponse]:
    """The response to GET ``url`` after redirects, if its status is one of ``statuses``; else Fallback."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        connection = _connect(parts.scheme, parts.netloc, context, connect_timeout)
        try:
            try:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                connection.request("GET", target, headers=headers)
                connection.sock.settimeout(read_timeout)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Dropped(f"{type(exc).__name__}: {exc}") from exc
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                next_url = urljoin(url, response.getheader("Location", ""))
                if urlsplit(next_url).netloc != parts.netloc:
                    headers.pop("Authorization", None)  # never hand a registry token to a CDN
                url = next_url
                continue
            if response.status not in statuses:
                raise Fallback(f"HTTP {response.status}")
            yield response
            return
        finally:
            connection.close()
    raise Fallback("too many redirects")


def _connect(scheme: str, netloc: str, context: ssl.SSLContext | None, timeout: float) -> http.client.HTTPConnection:
    try:
        if scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(netloc, timeout=timeout)
        connection.connect()
    except ssl.SSLError:
        raise Fallback("TLS handshake failed") from None  # httpx repeats it and names the TLS fix
    except (TimeoutError, OSError) as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
    return connection


def _drain(response: http.client.HTTPResponse, write: Callable[[memoryview], None]) -> int:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    expected = response.length
    received = 0
    try:
        while n := response.readinto(view):
            write(view[:n])
            received += n
    except (OSError, http.client.HTTPException) as exc:
        raise Dropped(f"{type(exc).__name__}: {exc}") from exc
    if expected is not None and received < expected:
        raise Dropped(f"connection closed after {received} of {expected} bytes")
    return received
