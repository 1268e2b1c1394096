"""Manifest ↔ Kitfile: which layer holds which Kitfile entry.

Current kit stores each layer's digest on its Kitfile entry in the config, so matching is by digest
(kit's ``generateUnpackPlan``: "digest %s not found in manifest"). ModelKits packed before kit
v0.5.0 have no digests in the config; for those, layers are matched by position within each media
type kind, as kit did then.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from devserver.errors import ModelKitError
from devserver.modelkit import mediatypes
from devserver.modelkit.kitfile import Entry, Kitfile, LayerEntry
from devserver.oci.descriptor import OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST, Descriptor

__all__ = ["MatchedLayer", "ModelKitManifest", "match_layers", "parse_manifest", "serving_layers"]

SERVING_KINDS = frozenset({"model", "modelpart"})


@dataclass(frozen=True)
class ModelKitManifest:
    """The parts of an OCI image manifest that a ModelKit reader needs."""

    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]
    artifact_type: str | None = None


@dataclass(frozen=True)
class MatchedLayer:
    """One Kitfile entry with the layer that holds it."""

    kind: str  # model, modelpart, code, dataset, docs, prompt, mcpserver
    name: str
    path: str
    descriptor: Descriptor
    item: LayerEntry


def parse_manifest(data: bytes) -> ModelKitManifest:
    """Parse manifest bytes; anything that is not a kit-format ModelKit is a ModelKitError."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ModelKitError(f"manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelKitError("manifest is not a JSON object")
    media_type = doc.get("mediaType")
    if media_type == OCI_IMAGE_INDEX or "manifests" in doc:
        raise ModelKitError("reference is an image index (a ModelKit index?); kit-dev needs a single ModelKit")
    if media_type not in (None, OCI_IMAGE_MANIFEST) or doc.get("schemaVersion") != 2:
        raise ModelKitError(f"expected an OCI image manifest, got mediaType {media_type!r}")
    config = Descriptor.from_json(doc.get("config"))
    artifact_type = doc.get("artifactType")
    if config.media_type != mediatypes.MEDIA_TYPE_KIT_CONFIG and artifact_type != mediatypes.ARTIFACT_TYPE_KIT_MANIFEST:
        raise ModelKitError(f"reference exists but is not a modelkit (config type {config.media_type!r})")
    layers = [Descriptor.from_json(layer) for layer in (doc.get("layers") or [])]
    annotations = doc.get("annotations") or {}
    return ModelKitManifest(config, layers, {str(k): str(v) for k, v in annotations.items()}, artifact_type)


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
        matched.append(MatchedLayer(entry.kind, entry.name, entry.path, queue.pop(0), entry.item))
    return matched


def serving_layers(matched: list[MatchedLayer]) -> list[MatchedLayer]:
    """The layers a server needs: the model and its parts (never datasets, code or docs)."""
    return [m for m in matched if m.kind in SERVING_KINDS]
