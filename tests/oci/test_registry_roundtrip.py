"""Pack → push → pull → materialize against a real docker-registry, plus tampered content."""

import os
from pathlib import Path

import pytest

from devserver.errors import DigestMismatch
from devserver.modelkit.layers import match_layers, parse_manifest
from devserver.modelkit.materialize import materialize
from devserver.modelkit.pack import PackResult, pack_modelkit
from devserver.oci.pull import pull_modelkit
from devserver.oci.push import push_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore
from tests.support.static_registry import static_registry

pytestmark = pytest.mark.slow


def packed(tmp_path: Path) -> tuple[LocalStore, PackResult]:
    ctx = tmp_path / "ctx"
    (ctx / "model" / "lora").mkdir(parents=True)
    (ctx / "data").mkdir()
    (ctx / "src").mkdir()
    (ctx / "model" / "m.gguf").write_bytes(os.urandom(300_000))
    (ctx / "model" / "lora" / "adapter.gguf").write_bytes(b"lora")
    (ctx / "data" / "train.jsonl").write_text('{"x": 1}\n' * 100)
    (ctx / "src" / "run.py").write_text("print('hi')\n")
    (ctx / "README.md").write_text("# model\n")
    (ctx / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: rt\nmodel:\n  name: m\n  path: model\n"
        "  parts:\n    - name: lora\n      path: model/lora\n      type: lora-adapter\n"
        "code:\n  - path: src\ndatasets:\n  - name: train\n    path: data\ndocs:\n  - path: README.md\n"
    )
    store = LocalStore(tmp_path / "source-store")
    return store, pack_modelkit(ctx, store)


def test_push_then_pull_all_is_byte_identical(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    source, result = packed(tmp_path)
    ref = parse_reference(f"{registry.host}/org/rt:1")
    # A small monolithic limit makes the 300 kB model layer go up in PATCH chunks.
    with RegistryClient(registry.host, monolithic_limit=64 * 1024) as client:
        assert push_modelkit(ref, source, client=client, source=result.reference) == result.manifest_digest
    target = LocalStore(tmp_path / "target-store")
    pulled = pull_modelkit(ref, target, layers="all")
    assert pulled.manifest_digest == result.manifest_digest
    assert target.resolve(ref) == (result.manifest_digest, result.manifest)
    for descriptor in [result.config_descriptor, *result.layers]:
        assert target.read_blob(descriptor.digest) == source.read_blob(descriptor.digest)
    # A second push finds every blob there already and only re-puts the manifest.
    assert push_modelkit(ref, target) == result.manifest_digest


def test_serving_pull_fetches_only_config_model_and_parts(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    source, result = packed(tmp_path)
    ref = parse_reference(f"{registry.host}/org/rt:serve")
    push_modelkit(ref, source, source=result.reference)
    before = len(registry.blob_gets())

    target = LocalStore(tmp_path / "target-store")
    pulled = pull_modelkit(ref, target, layers="serving")
    model, part = result.layers[0], result.layers[1]
    expected = {result.config_descriptor.digest, model.digest, part.digest}
    assert sorted(registry.blob_gets()[before:]) == sorted(expected)
    assert set(pulled.fetched) == expected
    for other in result.layers[2:]:
        assert not target.has_blob(other.digest)

    after_first = len(registry.blob_gets())
    again = pull_modelkit(ref, target, layers="serving")
    assert again.fetched == []
    assert registry.blob_gets()[after_first:] == []

    root = materialize(target, pulled.manifest_digest)
    assert root == target.unpacked_dir(pulled.manifest_digest)
    assert (root / "model" / "m.gguf").read_bytes() == (tmp_path / "ctx" / "model" / "m.gguf").read_bytes()
    assert (root / "model" / "lora" / "adapter.gguf").read_bytes() == b"lora"
    assert not (root / "data").exists() and not (root / "src").exists()
    mtime = (root / "model" / "m.gguf").stat().st_mtime_ns
    assert materialize(target, pulled.manifest_digest) == root
    assert (root / "model" / "m.gguf").stat().st_mtime_ns == mtime  # reused, not unpacked again


def test_tampered_blob_from_a_registry_is_refused(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    manifest = parse_manifest(result.manifest)
    matched = match_layers(manifest, result.config)
    model = matched[0].descriptor
    routes = {
        "/v2/org/rt/manifests/1": (result.manifest, "application/vnd.oci.image.manifest.v1+json"),
        f"/v2/org/rt/blobs/{manifest.config.digest}": (source.read_blob(manifest.config.digest), "application/json"),
    }
    good = source.read_blob(model.digest)
    bad = good[:-1] + bytes([good[-1] ^ 1])  # same size, one bit flipped
    routes[f"/v2/org/rt/blobs/{model.digest}"] = (bad, "application/octet-stream")
    target = LocalStore(tmp_path / "target-store")
    with static_registry(routes) as host:
        ref = parse_reference(f"{host}/org/rt:1")
        with pytest.raises(DigestMismatch):
            pull_modelkit(ref, target, layers="serving")
    assert not target.has_blob(model.digest)
    assert list((target.root / "ingest").iterdir()) == []
    assert target.resolve(ref) is None  # the manifest is only recorded once its blobs are in


def test_tampered_blob_in_the_store_is_refused_at_materialize(tmp_path: Path) -> None:
    store, result = packed(tmp_path)
    path = store.blob_path(result.layers[0].digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-2000] ^= 0xFF  # inside the weights, so the tar still parses
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        materialize(store, result.manifest_digest)
    assert not store.unpacked_dir(result.manifest_digest).exists()
    assert list((store.root / "unpacked").iterdir()) == []
