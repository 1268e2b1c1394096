"""Manifest ↔ Kitfile: which layer holds which Kitfile entry.

Current kit stores each layer's digest on its Kitfile entry in the config, so matching is by digest
(kit's ``generateUnpackPlan``: "digest %s not found in manifest"). ModelKits packed before kit
v0.5.0 have no digests in the config; for those, layers are matched by position within each media
type kind, as kit did then, and their tar entries are relative to the layer path's parent directory
(kit's "legacy" unpack), which ``MatchedLayer.legacy`` records.

Three manifest shapes are ModelKits: kit's own (recognised by ``artifactType`` or by the config media
type), CNCF ModelPack (its Kitfile from an annotation or derived from the layers, see
``devserver.modelkit.modelpack``), and, one level up, a ModelKit index listing several ModelKits.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from devserver.errors import ModelKitError
from devserver.modelkit import mediatypes
from devserver.modelkit.kitfile import Entry, Kitfile, LayerEntry
from devserver.modelkit.modelpack import kitfile_from_modelpack
from devserver.oci.descriptor import ANNOTATION_REF_NAME, OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST, Descriptor

__all__ = [
    "IndexEntry",
    "MatchedLayer",
    "ModelKitManifest",
    "is_index",
    "match_layers",
    "parse_index",
    "parse_manifest",
    "read_kitfile",
    "serving_layers",
]

SERVING_KINDS = frozenset({"model", "modelpart"})


@dataclass(frozen=True)
class ModelKitManifest:
    """The parts of an OCI image manifest that a ModelKit reader needs."""

    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]
    artifact_type: str | None = None
    format: Literal["kit", "modelpack"] = "kit"


@dataclass(frozen=True)
class IndexEntry:
    """One ModelKit listed in a ModelKit index, with kit's non-standard ``modelMetadata`` labels."""

    descriptor: Descriptor
    platform: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """A short human description: ref name annotation, else metadata, else the digest."""
        name = self.descriptor.annotations.get(ANNOTATION_REF_NAME)
        if name:
            return name
        if self.metadata:
            return ", ".join(f"{k}={v}" for k, v in sorted(self.metadata.items()))
        return self.descriptor.digest


@dataclass(frozen=True)
class MatchedLayer:
    """One Kitfile entry with the layer that holds it."""

    kind: str  # model, modelpart, code, dataset, docs, prompt, mcpserver
    name: str
    path: str
    descriptor: Descriptor
    item: LayerEntry
    legacy: bool = False  # a pre-v0.5 layer: tar names are relative to the parent of ``path``

    @property
    def extract_into(self) -> str:
        """Where, relative to the unpack directory, this layer's tar names are rooted."""
        if not self.legacy:
            return "."
        return posixpath.dirname(posixpath.normpath(self.path)) or "."

    @property
    def annotations(self) -> dict[str, str]:
        """The layer's annotations, with the entry's path as the file path a raw layer needs."""
        return {mediatypes.ANNOTATION_FILEPATH: posixpath.normpath(self.path or "."), **self.descriptor.annotations}


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ModelKitError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelKitError(f"{what} is not a JSON object")
    return doc


def is_index(data: bytes, media_type: str = "") -> bool:
    """Whether manifest bytes (served with ``media_type``) are an image index rather than a manifest."""
    if media_type == OCI_IMAGE_INDEX:
        return True
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") == OCI_IMAGE_INDEX or "manifests" in doc)


def parse_index(data: bytes) -> list[IndexEntry]:
    """The entries of an OCI image index (a ModelKit index, ``application/vnd.kitops.modelkit.index.v1+json``)."""
    doc = _json_object(data, "index")
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ModelKitError("index has no manifests list")
    out = []
    for entry in entries:
        descriptor = Descriptor.from_json(entry)
        metadata = entry.get("modelMetadata") if isinstance(entry.get("modelMetadata"), dict) else {}
        platform = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
        out.append(IndexEntry(descriptor, platform, metadata))
    return out


def parse_manifest(data: bytes) -> ModelKitManifest:
    """Parse manifest bytes; anything that is not a kit or ModelPack ModelKit is a ModelKitError."""
    doc = _json_object(data, "manifest")
    media_type = doc.get("mediaType")
    if media_type == OCI_IMAGE_INDEX or "manifests" in doc:
        raise ModelKitError("reference is an image index (a ModelKit index?); kit-dev needs a single ModelKit")
    if media_type not in (None, OCI_IMAGE_MANIFEST) or doc.get("schemaVersion") != 2:
        raise ModelKitError(f"expected an OCI image manifest, got mediaType {media_type!r}")
    config = Descriptor.from_json(doc.get("config"))
    artifact_type = doc.get("artifactType")
    if config.media_type == mediatypes.MEDIA_TYPE_KIT_CONFIG or artifact_type == mediatypes.ARTIFACT_TYPE_KIT_MANIFEST:
        fmt: Literal["kit", "modelpack"] = "kit"
    elif (
        config.media_type == mediatypes.MEDIA_TYPE_MODELPACK_CONFIG
        or artifact_type == mediatypes.ARTIFACT_TYPE_MODELPACK
    ):
        fmt = "modelpack"
    else:
        raise ModelKitError(f"reference exists but is not a modelkit (config type {config.media_type!r})")
    layers = [Descriptor.from_json(layer) for layer in (doc.get("layers") or [])]
    annotations = {str(k): str(v) for k, v in (doc.get("annotations") or {}).items()}
    return ModelKitManifest(config, layers, annotations, artifact_type, fmt)


def read_kitfile(manifest: ModelKitManifest, config: bytes) -> Kitfile:
    """The Kitfile of a ModelKit: kit's config blob, or what a ModelPack manifest carries or implies."""
    if manifest.format == "kit":
        return Kitfile.from_config_json(config)
    try:
        config_doc = json.loads(config) if config else None
    except ValueError as exc:
        raise ModelKitError(f"ModelPack config is not JSON: {exc}") from exc
    doc = {"annotations": manifest.annotations, "layers": [d.to_json() for d in manifest.layers]}
    return kitfile_from_modelpack(doc, config_doc if isinstance(config_doc, dict) else None)


def match_layers(manifest: ModelKitManifest, config: Kitfile) -> list[MatchedLayer]:
    """Every Kitfile entry with its layer, in Kitfile (= kit's layer) order."""
    entries = list(config.entries())
    if entries and not any(e.item.digest for e in entries):
        return _match_by_position(manifest, entries)
    by_digest = {layer.digest: layer for layer in manifest.layers}
    matched = []
    for entry in entries:
        layer = by_digest.get(entry.item.digest)
        if layer is None:
            digest = entry.item.digest or "(none)"
            raise ModelKitError(f"digest {digest} not found in manifest ({entry.kind} {entry.path})")
        matched.append(MatchedLayer(entry.kind, entry.name, entry.path, layer, entry.item))
    return matched


def _match_by_position(manifest: ModelKitManifest, entries: list[Entry]) -> list[MatchedLayer]:
    queues: dict[str, list[Descriptor]] = defaultdict(list)
    for layer in manifest.layers:
        queues[mediatypes.parse_layer_media_type(layer.media_type).base].append(layer)
    matched = []
    for entry in entries:
        queue = queues[entry.base]
        if not queue:
            raise ModelKitError(f"no {entry.base} layer in the manifest for {entry.kind} {entry.path}")
        matched.append(MatchedLayer(entry.kind, entry.name, entry.path, queue.pop(0), entry.item, legacy=True))
    return matched


def serving_layers(matched: list[MatchedLayer]) -> list[MatchedLayer]:
    """The layers a server needs: the model and its parts (never datasets, code or docs)."""
    return [m for m in matched if m.kind in SERVING_KINDS]
