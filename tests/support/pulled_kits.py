"""Fixture models the way users get them: packed as a ModelKit, pushed to a real registry, then pulled
into an empty cache and unpacked, exactly as ``kit-dev start --modelkit REF`` does before it serves."""

from __future__ import annotations

from pathlib import Path

from devserver.modelkit.pack import pack_modelkit
from devserver.oci.push import push_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore
from devserver.resolve import ResolvedModelKit, resolve_reference
from scripts.link_smollm2 import link_or_copy
from tests.support.registry import RegistryProcess


def kit_source(work: Path, model: Path, *, name: str) -> Path:
    """A ModelKit source directory serving ``model`` (a GGUF file or a model directory) as ``name``."""
    directory = work / f"{name}-source"
    directory.mkdir(parents=True)
    if model.is_dir():
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            link_or_copy(path, directory / "model" / path.relative_to(model))
        model_path = "model"
    else:
        link_or_copy(model, directory / model.name)
        model_path = model.name
    (directory / "Kitfile").write_text(f"manifestVersion: 1.0.0\nmodel:\n  name: {name}\n  path: {model_path}\n")
    return directory


def pulled(source: Path, registry: RegistryProcess, work: Path, repository: str) -> ResolvedModelKit:
    """Pack ``source``, push it to ``registry``, resolve it into a fresh cache; return what serving reads."""
    reference = parse_reference(f"{registry.host}/{repository}:1")
    packer = LocalStore(work / f"{repository.replace('/', '-')}-pack")
    pack_modelkit(source, packer, reference=reference)
    push_modelkit(reference, packer, client=RegistryClient(reference.registry))
    resolved = resolve_reference(str(reference), LocalStore(work / f"{repository.replace('/', '-')}-cache"))
    assert resolved.source == "registry", resolved.source
    return resolved
