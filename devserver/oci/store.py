"""The local content-addressed store: an OCI image layout plus ``ingest/`` and ``unpacked/``.

Layout (readable by any OCI tool)::

    root/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    root/index.json                 manifests, each tagged with the full reference it was stored as
    root/blobs/sha256/<hex>         committed content, read-only (0444)
    root/ingest/<hex>               a download in progress, kept across interruptions to be resumed
    root/locks/<hex>.lock           held while one process downloads that blob
    root/ingest/new_<random>        a pack writing a blob whose digest is known only at the end
    root/unpacked/<hex>/            materialized ModelKits (see devserver.modelkit.materialize)

Content becomes visible only by an ``os.replace`` after its size and sha256 have been checked while
it was written (containerd's writer, oras-go's ``ingest``), so a crash or a bad download leaves at
most a stray file in ``ingest/``. ``index.json`` changes under a file lock and via temp + replace.

Downloads are resumable (containerd's ingest, kit's ``ingest/<hex>``): the partial file keeps its
name across runs, and reopening it re-hashes the bytes already there so that the download continues
with a ``Range`` request. A per-blob file lock makes a second process wait for the first and then
find the blob committed, instead of fetching it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from filelock import FileLock

from devserver.errors import CacheError, DigestMismatch
from devserver.oci.descriptor import ANNOTATION_REF_NAME, OCI_IMAGE_MANIFEST, Descriptor, digest_hex
from devserver.oci.reference import Reference

__all__ = ["BlobSource", "BlobWriter", "Download", "LocalStore"]

_CHUNK = 1 << 20
# Downloads reach the disk in 64 KiB writes, as curl's 16 KiB ones do: the kernel backs one large
# write with large page-cache folios, and on a VM whose free memory was handed back to the host
# those cost a fault each on first touch. Measured on the 2-core VM (perf, 1 GiB cold pull): the
# page-cache copy took ~1.4 s of CPU with 4 MiB writes, ~1.0 s with 256 KiB, ~0.1 s with 64 KiB.
_WRITE_PIECE = 64 << 10


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Small metadata files: temp in the same directory, fsync, replace."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class BlobSource(Protocol):
    """Read access to committed blobs: kit-dev's store, or kit's local storage."""

    def has_blob(self, digest: str) -> bool: ...

    def read_blob(self, digest: str) -> bytes: ...

    def open_blob(self, digest: str) -> BinaryIO: ...


class BlobWriter:
    """One blob being written to ``ingest/``: hashed as written, published by ``commit``.

    Used as a context manager it commits on a clean exit and aborts (deleting the partial file) on
    an exception. ``expected_digest``/``expected_size`` may be unknown (pack writes a tar whose
    digest is only known at the end); when known, ``write`` refuses to go past the size.
    """

    def __init__(self, store: LocalStore, expected_digest: str | None, expected_size: int | None) -> None:
        if expected_digest is not None:
            digest_hex(expected_digest)
        self._store = store
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self._hash = hashlib.sha256()
        self.size = 0
        name = (digest_hex(expected_digest) if expected_digest else "new") + "_" + secrets.token_hex(8)
        self.path = store.root / "ingest" / name
        self._file = self.path.open("xb")
        self._done = False

    def write(self, data: bytes) -> None:
        if self.expected_size is not None and self.size + len(data) > self.expected_size:
            raise DigestMismatch(f"{self.expected_digest}: more data than the expected {self.expected_size} bytes")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        """The digest of what has been written so far."""
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> str:
        """Verify and publish the blob; return its digest. A mismatch deletes it and raises DigestMismatch."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            digest = self.digest
            if self.expected_size is not None and self.size != self.expected_size:
                raise DigestMismatch(f"{self.expected_digest}: expected {self.expected_size} bytes, got {self.size}")
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatch(
                    f"downloaded content does not match its digest: expected {self.expected_digest}, got {digest}"
                )
            target = self._store.blob_path(digest)
            if target.exists():  # already there: the same bytes, so this is success
                self.path.unlink()
            else:
                os.chmod(self.path, 0o444)
                os.replace(self.path, target)
                _fsync_dir(target.parent)
            self._done = True
            return digest
        finally:
            if not self._done:
                self.abort()

    def abort(self) -> None:
        """Drop the partial blob."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Download:
    """A resumable download of one blob into ``ingest/<hex>``, held under that blob's file lock.

    Enter it to take the lock; ``present`` then says another process already committed the blob.
    ``offset`` bytes are on disk (and hashed) already. ``commit`` verifies size and digest and
    publishes; wrong bytes are deleted at once, so nothing of them is ever visible. Leaving without
    commit keeps the partial file for the next attempt.
    """

    def __init__(self, store: LocalStore, digest: str, size: int) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self.path = store.root / "ingest" / digest_hex(digest)
        self._lock = FileLock(str(store.root / "locks" / f"{self.path.name}.lock"))
        self._hash = hashlib.sha256()
        self.offset = 0
        self.present = False
        self._file: Any = None

    def __enter__(self) -> Download:
        self._lock.acquire()
        try:
            self.present = self._store.has_blob(self.digest)
            if not self.present:
                self._open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _open(self) -> None:
        self._file = self.path.open("ab+")
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            self._hash.update(chunk)
            self.offset += len(chunk)
        if self.offset > self.size:  # a stale partial that cannot be this blob
            self.reset()

    def reset(self) -> None:
        """Throw away the partial bytes (the server ignored our Range)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self.size:
            self._discard()
            raise DigestMismatch(f"{self.digest}: the registry sent more than the expected {self.size} bytes")
        self._hash.update(data)
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_PIECE):
            self._file.write(view[start : start + _WRITE_PIECE])
        self.offset += len(data)

    def commit(self) -> None:
        """Verify and publish; on a mismatch delete the partial file and raise DigestMismatch.

        No fsync here, unlike pack's writer: every later use of a downloaded blob re-hashes it (a
        pull re-verifies what it finds, materialize verifies as it unpacks), so a blob torn by a
        crash is found and fetched again, while an fsync per blob would cost a third of a cold pull.
        """
        self._file.flush()
        actual = "sha256:" + self._hash.hexdigest()
        if self.offset != self.size or actual != self.digest:
            self._discard()
            raise DigestMismatch(
                f"downloaded file hash does not match descriptor: expected {self.digest} ({self.size} bytes), "
                f"got {actual} ({self.offset} bytes)"
            )
        self._file.close()
        os.chmod(self.path, 0o444)
        os.replace(self.path, self._store.blob_path(self.digest))
        self.present = True

    def _discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._file is not None and not self._file.closed:
                self._file.close()
                if self.offset == 0:  # nothing to resume from: leave no empty file behind
                    self.path.unlink(missing_ok=True)
        finally:
            self._lock.release()


class LocalStore:
    """An OCI image layout on disk that kit-dev pulls into, packs into and materializes from."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            for sub in ("blobs/sha256", "ingest", "locks", "unpacked"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                _write_atomic(layout, b'{"imageLayoutVersion":"1.0.0"}')
            if not self._index_path.exists():
                _write_atomic(self._index_path, b'{"schemaVersion":2,"manifests":[]}')
        except OSError as exc:
            raise CacheError(f"cannot use {self.root} as the model cache: {exc.strerror or exc}") from exc

    @property
    def _index_path(self) -> Path:
        return self.root / "index.json"

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives (whether or not it is there yet); the digest is validated first."""
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def ingest(self, digest: str, size: int) -> BlobWriter:
        """A writer for a blob whose digest and size are known (a download)."""
        return BlobWriter(self, digest, size)

    def download(self, digest: str, size: int) -> Download:
        """A resumable, locked download of a blob from a registry (use as a context manager)."""
        return Download(self, digest, size)

    def verify_blob(self, digest: str, size: int) -> bool:
        """Re-hash a committed blob; a corrupt one is deleted (so it is fetched again) and False returned."""
        path = self.blob_path(digest)
        hasher = hashlib.sha256()
        length = 0
        try:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
                    length += len(chunk)
        except FileNotFoundError:
            return False
        if length == size and "sha256:" + hasher.hexdigest() == digest:
            return True
        path.unlink(missing_ok=True)
        return False

    def delete_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def blobs(self) -> list[str]:
        """Every committed blob's digest."""
        return ["sha256:" + p.name for p in (self.root / "blobs" / "sha256").iterdir() if len(p.name) == 64]

    def remove_reference(self, ref_name: str) -> list[Descriptor]:
        """Drop index entries recorded under ``ref_name`` (or, for a digest, with that digest)."""
        with self._index_lock():
            index = self._read_index()
            kept, removed = [], []
            for m in index["manifests"]:
                name = (m.get("annotations") or {}).get(ANNOTATION_REF_NAME)
                (removed if ref_name in (name, m.get("digest")) else kept).append(m)
            index["manifests"] = kept
            _write_atomic(self._index_path, json.dumps(index, indent=2).encode())
        return [Descriptor.from_json(m) for m in removed]

    def new_blob(self) -> BlobWriter:
        """A writer for a blob whose digest is known only at the end (pack)."""
        return BlobWriter(self, None, None)

    def add_blob_bytes(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        with self.new_blob() as writer:
            writer.write(data)
        return Descriptor(media_type, writer.digest, len(data))

    def add_blob_file(self, path: Path, media_type: str = "application/octet-stream") -> Descriptor:
        """Copy a file into the store, streamed; the digest is computed on the way in."""
        with self.new_blob() as writer, path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                writer.write(chunk)
        return Descriptor(media_type, writer.digest, writer.size)

    def read_blob(self, digest: str) -> bytes:
        """A whole blob in memory: for manifests and configs, never for weights."""
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise CacheError(f"blob {digest} is not in the cache at {self.root}") from exc

    def open_blob(self, digest: str) -> BinaryIO:
        """A binary file object for streaming a blob."""
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError as exc:
            raise CacheError(f"blob {digest} is not in the cache at {self.root}") from exc

    def put_manifest(self, reference: Reference, manifest: bytes, media_type: str = OCI_IMAGE_MANIFEST) -> str:
        """Store a manifest blob and record it in ``index.json`` under the full reference."""
        descriptor = self.add_blob_bytes(manifest, media_type)
        ref_name = str(reference)
        with self._index_lock():
            index = self._read_index()
            manifests = [
                m for m in index["manifests"] if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != ref_name
            ]
            entry = Descriptor(media_type, descriptor.digest, descriptor.size, {ANNOTATION_REF_NAME: ref_name})
            manifests.append(entry.to_json())
            index["manifests"] = manifests
            _write_atomic(self._index_path, json.dumps(index, indent=2).encode())
        return descriptor.digest

    def resolve(self, reference: Reference) -> tuple[str, bytes] | None:
        """The manifest stored for ``reference`` (by digest, or by the tag recorded in the index)."""
        digest = reference.digest
        if digest is None:
            ref_name = str(reference)
            matches = [
                m["digest"]
                for m in self._read_index()["manifests"]
                if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) == ref_name
            ]
            if not matches:
                return None
            digest = matches[-1]
        if not self.has_blob(digest):
            return None
        return digest, self.read_blob(digest)

    def references(self) -> list[tuple[str, Descriptor]]:
        """Every (reference, manifest descriptor) recorded in the index."""
        out = []
        for m in self._read_index()["manifests"]:
            desc = Descriptor.from_json(m)
            out.append((desc.annotations.get(ANNOTATION_REF_NAME, ""), desc))
        return out

    def unpacked_dir(self, manifest_digest: str) -> Path:
        """The directory a ModelKit is materialized into (not created here)."""
        return self.root / "unpacked" / digest_hex(manifest_digest)

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with FileLock(str(self.root / "index.json.lock"), timeout=60):
            yield

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self._index_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read {self._index_path}: {exc}") from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise CacheError(f"{self._index_path} is not an OCI image index")
        return index
