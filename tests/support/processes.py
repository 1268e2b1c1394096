"""Ending the service processes the tests start."""

from __future__ import annotations

import subprocess


def end_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped, so no zombie outlives a test."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
