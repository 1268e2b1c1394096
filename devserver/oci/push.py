"""Push a stored ModelKit to a registry: blobs first (skipping those it has), then the manifest."""

from __future__ import annotations

from devserver.errors import CacheError, ReferenceError_
from devserver.modelkit.layers import parse_manifest
from devserver.oci.descriptor import OCI_IMAGE_MANIFEST
from devserver.oci.reference import DEFAULT_REGISTRY, Reference
from devserver.oci.registry import ProgressFn, RegistryClient
from devserver.oci.store import LocalStore

__all__ = ["push_modelkit"]


def push_modelkit(
    reference: Reference,
    store: LocalStore,
    *,
    client: RegistryClient | None = None,
    source: Reference | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Upload the ModelKit stored as ``source`` (default: ``reference``) to ``reference``; return its digest."""
    if reference.registry == DEFAULT_REGISTRY:
        raise ReferenceError_(f"{reference} names no registry; cannot push to kit's local-only 'localhost'")
    resolved = store.resolve(source or reference)
    if resolved is None:
        raise CacheError(f"{source or reference} is not in the cache at {store.root}")
    digest, data = resolved
    manifest = parse_manifest(data)
    own_client = client is None
    client = client or RegistryClient(reference.registry)
    try:
        for descriptor in [*manifest.layers, manifest.config]:
            if not store.has_blob(descriptor.digest):
                raise CacheError(
                    f"blob {descriptor.digest} of {source or reference} is not in the cache",
                    hint="pull it with all layers before pushing",
                )
            client.push_blob(reference.repository, store.blob_path(descriptor.digest), descriptor, progress=progress)
        client.put_manifest(reference.repository, reference.tag or digest, data, OCI_IMAGE_MANIFEST)
    finally:
        if own_client:
            client.close()
    return digest
