"""Materialize a stored ModelKit: unpack its layers into ``unpacked/<digest>/`` once, atomically.

Backends need plain files at the Kitfile's paths. The layers are unpacked into a temporary sibling
directory and renamed into place only when every layer unpacked and every blob re-hashed to its
digest (the store's files could have been altered on disk since they were verified on the way in),
so the per-digest directory is either complete or absent, and a second call just reuses it.

A ModelKit whose ``model.path`` names another ModelKit is materialized together with its parents:
their model and parts land in the same directory first, as kit's unpack does. Blobs are read from a
``BlobSource``: kit-dev's store, or kit's own local storage (``devserver.oci.kitstore``), so a
ModelKit already in kit's storage is served without copying it and without the network.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from devserver.errors import CacheError, DigestMismatch, ModelKitError
from devserver.modelkit.layers import MatchedLayer, match_layers, parse_manifest, read_kitfile, serving_layers
from devserver.modelkit.unpack import unpack_layer
from devserver.oci.descriptor import Descriptor
from devserver.oci.store import BlobSource, LocalStore

__all__ = ["extract_layers", "matched_layers", "materialize"]

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
                hint="pull it again: kit-dev discards a corrupt blob and fetches it anew",
            )


def matched_layers(source: BlobSource, manifest_digest: str) -> list[MatchedLayer]:
    """Every Kitfile entry of a stored ModelKit with its layer."""
    manifest = parse_manifest(source.read_blob(manifest_digest))
    return match_layers(manifest, read_kitfile(manifest, source.read_blob(manifest.config.digest)))


def extract_layers(
    source: BlobSource, layers: Iterable[MatchedLayer], target: Path, *, overwrite: bool = False
) -> None:
    """Unpack ``layers`` into ``target``, each blob verified as it is read; legacy layers into their parent."""
    seen: set[tuple[str, str]] = set()
    for layer in layers:
        key = (layer.descriptor.digest, layer.extract_into)
        if key in seen:
            continue
        seen.add(key)
        descriptor = layer.descriptor
        if not source.has_blob(descriptor.digest):
            raise CacheError(f"layer {descriptor.digest} ({layer.kind} {layer.path}) is not in the cache",
                             hint="pull the ModelKit again")  # fmt: skip
        with source.open_blob(descriptor.digest) as raw:
            reader = _VerifyingReader(raw)
            try:
                unpack_layer(
                    reader,  # type: ignore[arg-type]
                    descriptor.media_type,
                    target / layer.extract_into,
                    annotations=layer.annotations,
                    overwrite=overwrite,
                )
            except ModelKitError:
                reader.verify(descriptor)  # a corrupt blob is the real cause: say so, so it is refetched
                raise
            reader.verify(descriptor)


def materialize(
    store: LocalStore,
    manifest_digest: str,
    *,
    layers: Literal["serving", "all"] = "serving",
    source: BlobSource | None = None,
    parents: Sequence[tuple[BlobSource, str]] = (),
) -> Path:
    """Unpack the ModelKit's model + parts (or every layer) and return the directory holding them.

    ``source`` holds the blobs (default: ``store``); ``parents`` are the (source, manifest digest) of
    the ModelKits its ``model.path`` chain names, nearest last; their model and parts come first.
    """
    source = source or store
    target = store.unpacked_dir(manifest_digest)
    marker = target / _MARKER
    if marker.is_file() and marker.read_text() in ("all", layers):
        return target
    staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        staging.mkdir()
        for parent_source, parent_digest in parents:
            extract_layers(parent_source, serving_layers(matched_layers(parent_source, parent_digest)), staging,
                           overwrite=True)  # fmt: skip
        matched = matched_layers(source, manifest_digest)
        extract_layers(source, serving_layers(matched) if layers == "serving" else matched, staging,
                       overwrite=bool(parents))  # fmt: skip
        (staging / _MARKER).write_text(layers)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
