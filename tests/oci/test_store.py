"""The local store: verified ingest, atomic publish, index by full reference."""

import json
import stat
from pathlib import Path

import pytest

from devserver.errors import CacheError, DigestMismatch, ModelKitError
from devserver.oci.descriptor import sha256_digest
from devserver.oci.reference import parse_reference
from devserver.oci.store import LocalStore


def test_layout_is_an_oci_image_layout(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "index.json").read_text()) == {"schemaVersion": 2, "manifests": []}
    assert (tmp_path / "blobs" / "sha256").is_dir() and (tmp_path / "ingest").is_dir()
    assert store.unpacked_dir("sha256:" + "a" * 64) == tmp_path / "unpacked" / ("a" * 64)


def test_ingest_verifies_and_publishes_read_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = b"hello blob"
    digest = sha256_digest(data)
    with store.ingest(digest, len(data)) as writer:
        writer.write(data[:4])
        assert not store.has_blob(digest)  # invisible until committed
        writer.write(data[4:])
    assert store.read_blob(digest) == data
    assert stat.S_IMODE(store.blob_path(digest).stat().st_mode) == 0o444
    assert list((tmp_path / "ingest").iterdir()) == []


@pytest.mark.parametrize("payload", [b"wrong bytes!", b"short", b"hello blob and more"])
def test_mismatch_leaves_nothing_visible(tmp_path: Path, payload: bytes) -> None:
    store = LocalStore(tmp_path)
    digest = sha256_digest(b"hello blob")
    with pytest.raises(DigestMismatch), store.ingest(digest, len(b"hello blob")) as writer:
        writer.write(payload)
    assert not store.has_blob(digest)
    assert list((tmp_path / "ingest").iterdir()) == []
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_an_existing_blob_is_success(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.add_blob_bytes(b"same")
    second = store.add_blob_bytes(b"same")
    assert first == second
    source = tmp_path / "f.bin"
    source.write_bytes(b"same")
    assert store.add_blob_file(source).digest == first.digest


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "x"])
def test_digests_are_validated_before_becoming_paths(tmp_path: Path, digest: str) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ModelKitError):
        store.blob_path(digest)
    with pytest.raises(ModelKitError):
        store.ingest(digest, 1)


def test_manifests_are_indexed_by_full_reference(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ref = parse_reference("localhost:5000/org/m:1")
    first = store.put_manifest(ref, b'{"v":1}')
    assert store.resolve(ref) == (first, b'{"v":1}')
    second = store.put_manifest(ref, b'{"v":2}')  # re-tag replaces the entry
    assert store.resolve(ref) == (second, b'{"v":2}')
    assert store.resolve(ref.with_digest(first)) == (first, b'{"v":1}')
    assert store.resolve(parse_reference("localhost:5000/org/m:2")) is None
    index = json.loads((tmp_path / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "localhost:5000/org/m:1"
    ]
    assert [r for r, _ in store.references()] == ["localhost:5000/org/m:1"]


def test_missing_blob_is_a_cache_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError):
        LocalStore(tmp_path).read_blob("sha256:" + "b" * 64)


def test_unusable_root_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError):
        LocalStore(tmp_path / "file" / "store")
