"""ModelKit media types and annotation keys, named as the KitOps spec names them.

Kept in one module so that pack, pull and unpack agree on every string; the parser accepts everything
kit has ever written for a kit-format layer (``.tar`` with no, gzip or zstd compression, and the
newer ``.raw`` layers), because readers must handle ModelKits from every kit version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from devserver.errors import ModelKitError
from devserver.oci.descriptor import ANNOTATION_REF_NAME, OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST

__all__ = [
    "ANNOTATION_CLI_VERSION",
    "ANNOTATION_CREATED",
    "ANNOTATION_FILEPATH",
    "ANNOTATION_FILE_METADATA",
    "ANNOTATION_KITFILE",
    "ANNOTATION_LAYER_SUBTYPE",
    "ANNOTATION_METADATA",
    "ANNOTATION_REF_NAME",
    "ARTIFACT_TYPE_KIT_INDEX",
    "ARTIFACT_TYPE_KIT_MANIFEST",
    "ARTIFACT_TYPE_MODELPACK",
    "BASE_CODE",
    "BASE_DATASET",
    "BASE_DOCS",
    "BASE_MCPB",
    "BASE_MODEL",
    "BASE_MODELPART",
    "MEDIA_TYPE_KIT_CONFIG",
    "MEDIA_TYPE_MODELPACK_CONFIG",
    "OCI_IMAGE_INDEX",
    "OCI_IMAGE_MANIFEST",
    "LayerMediaType",
    "layer_media_type",
    "parse_layer_media_type",
]

MEDIA_TYPE_KIT_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
ARTIFACT_TYPE_KIT_MANIFEST = "application/vnd.kitops.modelkit.manifest.v1+json"
ARTIFACT_TYPE_KIT_INDEX = "application/vnd.kitops.modelkit.index.v1+json"
MEDIA_TYPE_MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
ARTIFACT_TYPE_MODELPACK = "application/vnd.cncf.model.manifest.v1+json"

BASE_MODEL = "model"
BASE_MODELPART = "modelpart"
BASE_DATASET = "dataset"
BASE_CODE = "code"
BASE_DOCS = "docs"
BASE_MCPB = "mcpb"

ANNOTATION_CLI_VERSION = "ml.kitops.modelkit.cli-version"
ANNOTATION_KITFILE = "ml.kitops.modelkit.kitfile"
# kit-dev's own: an older-dialect Kitfile's top-level metadata, as JSON (kit has no place for it).
ANNOTATION_METADATA = "dev.kit-dev.metadata"
ANNOTATION_LAYER_SUBTYPE = "ml.kitops.modelkit.layer-subtype"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"

Format = Literal["tar", "raw"]
Compression = Literal["none", "gzip", "zstd"]

_KIT_LAYER = re.compile(r"^application/vnd\.kitops\.modelkit\.(\w+)\.v1\.(\w+)(?:\+(\w+))?$")
_BASES = frozenset({BASE_MODEL, BASE_MODELPART, BASE_DATASET, BASE_CODE, BASE_DOCS, BASE_MCPB})
# CNCF ModelPack layers: application/vnd.cncf.model.<base>.v1.<raw|tar>[+gzip|+zstd], read as kit's kinds.
_MODELPACK_LAYER = re.compile(
    r"^application/vnd\.cncf\.model\.(weight\.config|weight|doc|dataset|code)\.v1\.(\w+)(?:\+(\w+))?$"
)
MODELPACK_BASES = {
    "weight": BASE_MODEL,
    "weight.config": BASE_MODELPART,
    "doc": BASE_DOCS,
    "dataset": BASE_DATASET,
    "code": BASE_CODE,
}


@dataclass(frozen=True)
class LayerMediaType:
    """The three parts of ``application/vnd.kitops.modelkit.<base>.v1.<format>[+<compression>]``."""

    base: str
    format: Format
    compression: Compression

    def __str__(self) -> str:
        return layer_media_type(self.base, self.format, self.compression)


def layer_media_type(base: str, format: Format = "tar", compression: Compression = "none") -> str:
    """The media type string kit writes for a layer of this kind."""
    suffix = "" if compression == "none" else f"+{compression}"
    return f"application/vnd.kitops.modelkit.{base}.v1.{format}{suffix}"


def parse_layer_media_type(media_type: str) -> LayerMediaType:
    """Split a kit (or CNCF ModelPack) layer media type; anything else is not a layer we can read.

    A ModelPack type comes back with kit's base for the same kind (``weight`` → ``model``).
    """
    match = _KIT_LAYER.match(media_type)
    if match is None:
        match = _MODELPACK_LAYER.match(media_type)
        if match is None:
            raise ModelKitError(f"not a ModelKit layer media type: {media_type!r}")
        base = MODELPACK_BASES[match.group(1)]
    else:
        base = match.group(1)
    fmt, compression = match.group(2), match.group(3) or "none"
    if base not in _BASES:
        raise ModelKitError(f"unknown ModelKit layer kind {base!r} in {media_type!r}")
    if fmt not in ("tar", "raw"):
        raise ModelKitError(f"unknown ModelKit layer format {fmt!r} in {media_type!r}")
    if compression not in ("none", "gzip", "zstd"):
        raise ModelKitError(f"unknown ModelKit layer compression {compression!r} in {media_type!r}")
    return LayerMediaType(base, fmt, compression)  # type: ignore[arg-type]
