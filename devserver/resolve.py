"""Turn what the user typed (a directory or a ModelKit reference) into files on disk and a Kitfile.

Order of lookup for a reference: the kit-dev cache (no network when everything serving needs is
there), then the registry. ``start`` fetches only what serving needs — the config, the model and its
parts — never datasets, code or docs; ``kit-dev pull`` fetches everything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from devserver.errors import KitfileError, UsageError
from devserver.modelkit.kitfile import Kitfile, find_kitfile, load_kitfile
from devserver.modelkit.materialize import materialize
from devserver.oci.pull import pull_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModelKit:
    kitfile: Kitfile
    root: Path  # the directory that Kitfile paths are relative to
    reference: str | None = None  # None for a local directory
    digest: str | None = None
    tag: str | None = None

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


def resolve_directory(directory: Path) -> ResolvedModelKit:
    return ResolvedModelKit(kitfile=load_kitfile(find_kitfile(directory)), root=directory.resolve())


def resolve_reference(
    text: str, store: LocalStore, *, plain_http: bool | None = None, layers: str = "serving"
) -> ResolvedModelKit:
    reference = parse_reference(text)
    cached = store.resolve(reference)
    if cached is None:
        if reference.registry == "localhost":
            raise UsageError(
                f"{text} is not in the kit-dev cache and names no registry",
                hint="pack it with `kit-dev pack DIR -t REF`, or use a reference like registry.example:5000/repo:tag",
            )
        log.info("pulling %s", reference)
        client = RegistryClient(reference.registry, plain_http=plain_http)
        pulled = pull_modelkit(reference, store, client=client, layers=layers)  # type: ignore[arg-type]
        digest = pulled.manifest_digest
    else:
        digest = cached[0]
        log.info("%s is in the cache (%s)", reference, digest)
    root = materialize(store, digest, layers=layers)  # type: ignore[arg-type]
    return ResolvedModelKit(
        kitfile=kitfile_of(store, digest),
        root=root,
        reference=str(reference),
        digest=digest,
        tag=reference.tag,
    )


def resolve(target: str, store: LocalStore, *, plain_http: bool | None = None) -> ResolvedModelKit:
    """A directory that holds a Kitfile is served in place; anything else is a ModelKit reference."""
    path = Path(target)
    if path.is_dir():
        return resolve_directory(path)
    return resolve_reference(target, store, plain_http=plain_http)


def kitfile_of(store: LocalStore, manifest_digest: str) -> Kitfile:
    """The Kitfile a ModelKit carries: its config blob, as kit stores it."""
    manifest = json.loads(store.read_blob(manifest_digest))
    return Kitfile.from_config_json(store.read_blob(manifest["config"]["digest"]))
