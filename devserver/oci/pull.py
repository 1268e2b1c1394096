"""Pull a ModelKit from a registry into the local store: manifest → config → layers.

Only what is asked for is fetched: with ``layers="serving"`` the config plus the model and part
layers, never datasets, code or docs (a dev server does not need a 40 GB training set). Blobs the
store already holds are not requested again, so a second pull costs one manifest request. The
manifest is recorded under the reference last, once its blobs are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from devserver.errors import ModelKitError, ReferenceError_
from devserver.modelkit.kitfile import Kitfile
from devserver.modelkit.layers import MatchedLayer, ModelKitManifest, match_layers, parse_manifest, serving_layers
from devserver.oci.descriptor import OCI_IMAGE_INDEX, Descriptor
from devserver.oci.reference import DEFAULT_REGISTRY, Reference
from devserver.oci.registry import ProgressFn, RegistryClient
from devserver.oci.store import LocalStore

__all__ = ["PulledModelKit", "pull_modelkit"]


@dataclass(frozen=True)
class PulledModelKit:
    """A ModelKit now in the store: what it is, and which blobs this pull actually downloaded."""

    reference: Reference
    manifest_digest: str
    manifest: ModelKitManifest
    config: Kitfile
    layers: list[MatchedLayer]
    fetched: list[str]


def pull_modelkit(
    reference: Reference,
    store: LocalStore,
    *,
    client: RegistryClient | None = None,
    layers: Literal["serving", "all"] = "all",
    progress: ProgressFn | None = None,
) -> PulledModelKit:
    """Fetch ``reference`` into ``store``; ``client`` defaults to one for the reference's registry."""
    if reference.registry == DEFAULT_REGISTRY:
        raise ReferenceError_(
            f"{reference} names no registry; kit treats 'localhost' as local-only",
            hint="use registry/repository:tag, e.g. localhost:5000/org/model:1",
        )
    own_client = client is None
    client = client or RegistryClient(reference.registry)
    try:
        data, media_type, digest = client.get_manifest(reference.repository, reference.tag_or_digest)
        if media_type == OCI_IMAGE_INDEX:
            raise ModelKitError(f"{reference} is an image index; kit-dev needs a single ModelKit manifest")
        manifest = parse_manifest(data)
        fetched: list[str] = []
        _fetch(client, reference, manifest.config, store, progress, fetched)
        config = Kitfile.from_config_json(store.read_blob(manifest.config.digest))
        matched = match_layers(manifest, config)
        wanted = [m.descriptor for m in serving_layers(matched)] if layers == "serving" else manifest.layers
        for descriptor in wanted:
            _fetch(client, reference, descriptor, store, progress, fetched)
        store.put_manifest(reference, data)
        return PulledModelKit(reference, digest, manifest, config, matched, fetched)
    finally:
        if own_client:
            client.close()


def _fetch(
    client: RegistryClient,
    reference: Reference,
    descriptor: Descriptor,
    store: LocalStore,
    progress: ProgressFn | None,
    fetched: list[str],
) -> None:
    if descriptor.digest in fetched:
        return
    if client.fetch_blob(reference.repository, descriptor, store, progress=progress):
        fetched.append(descriptor.digest)
