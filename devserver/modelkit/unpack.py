"""Safe extraction of one ModelKit layer (tar, tar+gzip, tar+zstd, raw) into a directory.

A layer comes from a registry, so it is untrusted: only regular files and directories are accepted,
and every name must stay inside the target after normalisation. Symlinks, hardlinks, devices and
FIFOs are refused outright (kit refuses them too: "unrecognized type in archive"), as are absolute
names and ``..`` escapes. Files are written under a temporary name and renamed when complete, and
on any error everything this call created is removed again, so a refused layer leaves nothing
half-written behind.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

import zstandard

from devserver.errors import ModelKitError, UnsafeArchiveError
from devserver.modelkit import mediatypes

__all__ = ["unpack_layer"]

_CHUNK = 1 << 20


def _safe_relpath(name: str) -> str:
    """The entry name as a clean relative path, or UnsafeArchiveError."""
    if not name or "\0" in name:
        raise UnsafeArchiveError(f"illegal file path {name!r} in layer")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"illegal file path {name!r} in layer: absolute paths are refused")
    clean = posixpath.normpath(name)
    if clean == ".." or clean.startswith("../"):
        raise UnsafeArchiveError(f"illegal file path {name!r} in layer: it escapes the target directory")
    return clean


class _Extraction:
    """Tracks what one layer extraction created so a failure can take it all back."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        self.target = target.resolve()
        self.overwrite = overwrite
        self.created: list[Path] = []

    def path_for(self, name: str) -> Path:
        clean = _safe_relpath(name)
        if clean == ".":
            return self.target
        path = self.target / clean
        # Refuse to follow anything already on disk that would lead outside (a symlinked parent).
        parent = path.parent.resolve()
        if parent != self.target and self.target not in parent.parents:
            raise UnsafeArchiveError(f"illegal file path {name!r} in layer: it escapes the target directory")
        return path

    def mkdir(self, path: Path, mode: int) -> None:
        missing = []
        p = path
        while not p.exists() and p != self.target:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=(mode & 0o777) | 0o700 if d == path else 0o755)
            self.created.append(d)
        if not path.is_dir():
            raise ModelKitError(f"path '{path}' already exists and is not a directory")

    def write_file(self, path: Path, source: BinaryIO, size: int | None, mode: int) -> None:
        if path.exists() and not self.overwrite:
            raise ModelKitError(f"path '{path}' already exists")
        self.mkdir(path.parent, 0o755)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        self.created.append(partial)
        written = 0
        with partial.open("xb") as out:
            while chunk := source.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
        if size is not None and written != size:
            raise ModelKitError(f"layer entry {path.name} is truncated ({written} of {size} bytes)")
        os.chmod(partial, mode & 0o777)
        os.replace(partial, path)
        self.created[-1] = path

    def rollback(self) -> None:
        for path in reversed(self.created):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _decompressed(source: BinaryIO, compression: str) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(source, closefd=False)  # type: ignore[return-value]
    return source


def _extract_tar(stream: BinaryIO, job: _Extraction) -> None:
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isdir():
                    job.mkdir(job.path_for(member.name), member.mode)
                elif member.isreg():
                    path = job.path_for(member.name)
                    if path == job.target:
                        raise UnsafeArchiveError(f"illegal file path {member.name!r} in layer")
                    data = tar.extractfile(member)
                    assert data is not None  # regular members always have data
                    job.write_file(path, data, member.size, member.mode)
                else:
                    kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "special file"
                    raise UnsafeArchiveError(
                        f"layer entry {member.name!r} is a {kind}; only regular files and directories are accepted"
                    )
    except tarfile.TarError as exc:
        raise ModelKitError(f"layer is not a valid tar archive: {exc}") from exc


def _raw_mode(annotations: dict[str, str]) -> int:
    try:
        return int(json.loads(annotations.get(mediatypes.ANNOTATION_FILE_METADATA, "{}")).get("mode", 0o644))
    except (ValueError, AttributeError, TypeError):
        return 0o644


def unpack_layer(
    source: BinaryIO,
    media_type: str,
    target: Path,
    *,
    annotations: dict[str, str] | None = None,
    overwrite: bool = False,
) -> None:
    """Extract the layer read from ``source`` into ``target`` (created if missing).

    ``annotations`` are the layer descriptor's: a raw layer needs ``org.cncf.model.filepath``.
    Raises UnsafeArchiveError for escaping names or links, ModelKitError for anything malformed;
    either way nothing this call wrote is left behind.
    """
    kind = mediatypes.parse_layer_media_type(media_type)
    target.mkdir(parents=True, exist_ok=True)
    job = _Extraction(target, overwrite)
    try:
        stream = _decompressed(source, kind.compression)
        if kind.format == "tar":
            _extract_tar(stream, job)
        else:
            filepath = (annotations or {}).get(mediatypes.ANNOTATION_FILEPATH)
            if not filepath:
                raise ModelKitError(f"raw layer ({media_type}) has no {mediatypes.ANNOTATION_FILEPATH} annotation")
            job.write_file(job.path_for(filepath), stream, None, _raw_mode(annotations or {}))
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        job.rollback()
        raise ModelKitError(f"cannot unpack layer ({media_type}): {exc}") from exc
    except BaseException:
        job.rollback()
        raise
