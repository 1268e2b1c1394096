"""CNCF ModelPack manifests read as ModelKits: the Kitfile they carry, or the one kit derives from them.

kit (v1.10+, ``--use-model-pack``) stores the Kitfile JSON in the manifest annotation
``ml.kitops.modelkit.kitfile``. A ModelPack made by another tool has none; then kit synthesises one
(``GenerateKitfileForModelPack``): the first ``weight`` layer is ``model.path``, further ``weight``
and every ``weight.config`` layer are ``model.parts`` in manifest order, ``doc``/``dataset``/``code``
become docs/datasets/code, each path is the layer's ``org.cncf.model.filepath`` annotation, and
the digests and diffIds (from the config's ``modelfs.diffIds``, by layer position) are recorded so
layers match entries by digest like any current ModelKit.

This works on parsed JSON rather than ``Descriptor`` objects so the upstream vectors, whose digests
are placeholders such as ``sha256:aaa``, run unchanged.
"""

from __future__ import annotations

from typing import Any

from devserver.errors import ModelKitError
from devserver.modelkit import mediatypes
from devserver.modelkit.kitfile import Code, DataSet, Docs, Kitfile, Model, ModelPart

__all__ = ["kitfile_from_modelpack"]


def kitfile_from_modelpack(manifest: dict[str, Any], config: dict[str, Any] | None) -> Kitfile:
    """The Kitfile of a ModelPack manifest: its annotation if present, else derived from its layers."""
    annotation = (manifest.get("annotations") or {}).get(mediatypes.ANNOTATION_KITFILE)
    if annotation:
        return Kitfile.from_config_json(annotation.encode())
    diff_ids = ((config or {}).get("modelfs") or {}).get("diffIds") or []
    kitfile = Kitfile(manifestVersion="1.0.0")
    for position, layer in enumerate(manifest.get("layers") or []):
        media_type = str(layer.get("mediaType", ""))
        base = mediatypes.parse_layer_media_type(media_type).base
        path = (layer.get("annotations") or {}).get(mediatypes.ANNOTATION_FILEPATH)
        if not path:
            raise ModelKitError(f"unknown file path for layer {layer.get('digest')} ({media_type})")
        info = {"path": path, "digest": str(layer.get("digest", "")), "diffId": _at(diff_ids, position)}
        if base == mediatypes.BASE_MODEL and kitfile.model is None:
            kitfile.model = Model(**info)
        elif base in (mediatypes.BASE_MODEL, mediatypes.BASE_MODELPART):
            if kitfile.model is None:
                kitfile.model = Model()
            kitfile.model.parts = [*kitfile.model.parts, ModelPart(**info)]
        elif base == mediatypes.BASE_DOCS:
            kitfile.docs = [*kitfile.docs, Docs(**info)]
        elif base == mediatypes.BASE_DATASET:
            kitfile.datasets = [*kitfile.datasets, DataSet(**info)]
        elif base == mediatypes.BASE_CODE:
            kitfile.code = [*kitfile.code, Code(**info)]
    return kitfile


def _at(values: list[Any], position: int) -> str:
    return str(values[position]) if position < len(values) else ""
