"""What ``kit-dev list``, ``rm`` and ``prune`` see and do in the cache.

``list`` shows one row per stored reference in kit's columns. ``prune`` keeps every blob that a
stored reference reaches (manifest, config, layers; an index and its entries) and deletes the rest,
together with unpacked views whose ModelKit is gone and the symlink views made for directories;
partial downloads in ``ingest/`` stay, since they are what a later pull resumes from. ``rm`` drops a
reference and then prunes, like kit, which deletes what no other repository references.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

from devserver.errors import CacheError, KitDevError
from devserver.modelkit.layers import is_index, parse_index, parse_manifest, read_kitfile
from devserver.oci.reference import DEFAULT_REGISTRY, parse_reference
from devserver.oci.store import LocalStore

__all__ = ["ListRow", "list_rows", "prune", "remove"]


@dataclass(frozen=True)
class ListRow:
    """One line of ``kit-dev list`` (kit's REPOSITORY TAG MAINTAINER NAME SIZE DIGEST)."""

    repository: str
    tag: str
    maintainer: str
    name: str
    size: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        """kit's ``list --format json`` fields (v1.17+: size in bytes)."""
        return {
            "repo": self.repository,
            "digest": self.digest,
            "tags": [] if self.tag == "<none>" else [self.tag],
            "modelName": "" if self.name == "<none>" else self.name,
            "size": self.size,
            "author": "" if self.maintainer == "<none>" else self.maintainer,
        }


def list_rows(store: LocalStore) -> list[ListRow]:
    rows = []
    for ref_name, descriptor in store.references():
        try:
            reference = parse_reference(ref_name)
        except (KitDevError, ValueError):  # an entry another tool wrote; listing must not fail on it
            continue
        digest = descriptor.digest
        data = store.read_blob(digest) if store.has_blob(digest) else b""
        if is_index(data):
            entries = parse_index(data)
            digest = entries[0].descriptor.digest if entries else digest
            data = store.read_blob(digest) if store.has_blob(digest) else b""
        try:
            manifest = parse_manifest(data)
            kitfile = read_kitfile(manifest, store.read_blob(manifest.config.digest))
        except (KitDevError, ValueError):  # a partial or foreign entry still gets a row
            continue
        repository = reference.name.removeprefix(f"{DEFAULT_REGISTRY}/")
        package = kitfile.package
        rows.append(
            ListRow(
                repository,
                reference.tag or "<none>",
                package.authors[0] if package.authors else "<none>",
                package.name or "<none>",
                sum(layer.size for layer in manifest.layers),
                descriptor.digest,
            )
        )
    return rows


def _reachable(store: LocalStore) -> set[str]:
    keep: set[str] = set()
    pending = [d.digest for _, d in store.references()]
    while pending:
        digest = pending.pop()
        if digest in keep:
            continue
        keep.add(digest)
        if not store.has_blob(digest):
            continue
        data = store.read_blob(digest)
        if is_index(data):
            pending.extend(e.descriptor.digest for e in parse_index(data))
            continue
        try:
            doc = json.loads(data)
            manifest = parse_manifest(data) if isinstance(doc, dict) and "config" in doc else None
        except (KitDevError, ValueError):  # not a manifest: a plain blob that is itself referenced
            manifest = None
        if manifest is not None:
            keep.add(manifest.config.digest)
            keep.update(layer.digest for layer in manifest.layers)
    return keep


def prune(store: LocalStore) -> tuple[int, int]:
    """Delete unreferenced blobs and unpacked views; return (blobs removed, bytes freed)."""
    keep = _reachable(store)
    removed, freed = 0, 0
    for digest in store.blobs():
        if digest not in keep:
            path = store.blob_path(digest)
            freed += path.stat().st_size
            store.delete_blob(digest)
            removed += 1
    keep_hex = {d.removeprefix("sha256:") for d in keep}
    for view in (store.root / "unpacked").iterdir():
        if view.name not in keep_hex:
            shutil.rmtree(view, ignore_errors=True)
    return removed, freed


def remove(store: LocalStore, text: str) -> tuple[int, int]:
    """Forget a reference (or a digest) and prune what only it used."""
    reference = parse_reference(text)
    removed = store.remove_reference(reference.digest or str(reference))
    if not removed:
        raise CacheError(f"{text} is not in the kit-dev cache at {store.root}", hint="see `kit-dev list`")
    return prune(store)
