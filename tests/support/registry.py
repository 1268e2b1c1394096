"""A real CNCF distribution registry (Debian's ``docker-registry``) on a free loopback port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, wait_http
from tests.support.processes import end_process

_BLOB_GET = re.compile(
    r'"GET /v2/(?P<repo>[^ ]+)/blobs/(?P<digest>sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (?P<status>\d{3})'
)


@dataclass
class RegistryProcess:
    """One registry process; ``blob_gets`` reads its access log, so counts are what it really served."""

    root: Path
    extra_config: dict = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def start(self) -> RegistryProcess:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed: run `make test` (or scripts/setup.sh --test)")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "kit-dev-test-upload-secret"},
            **self.extra_config,
        }
        config_path = self.root / "config.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=log)
        wait_http(f"{self.url}/v2/", timeout=15, ok=(200, 401))
        return self

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process, grace=5)
            self.process = None

    def blob_gets(self) -> list[str]:
        """Digests of every blob GET the registry answered 200 or 206, in order."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [m["digest"] for m in _BLOB_GET.finditer(text) if m["status"] in ("200", "206")]
