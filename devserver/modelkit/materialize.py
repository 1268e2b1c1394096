"""Materialize a stored ModelKit: unpack its layers into ``unpacked/<digest>/`` once, atomically.

Backends need plain files at the Kitfile's paths. The layers are unpacked into a temporary sibling
directory and renamed into place only when every layer unpacked and every blob re-hashed to its
digest (the store's files could have been altered on disk since they were verified on the way in),
so the per-digest directory is either complete or absent, and a second call just reuses it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

from devserver.errors import CacheError, DigestMismatch
from devserver.modelkit.kitfile import Kitfile
from devserver.modelkit.layers import match_layers, parse_manifest, serving_layers
from devserver.modelkit.unpack import unpack_layer
from devserver.oci.descriptor import Descriptor
from devserver.oci.store import LocalStore

__all__ = ["materialize"]

_MARKER = ".kit-dev-layers"


class _VerifyingReader:
    """Hashes everything read through it, so a blob is checked in the same pass that unpacks it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def verify(self, descriptor: Descriptor) -> None:
        while self.read(1 << 20):  # the tar reader may stop before the blob's end
            pass
        digest = "sha256:" + self._hash.hexdigest()
        if digest != descriptor.digest or self.size != descriptor.size:
            raise DigestMismatch(
                f"cached blob {descriptor.digest} is corrupt (got {digest}, {self.size} bytes)",
                hint="remove it from the cache and pull again",
            )


def materialize(store: LocalStore, manifest_digest: str, *, layers: Literal["serving", "all"] = "serving") -> Path:
    """Unpack the ModelKit's model + parts (or every layer) and return the directory holding them."""
    target = store.unpacked_dir(manifest_digest)
    marker = target / _MARKER
    if marker.is_file() and marker.read_text() in ("all", layers):
        return target
    manifest = parse_manifest(store.read_blob(manifest_digest))
    config = Kitfile.from_config_json(store.read_blob(manifest.config.digest))
    matched = match_layers(manifest, config)
    selected = serving_layers(matched) if layers == "serving" else matched
    staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        staging.mkdir()
        for descriptor in _unique(m.descriptor for m in selected):
            if not store.has_blob(descriptor.digest):
                raise CacheError(f"layer {descriptor.digest} is not in the cache; pull the ModelKit again")
            with store.open_blob(descriptor.digest) as raw:
                reader = _VerifyingReader(raw)
                unpack_layer(reader, descriptor.media_type, staging, annotations=descriptor.annotations)  # type: ignore[arg-type]
                reader.verify(descriptor)
        (staging / _MARKER).write_text(layers)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unique(descriptors: Iterable[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for d in descriptors:
        seen.setdefault(d.digest, d)
    return list(seen.values())


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished directory into place; a concurrent materialize that won the race is fine."""
    if target.exists():  # an older, smaller materialization ("serving" when "all" was asked)
        retired = target.with_name(f".{target.name}.{secrets.token_hex(6)}.old")
        os.rename(target, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / _MARKER).is_file():
            raise
