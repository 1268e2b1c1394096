"""OCI descriptors and digests: the addresses everything in the store and on the wire goes by.

A digest is validated here, once, before anything turns it into a file name or a URL, so a
malicious manifest cannot point ``blobs/sha256/../../x`` at a path outside the store.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from devserver.errors import DigestMismatch, ModelKitError

__all__ = [
    "ANNOTATION_REF_NAME",
    "OCI_IMAGE_INDEX",
    "OCI_IMAGE_MANIFEST",
    "Descriptor",
    "digest_hex",
    "sha256_digest",
    "verify_bytes",
]

OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

_SHA256 = re.compile(r"^sha256:([a-f0-9]{64})$")


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:`` digest; anything else (other algorithms, odd characters) is refused."""
    match = _SHA256.match(digest) if isinstance(digest, str) else None
    if match is None:
        raise ModelKitError(f"unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return match.group(1)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, digest: str, size: int | None = None) -> None:
    """Raise DigestMismatch unless ``data`` has exactly this digest (and size, when given)."""
    digest_hex(digest)
    if size is not None and len(data) != size:
        raise DigestMismatch(f"{digest}: expected {size} bytes, got {len(data)}")
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(f"content does not match its digest: expected {digest}, got {actual}")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (``mediaType``, ``digest``, ``size``, optional ``annotations``)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        digest_hex(self.digest)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ModelKitError(f"descriptor {self.digest} has an invalid size {self.size!r}")

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest (OCI field order; no empty annotations)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Descriptor:
        """Read a descriptor from a parsed manifest; a malformed one is a ModelKitError."""
        if not isinstance(data, dict):
            raise ModelKitError(f"invalid descriptor: {data!r}")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ModelKitError(f"invalid descriptor annotations: {annotations!r}")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=str(data.get("digest", "")),
            size=data.get("size", -1),
            annotations={str(k): str(v) for k, v in annotations.items()},
        )
