"""A real Prometheus (Debian's ``prometheus`` 2.42) on a free loopback port, scraping given targets.

Debian's defaults (``0.0.0.0:9090``, ``/etc/prometheus``, ``/var/lib/prometheus``) are all overridden:
loopback only, a fresh TSDB per run (it holds a lock). Prometheus 2.42 applies discovered targets on
a 5 s tick no flag changes, so the first sample lands ~5 s after start; ``wait_for`` polls the HTTP
API until a query has data instead of sleeping.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port, wait_http
from tests.support.processes import end_process


@dataclass
class PrometheusProcess:
    root: Path
    targets: list[str]  # host:port pairs, scraped every second at /metrics
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusProcess:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make test` (or scripts/setup.sh --test)")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "kit-dev", "static_configs": [{"targets": self.targets}]}],
        }
        config_path = self.root / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        args = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.root / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)
        wait_http(f"{self.url}/-/ready", timeout=30)
        return self

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process, grace=10)
            self.process = None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a PromQL error, which a dashboard must not have)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 30.0, *, until: Any = None) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns data (and ``until(result)`` holds, when given)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result and (until is None or until(result)):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} had no (matching) data after {timeout}s: {result}")
            time.sleep(0.25)
