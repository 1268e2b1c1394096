"""The background server: start it detached, wait until it is ready, stop it, show its state and log.

``kit dev`` returns before its server is ready; kit-dev waits for ``/health`` to answer 200, because a
command that returns is a promise that the next ``curl`` works. If the server dies while starting, the
last error line of its log is what the user sees; if it answers that its model failed to load, it is
stopped and that error is what the user sees, at once rather than after ``--wait-timeout``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devserver.errors import KitDevError, UsageError

ERROR_PREFIX = "kit-dev: error:"


@dataclass(frozen=True)
class RunState:
    """Files of the one background server per cache directory."""

    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "server.pid"

    @property
    def info_file(self) -> Path:
        return self.run_dir / "server.json"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "server.log"

    def running_pid(self) -> int | None:
        """The server's PID if its process is alive; a stale PID file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _alive(pid):
            return pid
        self.clear()
        return None

    def info(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    def clear(self) -> None:
        for path in (self.pid_file, self.info_file):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers signal 0; reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def last_error_line(log_file: Path) -> str:
    """The last ``kit-dev: error:`` line of the log, else uvicorn's last ``ERROR:`` line (a port in
    use), else its last non-empty line."""
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "the server exited before writing a log"
    for prefix in (ERROR_PREFIX, "ERROR:"):
        for line in reversed(lines):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return lines[-1] if lines else "the server exited without a message"


def start_background(state: RunState, argv: list[str], url: str, *, wait_timeout: float) -> int:
    """Run ``kit-dev start ... --foreground`` detached; return its PID once ``/health`` says 200."""
    pid = state.running_pid()
    if pid is not None:
        where = state.info().get("url", "an unknown address")
        raise UsageError(
            f"a kit-dev server (PID {pid}) is already running at {where}", hint="stop it with `kit-dev stop`"
        )
    state.run_dir.mkdir(parents=True, exist_ok=True)
    with state.log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devserver.cli", *argv, "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state.pid_file.write_text(f"{process.pid}\n")
    state.info_file.write_text(json.dumps({"url": url, "pid": process.pid, "started": time.time()}))
    deadline = time.monotonic() + wait_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            state.clear()
            raise KitDevError(
                f"the server exited while starting: {last_error_line(state.log_file)}", hint="see `kit-dev logs`"
            )
        health = _health(url)
        if health is not None and health[0] == 200:
            return process.pid
        if health is not None and health[1].get("status") == "error":  # up, but the model failed to load
            process.terminate()
            process.wait(timeout=30)
            state.clear()
            raise KitDevError(f"the model failed to load: {health[1].get('error')}", hint="see `kit-dev logs`")
        time.sleep(0.2)
    raise KitDevError(
        f"the server did not become ready within {wait_timeout:.0f}s (PID {process.pid} still running)",
        hint="see `kit-dev logs`, or raise --wait-timeout",
    )


def _health(url: str) -> tuple[int, dict[str, Any]] | None:
    """``/health``'s status code and JSON body, or None while nothing answers."""
    import httpx  # here, not at the top: every CLI command imports this module, few ask for /health

    try:
        response = httpx.get(f"{url}/health", timeout=2.0)
    except httpx.HTTPError:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body if isinstance(body, dict) else {}


def stop(state: RunState, *, timeout: float = 20.0) -> int:
    """Interrupt the server (SIGINT, as ``kit dev stop`` does), then terminate/kill if it lingers."""
    pid = state.running_pid()
    if pid is None:
        raise UsageError("no kit-dev server is running", hint="start one with `kit-dev start`")
    for sig, grace in ((signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if not _alive(pid):
            break
    state.clear()
    return pid


def status(state: RunState) -> dict[str, object]:
    pid = state.running_pid()
    if pid is None:
        return {"running": False}
    url = state.info().get("url", "")
    answer = _health(url) if url else None
    health = {200: "ready", 503: "loading"}.get(answer[0] if answer else 0, "not answering")
    return {"running": True, "pid": pid, "url": url, "health": health}


def follow(state: RunState, *, follow_: bool, poll: float = 0.5) -> Iterator[str]:
    """Lines of the server log; with ``follow_`` keep reading until the server stops."""
    try:
        handle = state.log_file.open(errors="replace")
    except OSError as exc:
        raise UsageError("no server log yet", hint="start a server with `kit-dev start`") from exc
    with handle:
        while True:
            line = handle.readline()
            if line:
                yield line.rstrip("\n")
                continue
            if not follow_ or state.running_pid() is None:
                return
            time.sleep(poll)
