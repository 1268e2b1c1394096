"""ModelKits in every format kit has written, built byte by byte from the spec and pushed with httpx.

The manifests here are written by the test, not by kit-dev's packer, so a pull test checks kit-dev
against the format as kit defines it: tar (none/gzip/zstd) and raw layers, artifactType or config
media type, pre-v0.5 configs without digests and with the legacy tar layout, prompts, MCP bundles,
ModelKit indexes and CNCF ModelPack manifests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

import httpx
import zstandard

from tests.support.auth_registries import upload_blob

KIT = "application/vnd.kitops.modelkit"
CONFIG = f"{KIT}.config.v1+json"
ARTIFACT = f"{KIT}.manifest.v1+json"
INDEX_ARTIFACT = f"{KIT}.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    """A tar with kit's entry names (relative, no ./, no trailing slash on directories)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid = len(data), 0o644, 1000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Layer:
    media_type: str
    data: bytes
    diff_id: str
    annotations: dict[str, str] = field(default_factory=dict)

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": digest_of(self.data), "size": len(self.data)}
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def kit_layer(base: str, path: str, files: dict[str, bytes], *, fmt: str = "tar", compression: str = "none",
              annotations: dict[str, str] | None = None) -> Layer:  # fmt: skip
    """One kit layer holding ``files`` (tar names as given; raw: the one file's bytes)."""
    raw = next(iter(files.values())) if fmt == "raw" else tar_bytes(files)
    suffix = "" if compression == "none" else f"+{compression}"
    notes = {"org.cncf.model.filepath": path, **(annotations or {})}
    return Layer(f"{KIT}.{base}.v1.{fmt}{suffix}", compress(raw, compression), digest_of(raw), notes)


def manifest_bytes(config: bytes, config_type: str, layers: list[Layer], *, artifact_type: str | None = ARTIFACT,
                   annotations: dict[str, str] | None = None) -> bytes:  # fmt: skip
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config_type, "digest": digest_of(config), "size": len(config)}
    manifest["layers"] = [layer.descriptor() for layer in layers]
    manifest["annotations"] = {"ml.kitops.modelkit.cli-version": "test", **(annotations or {})}
    return json.dumps(manifest).encode()


def push(registry_url: str, repository: str, tag: str, blobs: list[bytes], manifest: bytes,
         media_type: str = OCI_MANIFEST) -> str:  # fmt: skip
    """Upload blobs then the manifest to an open registry; return the manifest digest."""
    with httpx.Client(base_url=registry_url) as client:
        for blob in blobs:
            upload_blob(client, repository, blob)
        done = client.put(f"/v2/{repository}/manifests/{tag}", content=manifest, headers={"Content-Type": media_type})
        assert done.status_code == 201, done.text
    return digest_of(manifest)


def push_kit(registry_url: str, repository: str, tag: str, kitfile: dict[str, Any], layers: list[Layer], *,
             with_digests: bool = True, artifact_type: str | None = ARTIFACT, config_type: str = CONFIG,
             annotations: dict[str, str] | None = None) -> str:  # fmt: skip
    """Push a kit-format ModelKit whose config is ``kitfile`` with each entry's digests filled in, in layer order."""
    config = json.loads(json.dumps(kitfile))
    if with_digests:
        entries = _entries(config)
        assert len(entries) == len(layers), "one layer per Kitfile entry"
        for entry, layer in zip(entries, layers, strict=True):
            entry["digest"], entry["diffId"] = digest_of(layer.data), layer.diff_id
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = manifest_bytes(config_bytes, config_type, layers, artifact_type=artifact_type, annotations=annotations)
    return push(registry_url, repository, tag, [config_bytes, *(layer.data for layer in layers)], manifest)


def _entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Layer-backed entries in kit's layer order (a model.path that is a reference has no layer)."""
    out: list[dict[str, Any]] = []
    model = config.get("model")
    if model:
        if model.get("path") and ":" not in model["path"]:
            out.append(model)
        out.extend(model.get("parts") or [])
    for section in ("code", "datasets", "docs", "prompts", "mcpServers"):
        out.extend(config.get(section) or [])
    return out
