"""Free loopback ports for services the tests start."""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0, ok: tuple[int, ...] = (200,), verify: object = True) -> None:
    """Poll ``url`` until it answers one of ``ok``; raise with the last cause after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0, verify=verify)  # type: ignore[arg-type]
            if response.status_code in ok:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")
