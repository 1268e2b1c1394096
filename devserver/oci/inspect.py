"""``kit-dev inspect``: a ModelKit's manifest and Kitfile as JSON, shaped like ``kit inspect``.

kit prints ``{"digest", "cliVersion", "kitfile", "manifest"}``; kit-dev adds ``metadata`` when an
older-dialect Kitfile carried some, and, for a ModelKit index, lists its entries instead (or shows
the one ``--index-entry`` names). The cache and kit's storage are read first; ``--remote``, or a
reference found in neither, asks the registry for the manifest and config only.
"""

from __future__ import annotations

import json
from typing import Any

from devserver.errors import CacheError
from devserver.modelkit import mediatypes
from devserver.modelkit.layers import is_index, parse_index, parse_manifest, read_kitfile
from devserver.oci.kitstore import KitStorage
from devserver.oci.options import RegistryOptions
from devserver.oci.pull import choose_index_entry
from devserver.oci.reference import DEFAULT_REGISTRY, Reference, parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore

__all__ = ["inspect_modelkit"]


class _Remote:
    """Manifests and blobs straight from the registry, read into memory (manifests and configs only)."""

    def __init__(self, reference: Reference, options: RegistryOptions) -> None:
        self.reference = reference
        self.client = RegistryClient(reference.registry, options=options)

    def manifest(self, tag_or_digest: str) -> tuple[str, bytes]:
        data, _, digest = self.client.get_manifest(self.reference.repository, tag_or_digest)
        return digest, data

    def blob(self, digest: str) -> bytes:
        return self.client.read_small_blob(self.reference.repository, digest)


def inspect_modelkit(
    text: str, store: LocalStore, options: RegistryOptions, *, remote: bool = False, index_entry: str | None = None
) -> dict[str, Any]:
    reference = parse_reference(text)
    if not remote:
        for source in (store, KitStorage()):
            found = source.resolve(reference)
            if found is not None:
                return _document(found[0], found[1], source.read_blob, index_entry)
        if reference.registry == DEFAULT_REGISTRY:
            raise CacheError(f"{text} is not in the kit-dev cache or kit's storage")
    if reference.registry == DEFAULT_REGISTRY:
        raise CacheError(f"can not check remote: {text} does not contain registry")
    far = _Remote(reference, options)
    try:
        digest, data = far.manifest(reference.tag_or_digest)
        if is_index(data) and index_entry is not None:
            chosen = choose_index_entry(parse_index(data), index_entry)
            digest, data = far.manifest(chosen.descriptor.digest)
        return _document(digest, data, far.blob, None)
    finally:
        far.client.close()


def _document(digest: str, data: bytes, read: Any, index_entry: str | None) -> dict[str, Any]:
    if is_index(data):
        entries = parse_index(data)
        if index_entry is None:
            return {
                "digest": digest,
                "index": json.loads(data),
                "entries": [
                    {"position": i, "digest": e.descriptor.digest, "label": e.label(), "modelMetadata": e.metadata}
                    for i, e in enumerate(entries)
                ],
            }
        digest = choose_index_entry(entries, index_entry).descriptor.digest
        data = read(digest)
    manifest = parse_manifest(data)
    kitfile = read_kitfile(manifest, read(manifest.config.digest))
    document: dict[str, Any] = {
        "digest": digest,
        "cliVersion": manifest.annotations.get(mediatypes.ANNOTATION_CLI_VERSION, "unknown"),
        "kitfile": json.loads(kitfile.to_config_json()),
        "manifest": json.loads(data),
    }
    raw_metadata = manifest.annotations.get(mediatypes.ANNOTATION_METADATA)
    if raw_metadata:
        document["metadata"] = json.loads(raw_metadata)
    return document
