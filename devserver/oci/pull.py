"""Pull a ModelKit from a registry into the local store: manifest → config → layers → parents.

Only what is asked for is fetched: with ``layers="serving"`` the config plus the model and part
layers, never datasets, code or docs (a dev server does not need a 40 GB training set). Layers are
fetched only once the Kitfile in the config has been read and matched to the manifest. Blobs go
``--concurrency`` at a time through one thread-safe client; each is streamed, hashed and resumable
(``RegistryClient.fetch_blob``), and a transfer that fails stops the others at once
(``devserver.oci.transfers``). A blob the store already holds is re-hashed instead of fetched, and
fetched again only if it turns out corrupt. A pull that cannot fit on the disk is refused before
the first byte moves. The manifest is recorded under the reference last, once its blobs are in.

A ModelKit index is recorded as such, and the entry chosen (``index_entry``, else the first) is
pulled. A ``model.path`` that names another ModelKit is pulled too (its model and parts), following
the chain at most ``MAX_MODEL_REF_CHAIN`` deep and refusing cycles, as kit does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from devserver.errors import ModelKitError, ReferenceError_
from devserver.modelkit.kitfile import Kitfile, is_modelkit_reference
from devserver.modelkit.layers import (
    IndexEntry,
    MatchedLayer,
    ModelKitManifest,
    is_index,
    match_layers,
    parse_index,
    parse_manifest,
    read_kitfile,
    serving_layers,
)
from devserver.oci.descriptor import OCI_IMAGE_INDEX
from devserver.oci.options import RegistryOptions
from devserver.oci.reference import DEFAULT_REGISTRY, Reference, parse_reference
from devserver.oci.registry import ProgressFn, RegistryClient
from devserver.oci.store import LocalStore
from devserver.oci.transfers import BlobTransfers, format_bytes

__all__ = ["MAX_MODEL_REF_CHAIN", "PulledModelKit", "choose_index_entry", "format_bytes", "pull_modelkit"]

MAX_MODEL_REF_CHAIN = 10  # kit's MaxModelRefChain


@dataclass(frozen=True)
class PulledModelKit:
    """A ModelKit now in the store: what it is, and what this pull actually downloaded."""

    reference: Reference
    manifest_digest: str
    manifest: ModelKitManifest
    config: Kitfile
    layers: list[MatchedLayer]
    fetched: list[str]
    fetched_bytes: int = 0
    cache_hits: int = 0
    parents: list[PulledModelKit] = field(default_factory=list)  # the model.path chain, nearest first
    index: list[IndexEntry] | None = None  # the entries, when the reference named a ModelKit index


def choose_index_entry(entries: list[IndexEntry], wanted: str | None) -> IndexEntry:
    """The entry ``wanted`` names (digest, position from 0, or a label), else the first."""
    if not entries:
        raise ModelKitError("the ModelKit index lists no ModelKits")
    if wanted is None:
        return entries[0]
    for position, entry in enumerate(entries):
        names = {entry.descriptor.digest, str(position), entry.label(), *map(str, entry.metadata.values())}
        if wanted in names:
            return entry
    listing = "; ".join(f"{i}: {e.label()} ({e.descriptor.digest[:19]})" for i, e in enumerate(entries))
    raise ModelKitError(f"no entry {wanted!r} in the ModelKit index (entries: {listing})")


def pull_modelkit(
    reference: Reference,
    store: LocalStore,
    *,
    client: RegistryClient | None = None,
    options: RegistryOptions | None = None,
    layers: Literal["serving", "all"] = "all",
    progress: ProgressFn | None = None,
    index_entry: str | None = None,
    _chain: Sequence[str] = (),
) -> PulledModelKit:
    """Fetch ``reference`` into ``store``; ``client`` defaults to one for the reference's registry."""
    if reference.registry == DEFAULT_REGISTRY:
        raise ReferenceError_(
            f"registry is required when pulling: {reference} names no registry ('localhost' is kit's local-only name)",
            hint="use registry/repository:tag, e.g. localhost:5000/org/model:1",
        )
    options = options or RegistryOptions()
    own_client = client is None
    client = client or RegistryClient(reference.registry, options=options)
    try:
        data, media_type, digest = client.get_manifest(reference.repository, reference.tag_or_digest)
        entries = None
        if is_index(data, media_type):
            entries = parse_index(data)
            chosen = choose_index_entry(entries, index_entry)
            store.put_manifest(reference, data, OCI_IMAGE_INDEX)
            reference = reference.with_digest(chosen.descriptor.digest)
            data, media_type, digest = client.get_manifest(reference.repository, chosen.descriptor.digest)
        manifest = parse_manifest(data)
        with BlobTransfers(client, reference, store, progress, options.concurrency) as job:
            job.start([manifest.config])
            job.wait()
            config = read_kitfile(manifest, store.read_blob(manifest.config.digest))
            matched = match_layers(manifest, config)
            job.start([m.descriptor for m in serving_layers(matched)] if layers == "serving" else manifest.layers)
            job.wait()
        store.put_manifest(reference, data)
        parents = _pull_parents(config, store, options, progress, [*_chain, str(reference), digest])
        return PulledModelKit(
            reference, digest, manifest, config, matched, job.fetched, job.fetched_bytes, job.hits, parents, entries
        )
    finally:
        if own_client:
            client.close()


def _pull_parents(
    config: Kitfile, store: LocalStore, options: RegistryOptions, progress: ProgressFn | None, chain: list[str]
) -> list[PulledModelKit]:
    if config.model is None or not is_modelkit_reference(config.model.path):
        return []
    parent = parse_reference(config.model.path)
    names = chain[0::2]
    if str(parent) in names or (parent.digest and parent.digest in chain):
        cycle = " -> ".join([*names, str(parent)])
        raise ModelKitError(f"ModelKit references form a cycle: {cycle}")
    if len(names) >= MAX_MODEL_REF_CHAIN:
        raise ModelKitError(f"ModelKit reference chain is longer than {MAX_MODEL_REF_CHAIN}: {' -> '.join(names)}")
    pulled = pull_modelkit(parent, store, options=options, layers="serving", progress=progress, _chain=chain)
    return [pulled, *pulled.parents]
