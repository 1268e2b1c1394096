"""How to reach a registry: kit's network flags, gathered once so every command passes them the same way.

The CLI fills this from ``--plain-http``, ``--tls-verify``, ``--tls-cert``, ``--cert``/``--key`` and
``--concurrency``; library callers that do not care get kit's defaults (HTTPS, verified, five
transfers in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_CONCURRENCY", "RegistryOptions"]

DEFAULT_CONCURRENCY = 5  # kit's --concurrency default


@dataclass(frozen=True)
class RegistryOptions:
    """Network settings for one command; ``plain_http=None`` means "plain only for loopback registries"."""

    plain_http: bool | None = None
    tls_verify: bool = True
    ca_files: tuple[Path, ...] = ()
    client_cert: Path | None = None
    client_key: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
