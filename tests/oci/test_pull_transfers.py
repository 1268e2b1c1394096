"""A pull's transfers: a corrupt blob fails the pull at once and stops the others, a Kitfile that
fails validation fetches no layer, and the pull path does not import the YAML reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devserver.errors import DigestMismatch, KitfileError
from devserver.modelkit.pack import PackResult, pack_modelkit
from devserver.oci.descriptor import sha256_digest
from devserver.oci.pull import pull_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.store import LocalStore
from tests.support.flaky_registry import FlakyRoutes, flaky_registry

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = os.urandom(8 << 20)
TRICKLE = 0.05  # seconds between 64 KiB pieces: the 8 MiB model would take ~6.4 s to arrive


def packed(tmp_path: Path) -> tuple[LocalStore, PackResult]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "model.gguf").write_bytes(WEIGHTS)
    (ctx / "README.md").write_text("# m\n" * 4096)
    (ctx / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: t\nmodel:\n  name: m\n  path: model.gguf\n"
        "docs:\n  - path: README.md\n"
    )
    store = LocalStore(tmp_path / "source")
    return store, pack_modelkit(ctx, store)


def routes_for(store: LocalStore, result: PackResult) -> FlakyRoutes:
    routes = {"/v2/org/m/manifests/1": (result.manifest, "application/vnd.oci.image.manifest.v1+json")}
    for descriptor in [result.config_descriptor, *result.layers]:
        body = store.read_blob(descriptor.digest)
        routes[f"/v2/org/m/blobs/{descriptor.digest}"] = (body, "application/octet-stream")
    return FlakyRoutes(routes)


def test_a_kitfile_that_fails_validation_fetches_no_layer(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    spec = routes_for(source, result)
    # The same manifest with a config that is not a Kitfile (kit would refuse it the same way).
    config = json.dumps({"manifestVersion": "1.0.0", "model": {"name": ["not", "a", "name"]}}).encode()
    manifest = json.loads(result.manifest)
    manifest["config"].update(digest=sha256_digest(config), size=len(config))
    spec.routes["/v2/org/m/manifests/1"] = (json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    spec.routes[f"/v2/org/m/blobs/{sha256_digest(config)}"] = (config, "application/json")
    target = LocalStore(tmp_path / "target")
    with flaky_registry(spec) as host:
        ref = parse_reference(f"{host}/org/m:1")
        with pytest.raises(KitfileError, match="not a valid Kitfile"):
            pull_modelkit(ref, target, layers="all")
    assert not any(path.endswith(layer.digest) for path, _ in spec.seen for layer in result.layers)
    assert target.resolve(ref) is None


def test_a_corrupt_blob_fails_the_pull_at_once_and_stops_the_others(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    spec = routes_for(source, result)
    model, docs = result.layers[0], result.layers[1]
    spec.slow[model.digest] = TRICKLE
    good, media = spec.routes[f"/v2/org/m/blobs/{docs.digest}"]
    spec.routes[f"/v2/org/m/blobs/{docs.digest}"] = (good[:-1] + bytes([good[-1] ^ 1]), media)
    target = LocalStore(tmp_path / "target")
    with flaky_registry(spec) as host:
        ref = parse_reference(f"{host}/org/m:1")
        began = time.monotonic()
        with pytest.raises(DigestMismatch):
            pull_modelkit(ref, target, layers="all")
        elapsed = time.monotonic() - began
    assert elapsed < 4.0  # reported when it happened, not after the slow model finished
    assert not target.has_blob(model.digest) and not target.has_blob(docs.digest)
    assert not (target.root / "ingest" / docs.digest.removeprefix("sha256:")).exists()  # wrong bytes: gone
    assert target.resolve(ref) is None


def test_the_pull_path_leaves_the_yaml_reader_and_httpx_alone() -> None:
    """A pull reads the Kitfile from JSON; ruamel.yaml (~25 ms to import) is for Kitfile files."""
    unwanted = ("ruamel.yaml", "httpx", "rich")
    code = f"import sys, devserver.oci.pull, devserver.oci.progress; print([m for m in {unwanted} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
