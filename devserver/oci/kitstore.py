"""kit's own local storage, read-only: a ModelKit kit already pulled or packed is served from there.

``$KITOPS_HOME/storage`` (default ``~/.local/share/kitops/storage`` on Linux) is one OCI image layout
shared by all repositories, plus per repository ``<base64url(registry/repo)>-index.json`` (an index
of its manifests) and ``-tags.json`` (tag → manifest descriptor). base64url keeps its padding.
kit-dev never writes there; it reads the blobs in place, verifying each as it unpacks it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from devserver.errors import CacheError
from devserver.oci.descriptor import Descriptor, digest_hex
from devserver.oci.reference import Reference

__all__ = ["KitStorage", "kit_storage_dir", "repo_file_prefix"]


def kit_storage_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$KITOPS_HOME/storage``, with kit's per-platform default for KITOPS_HOME."""
    env = os.environ if env is None else env
    if env.get("KITOPS_HOME"):
        return Path(env["KITOPS_HOME"]) / "storage"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "kitops" / "storage"
    data = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return data / "kitops" / "storage"


def repo_file_prefix(reference: Reference) -> str:
    """kit's file-name key for a repository: base64url (with padding) of ``registry/repository``."""
    return base64.urlsafe_b64encode(reference.name.encode()).decode()


class KitStorage:
    """Read access to kit's storage; every method is safe to call when it does not exist."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else kit_storage_dir()

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except OSError as exc:
            raise CacheError(f"blob {digest} is not readable in kit's storage {self.root}: {exc}") from exc

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return self.blob_path(digest).open("rb")
        except OSError as exc:
            raise CacheError(f"blob {digest} is not readable in kit's storage {self.root}: {exc}") from exc

    def resolve(self, reference: Reference) -> tuple[str, bytes] | None:
        """The manifest kit stores for ``reference`` (tag via ``-tags.json``, digest via ``-index.json``)."""
        prefix = repo_file_prefix(reference)
        if reference.digest:
            index = _read_json(self.root / f"{prefix}-index.json") or {}
            known = {m.get("digest") for m in index.get("manifests") or [] if isinstance(m, dict)}
            digest: str | None = reference.digest if reference.digest in known else None
        else:
            tags = _read_json(self.root / f"{prefix}-tags.json") or {}
            entry = tags.get(reference.tag or "latest")
            digest = Descriptor.from_json(entry).digest if isinstance(entry, dict) else None
        if digest is None or not self.has_blob(digest):
            return None
        return digest, self.read_blob(digest)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
