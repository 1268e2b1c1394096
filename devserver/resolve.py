"""Turn what the user typed (a directory or a ModelKit reference) into files on disk and a Kitfile.

Where a reference is looked for, in order:

1. kit-dev's cache. A reference by digest is used as is, no network. A tag is checked against the
   registry (one manifest request) so a moved tag is noticed; if the registry is unreachable, the
   cached ModelKit is served with a warning instead of failing.
2. kit's own local storage (``$KITOPS_HOME/storage``): served from there, read in place, no network.
3. The registry: ``start`` fetches only what serving needs (config, model, parts), never datasets,
   code or docs; ``kit-dev pull`` fetches everything.

A ``model.path`` that names another ModelKit is resolved the same way, recursively (at most 10
deep, no cycles); the parents' model and parts are unpacked beside the child's files and the Kitfiles
merged as kit merges them (the parent's path wins, parts accumulate, the child's descriptive fields
win). A corrupt blob found while unpacking is discarded and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from devserver.errors import DigestMismatch, KitfileError, ModelKitError, RegistryUnreachable, UsageError
from devserver.modelkit import mediatypes
from devserver.modelkit.dialect import load_any_kitfile
from devserver.modelkit.filters import check_existing_kitfile, kitfile_yaml, parse_filters, select_layers, wants_kitfile
from devserver.modelkit.kitfile import Kitfile, find_kitfile, is_modelkit_reference
from devserver.modelkit.layers import is_index, parse_index, parse_manifest, read_kitfile, serving_layers
from devserver.modelkit.materialize import extract_layers, matched_layers, materialize
from devserver.oci.kitstore import KitStorage
from devserver.oci.options import RegistryOptions
from devserver.oci.pull import MAX_MODEL_REF_CHAIN, choose_index_entry, pull_modelkit
from devserver.oci.reference import DEFAULT_REGISTRY, Reference, parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import BlobSource, LocalStore

__all__ = [
    "Located",
    "ResolvedModelKit",
    "Resolver",
    "kitfile_of",
    "merge_parent",
    "resolve",
    "resolve_directory",
    "resolve_reference",
    "unpack_to_directory",
]

log = logging.getLogger(__name__)

Layers = Literal["serving", "all"]


@dataclass(frozen=True)
class ResolvedModelKit:
    kitfile: Kitfile
    root: Path  # the directory that Kitfile paths are relative to
    reference: str | None = None  # None for a local directory
    digest: str | None = None
    tag: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # older-dialect top-level metadata
    fetched_bytes: int = 0  # downloaded from the registry to resolve this
    cache_hits: int = 0  # blobs the cache already held
    cache_misses: int = 0  # blobs downloaded
    source: Literal["directory", "cache", "registry", "kit"] = "directory"

    @property
    def model_path(self) -> Path:
        if self.kitfile.model is None or not self.kitfile.model.path:
            raise KitfileError("the Kitfile has no model.path, so there is nothing to serve")
        return self.root / self.kitfile.model.path

    @property
    def model_id(self) -> str:
        """The id clients send as ``model``: the model's name, else the package's, else the repository's."""
        if self.kitfile.model is not None and self.kitfile.model.name:
            return self.kitfile.model.name
        if self.kitfile.package is not None and self.kitfile.package.name:
            return self.kitfile.package.name
        if self.reference:
            return self.reference.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
        return self.root.name


@dataclass
class Located:
    """One ModelKit found somewhere: where its blobs are and what it is."""

    reference: Reference
    source: BlobSource
    digest: str
    kitfile: Kitfile
    metadata: dict[str, Any]
    origin: Literal["cache", "registry", "kit"]
    fetched_bytes: int = 0
    hits: int = 0
    misses: int = 0


class Resolver:
    """Finds ModelKits for one command: cache, kit's storage, registry (see the module docstring)."""

    def __init__(
        self, store: LocalStore, options: RegistryOptions, index_entry: str | None, *, check_tags: bool = False
    ) -> None:
        self.store, self.options, self.index_entry, self.check_tags = store, options, index_entry, check_tags
        self.kit = KitStorage()

    def locate(self, reference: Reference, layers: Layers) -> Located:
        cached = self._cached(reference)
        if cached is not None:
            return self._checked_against_registry(reference, cached, layers)
        in_kit = self._from_source(reference, self.kit, "kit")
        if in_kit is not None:
            log.info("%s found in kit's local storage %s", reference, self.kit.root)
            return in_kit
        return self._pull(reference, layers)

    def _cached(self, reference: Reference) -> Located | None:
        return self._from_source(reference, self.store, "cache")

    def _from_source(self, reference: Reference, source: Any, origin: Any) -> Located | None:
        found = source.resolve(reference)
        if found is None:
            return None
        digest, data = found
        if is_index(data):
            entry = choose_index_entry(parse_index(data), self.index_entry)
            digest = entry.descriptor.digest
            if not source.has_blob(digest):
                return None
            data = source.read_blob(digest)
        manifest = parse_manifest(data)
        if not source.has_blob(manifest.config.digest):
            return None
        kitfile = read_kitfile(manifest, source.read_blob(manifest.config.digest))
        return Located(reference, source, digest, kitfile, _metadata(manifest.annotations), origin)

    def _checked_against_registry(self, reference: Reference, cached: Located, layers: Layers) -> Located:
        if not self.check_tags or reference.digest or reference.registry == DEFAULT_REGISTRY:
            return cached
        try:
            with RegistryClient(reference.registry, options=self.options) as client:
                data, _, digest = client.get_manifest(reference.repository, reference.tag_or_digest)
        except RegistryUnreachable as exc:
            log.warning("%s; serving %s from the cache (%s)", exc.one_line(), reference, cached.digest)
            return cached
        if digest == cached.digest or (is_index(data) and cached.digest in data.decode(errors="replace")):
            return cached
        log.info("%s moved on the registry to %s; pulling it", reference, digest)
        return self._pull(reference, layers)

    def _pull(self, reference: Reference, layers: Layers) -> Located:
        if reference.registry == DEFAULT_REGISTRY:
            raise UsageError(
                f"{reference} is not in the kit-dev cache or kit's storage and names no registry",
                hint="pack it with `kit-dev pack DIR -t REF`, or use a reference like registry.example:5000/repo:tag",
            )
        log.info("pulling %s", reference)
        pulled = pull_modelkit(reference, self.store, options=self.options, layers=layers, index_entry=self.index_entry)
        return Located(
            reference,
            self.store,
            pulled.manifest_digest,
            pulled.config,
            _metadata(pulled.manifest.annotations),
            "registry",
            pulled.fetched_bytes,
            pulled.cache_hits,
            len(pulled.fetched),
        )

    def complete(self, located: Located, needed: list[Any]) -> None:
        """Fetch the layers a cached ModelKit lacks (``start`` pulled only the serving ones)."""
        if located.source is self.store and not all(self.store.has_blob(m.descriptor.digest) for m in needed):
            self._pull(located.reference.with_digest(located.digest), "all")

    def parents(self, kitfile: Kitfile, chain: list[str]) -> list[Located]:
        """The ModelKits a ``model.path`` chain names, nearest first."""
        found: list[Located] = []
        while kitfile.model is not None and is_modelkit_reference(kitfile.model.path):
            parent = parse_reference(kitfile.model.path)
            if str(parent) in chain:
                raise ModelKitError(f"ModelKit references form a cycle: {' -> '.join([*chain, str(parent)])}")
            if len(chain) > MAX_MODEL_REF_CHAIN:
                raise ModelKitError(
                    f"ModelKit reference chain is longer than {MAX_MODEL_REF_CHAIN}: {' -> '.join(chain)}"
                )
            located = self.locate(parent, "serving")
            chain.append(str(parent))
            found.append(located)
            kitfile = located.kitfile
        return found

    def materialize(self, located: Located, parents: list[Located], layers: Layers) -> Path:
        chain = [(p.source, p.digest) for p in reversed(parents)]
        try:
            return materialize(self.store, located.digest, layers=layers, source=located.source, parents=chain)
        except DigestMismatch as exc:
            if located.source is not self.store or located.reference.registry == DEFAULT_REGISTRY:
                raise
            log.warning("%s; discarding it and fetching it again", exc.message)
            for layer in matched_layers(self.store, located.digest):
                self.store.verify_blob(layer.descriptor.digest, layer.descriptor.size)
            self._pull(located.reference.with_digest(located.digest), layers)
            return materialize(self.store, located.digest, layers=layers, source=located.source, parents=chain)


def merge_parent(child: Kitfile, parent: Kitfile) -> Kitfile:
    """kit's merge of a ModelKit with the one its ``model.path`` names (pkg/lib/kitfile/resolve.go)."""
    merged = child.model_copy(deep=True)
    if parent.model is None or merged.model is None:
        return merged
    model = merged.model
    base = parent.model
    model.path = base.path
    model.parts = [*base.parts, *model.parts]
    for name in ("name", "license", "framework", "format", "version", "description"):
        if not getattr(model, name):
            setattr(model, name, getattr(base, name))
    if model.parameters is None:
        model.parameters = base.parameters
    return merged


def _metadata(annotations: dict[str, str]) -> dict[str, Any]:
    raw = annotations.get(mediatypes.ANNOTATION_METADATA)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def resolve_directory(
    directory: Path, store: LocalStore | None = None, options: RegistryOptions | None = None
) -> ResolvedModelKit:
    """A directory is served in place; an older-dialect Kitfile is read with its one warning."""
    loaded = load_any_kitfile(find_kitfile(directory))
    if loaded.warning:
        log.warning("%s", loaded.warning)
    root = directory.resolve()
    kitfile = loaded.kitfile
    if kitfile.model is None or not is_modelkit_reference(kitfile.model.path):
        return ResolvedModelKit(kitfile=kitfile, root=root, metadata=loaded.metadata)
    if store is None:
        raise UsageError(f"{directory}: model.path names a ModelKit, which needs the cache to fetch it")
    resolver = Resolver(store, options or RegistryOptions(), None)
    parents = resolver.parents(kitfile, [str(root)])
    for parent in parents:
        kitfile = merge_parent(kitfile, parent.kitfile)
    # The base model's files and the directory's own files, side by side in one view of symlinks.
    view = store.root / "unpacked" / ("dir-" + hashlib.sha256(str(root).encode()).hexdigest()[:32])
    _link_tree(resolver.materialize(parents[0], parents[1:], "serving"), view)
    _link_tree(root, view)
    return ResolvedModelKit(kitfile=kitfile, root=view, metadata=loaded.metadata)


def _link_tree(source: Path, target: Path) -> None:
    """Merge ``source`` into ``target`` as symlinks; an existing directory on both sides is merged inside."""
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        dest = target / child.name
        if dest.is_symlink() and dest.resolve() == child.resolve():
            continue
        if not dest.exists() and not dest.is_symlink():
            os.symlink(child, dest)
        elif child.is_dir() and dest.is_dir():
            if dest.is_symlink():  # a linked directory that must now hold files from both sides
                linked = dest.resolve()
                dest.unlink()
                _link_tree(linked, dest)
            _link_tree(child, dest)


def resolve_reference(
    text: str,
    store: LocalStore,
    *,
    options: RegistryOptions | None = None,
    layers: Layers = "serving",
    index_entry: str | None = None,
) -> ResolvedModelKit:
    reference = parse_reference(text)
    resolver = Resolver(store, options or RegistryOptions(), index_entry, check_tags=True)
    located = resolver.locate(reference, layers)
    parents = resolver.parents(located.kitfile, [str(reference)])
    kitfile = located.kitfile
    for parent in parents:
        kitfile = merge_parent(kitfile, parent.kitfile)
    root = resolver.materialize(located, parents, layers)
    everything = [located, *parents]
    return ResolvedModelKit(
        kitfile=kitfile,
        root=root,
        reference=str(reference),
        digest=located.digest,
        tag=reference.tag,
        metadata={k: v for p in reversed(everything) for k, v in p.metadata.items()},
        fetched_bytes=sum(p.fetched_bytes for p in everything),
        cache_hits=sum(p.hits for p in everything),
        cache_misses=sum(p.misses for p in everything),
        source=located.origin,
    )


def resolve(
    target: str, store: LocalStore, *, options: RegistryOptions | None = None, index_entry: str | None = None
) -> ResolvedModelKit:
    """A directory that holds a Kitfile is served in place; anything else is a ModelKit reference."""
    path = Path(target)
    if path.is_dir():
        return resolve_directory(path, store, options)
    return resolve_reference(target, store, options=options, index_entry=index_entry)


def kitfile_of(store: BlobSource, manifest_digest: str) -> Kitfile:
    """The Kitfile a ModelKit carries: its config blob, or what its ModelPack manifest implies."""
    manifest = parse_manifest(store.read_blob(manifest_digest))
    return read_kitfile(manifest, store.read_blob(manifest.config.digest))


def unpack_to_directory(
    text: str,
    store: LocalStore,
    directory: Path,
    filters: list[str],
    *,
    options: RegistryOptions | None = None,
    overwrite: bool = False,
    index_entry: str | None = None,
) -> int:
    """``kit-dev unpack``: the selected layers (and the Kitfile) of a ModelKit into ``directory``.

    Parents named by ``model.path`` contribute their model and parts first when ``model`` is selected,
    as kit's unpack does. Returns the number of layers written.
    """
    selection = parse_filters(filters)
    resolver = Resolver(store, options or RegistryOptions(), index_entry)
    located = resolver.locate(parse_reference(text), "all")
    directory.mkdir(parents=True, exist_ok=True)
    kitfile = located.kitfile
    count = 0
    if any(f.matches_kind("model") for f in selection) or not selection:
        for parent in reversed(resolver.parents(kitfile, [text])):
            layers = serving_layers(matched_layers(parent.source, parent.digest))
            extract_layers(parent.source, layers, directory, overwrite=True)
            count += len(layers)
    chosen = select_layers(matched_layers(located.source, located.digest), selection)
    resolver.complete(located, chosen)
    extract_layers(located.source, chosen, directory, overwrite=overwrite)
    if wants_kitfile(selection):
        text_yaml = kitfile_yaml(kitfile)
        check_existing_kitfile(directory / "Kitfile", text_yaml, overwrite)
        (directory / "Kitfile").write_text(text_yaml, encoding="utf-8")
    return count + len(chosen)
