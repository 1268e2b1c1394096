"""Untrusted layers: escapes and links are refused and nothing is left behind."""

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from devserver.errors import ModelKitError, UnsafeArchiveError
from devserver.modelkit.unpack import unpack_layer

TAR = "application/vnd.kitops.modelkit.model.v1.tar"


def build_tar(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """(name, data or None, typeflag) → tar bytes; symlink/hardlink targets go in data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            elif kind == tarfile.DIRTYPE:
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_regular_layers_unpack_with_modes(tmp_path: Path) -> None:
    data = build_tar(("model", None, tarfile.DIRTYPE), ("model/w.gguf", b"weights", tarfile.REGTYPE))
    unpack_layer(io.BytesIO(data), TAR, tmp_path)
    assert (tmp_path / "model" / "w.gguf").read_bytes() == b"weights"
    assert (tmp_path / "model" / "w.gguf").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers(tmp_path: Path, compression: str) -> None:
    data = build_tar(("a.txt", b"hello", tarfile.REGTYPE))
    packed = gzip.compress(data) if compression == "gzip" else zstandard.ZstdCompressor().compress(data)
    unpack_layer(io.BytesIO(packed), f"{TAR}+{compression}", tmp_path)
    assert (tmp_path / "a.txt").read_bytes() == b"hello"


def test_raw_layer_uses_the_filepath_annotation(tmp_path: Path) -> None:
    unpack_layer(
        io.BytesIO(b"gguf"),
        "application/vnd.kitops.modelkit.model.v1.raw",
        tmp_path,
        annotations={"org.cncf.model.filepath": "models/m.gguf"},
    )
    assert (tmp_path / "models" / "m.gguf").read_bytes() == b"gguf"
    with pytest.raises(ModelKitError, match="filepath"):
        unpack_layer(io.BytesIO(b"x"), "application/vnd.kitops.modelkit.model.v1.raw", tmp_path / "other")
    with pytest.raises(UnsafeArchiveError):
        unpack_layer(
            io.BytesIO(b"x"),
            "application/vnd.kitops.modelkit.model.v1.raw",
            tmp_path / "third",
            annotations={"org.cncf.model.filepath": "../escape"},
        )


@pytest.mark.parametrize(
    "members",
    [
        [("../evil.txt", b"x", tarfile.REGTYPE)],
        [("model/../../evil.txt", b"x", tarfile.REGTYPE)],
        [("/tmp/evil.txt", b"x", tarfile.REGTYPE)],
        [("model/ok.txt", b"fine", tarfile.REGTYPE), ("model/link", b"/etc/passwd", tarfile.SYMTYPE)],
        [("model/ok.txt", b"fine", tarfile.REGTYPE), ("model/hard", b"model/ok.txt", tarfile.LNKTYPE)],
        [("model/dev", None, tarfile.CHRTYPE)],
        [("model/fifo", None, tarfile.FIFOTYPE)],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "chardev", "fifo"],
)
def test_malicious_layers_are_refused_and_leave_nothing(tmp_path: Path, members: list) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "existing.txt").write_text("kept")
    with pytest.raises(UnsafeArchiveError):
        unpack_layer(io.BytesIO(build_tar(*members)), TAR, target)
    assert listing(target) == ["existing.txt"]
    assert not (tmp_path / "evil.txt").exists()


def test_symlinked_directory_on_disk_is_not_followed(tmp_path: Path) -> None:
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "model").symlink_to(outside)
    with pytest.raises(UnsafeArchiveError):
        unpack_layer(io.BytesIO(build_tar(("model/w.bin", b"x", tarfile.REGTYPE))), TAR, target)
    assert list(outside.iterdir()) == []


def test_truncated_layer_leaves_nothing(tmp_path: Path) -> None:
    data = build_tar(("a.txt", b"y" * 4096, tarfile.REGTYPE))[:1500]
    with pytest.raises(ModelKitError):
        unpack_layer(io.BytesIO(data), TAR, tmp_path)
    assert listing(tmp_path) == []


def test_existing_files_are_not_overwritten_unless_asked(tmp_path: Path) -> None:
    data = build_tar(("a.txt", b"new", tarfile.REGTYPE))
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(ModelKitError, match="already exists"):
        unpack_layer(io.BytesIO(data), TAR, tmp_path)
    unpack_layer(io.BytesIO(data), TAR, tmp_path, overwrite=True)
    assert (tmp_path / "a.txt").read_text() == "new"
