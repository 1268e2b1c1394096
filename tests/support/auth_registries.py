"""docker-registry variants with authentication and TLS, built on ``RegistryProcess``.

``RegistryProcess`` picks its port inside ``start()``, but ``http.addr`` and ``http.tls`` live in the
same config block, so a TLS registry cannot be expressed through ``extra_config``: ``TLSRegistryProcess``
writes its own ``http`` block. Token auth needs no port of its own and goes through ``extra_config``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import bcrypt
import httpx

from tests.support.ports import free_port, wait_http
from tests.support.registry import RegistryProcess
from tests.support.tls import TestPKI
from tests.support.token_service import ISSUER, SERVICE

BCRYPT_ROUNDS = 4  # docker-registry checks bcrypt on every request: cost 12 would add ~200 ms each


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file of bcrypt entries, the only hash type docker-registry 2.8 accepts."""
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()}" for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def htpasswd_config(htpasswd: Path) -> dict[str, Any]:
    return {"auth": {"htpasswd": {"realm": "kit-dev-test", "path": str(htpasswd)}}}


def token_auth_config(realm: str, rootcertbundle: Path) -> dict[str, Any]:
    return {
        "auth": {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(rootcertbundle)}}
    }


@dataclass
class TLSRegistryProcess(RegistryProcess):
    """A registry serving HTTPS with the test PKI's server certificate; optionally demanding client certs."""

    pki: TestPKI | None = None
    require_client_cert: bool = False
    tls: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def start(self) -> TLSRegistryProcess:
        assert self.pki is not None, "TLSRegistryProcess needs a pki"
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed: run `make test` (or scripts/setup.sh --test)")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = {"certificate": str(self.pki.server_cert), "key": str(self.pki.server_key)}
        if self.require_client_cert:
            self.tls["clientcas"] = [str(self.pki.ca_cert)]
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "kit-dev-test-upload-secret", "tls": self.tls},
            **self.extra_config,
        }
        config_path = self.root / "config.yml"
        config_path.write_text(json.dumps(config))
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=log)
        verify = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if self.require_client_cert:
            verify.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        wait_http(f"{self.url}/v2/", timeout=15, ok=(200, 401), verify=verify)
        return self


def upload_blob(client: httpx.Client, repository: str, data: bytes, *, stream: bool = False) -> str:
    """POST + monolithic PUT, as kit does; ``stream=True`` sends the body from a generator, like the client."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, (started.status_code, started.text)
    # the Location carries a signed _state query: httpx's params= would replace it, so append by hand
    location = urljoin(str(started.url), started.headers["Location"])
    location += ("&" if "?" in location else "?") + f"digest={digest}"
    body: bytes | Iterator[bytes] = iter([data]) if stream else data
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    done = client.put(location, content=body, headers=headers)
    assert done.status_code == 201, (done.status_code, done.text)
    return digest
