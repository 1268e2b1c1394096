"""The cache under stress: dropped connections resume with Range, 5xx retried, corrupt blobs refetched,
full disks refused up front, concurrent pulls share downloads, a down registry fails fast or is
bypassed for a cached reference, and kit's own storage is served without the network."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter, namedtuple
from pathlib import Path

import pytest

from devserver.errors import CacheError, RegistryUnreachable
from devserver.modelkit.pack import PackResult, pack_modelkit
from devserver.oci.pull import pull_modelkit
from devserver.oci.push import push_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore
from devserver.resolve import resolve_reference
from tests.support.flaky_registry import FlakyRoutes, flaky_registry
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = os.urandom(3 << 20)


def packed(tmp_path: Path, weights: bytes = WEIGHTS) -> tuple[LocalStore, PackResult]:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "model.gguf").write_bytes(weights)
    (ctx / "README.md").write_text("# m\n")
    (ctx / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: cached\n  authors: [Ada]\nmodel:\n  name: m\n  path: model.gguf\n"
        "docs:\n  - path: README.md\n"
    )
    store = LocalStore(tmp_path / "source")
    return store, pack_modelkit(ctx, store)


def routes_for(store: LocalStore, result: PackResult, repo: str = "org/m", tag: str = "1") -> FlakyRoutes:
    routes = {f"/v2/{repo}/manifests/{tag}": (result.manifest, "application/vnd.oci.image.manifest.v1+json")}
    for descriptor in [result.config_descriptor, *result.layers]:
        routes[f"/v2/{repo}/blobs/{descriptor.digest}"] = (
            store.read_blob(descriptor.digest),
            "application/octet-stream",
        )
    return FlakyRoutes(routes)


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    model = result.layers[0]
    spec = routes_for(source, result)
    spec.cut.add(model.digest)
    target = LocalStore(tmp_path / "target")
    with flaky_registry(spec) as host:
        pulled = pull_modelkit(parse_reference(f"{host}/org/m:1"), target)
    ranges = [r for path, r in spec.seen if path.endswith(model.digest)]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:].rstrip("-")) > 0  # resumed from where the first transfer broke off
    assert target.verify_blob(model.digest, model.size)
    assert model.digest in pulled.fetched
    assert list((target.root / "ingest").iterdir()) == []


def test_a_partial_download_from_an_earlier_run_is_resumed(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    model = result.layers[0]
    target = LocalStore(tmp_path / "target")
    partial = source.read_blob(model.digest)[: model.size // 3]
    (target.root / "ingest" / model.digest.removeprefix("sha256:")).write_bytes(partial)
    spec = routes_for(source, result)
    with flaky_registry(spec) as host:
        pull_modelkit(parse_reference(f"{host}/org/m:1"), target)
    assert (f"/v2/org/m/blobs/{model.digest}", f"bytes={len(partial)}-") in spec.seen
    assert target.verify_blob(model.digest, model.size)


def test_5xx_is_retried_with_backoff(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    spec = routes_for(source, result)
    spec.fail_first["/v2/org/m/manifests/1"] = 2
    spec.fail_first[f"/v2/org/m/blobs/{result.layers[0].digest}"] = 2
    with flaky_registry(spec) as host:
        pulled = pull_modelkit(parse_reference(f"{host}/org/m:1"), LocalStore(tmp_path / "target"))
    assert pulled.manifest_digest == result.manifest_digest


def test_wrong_bytes_after_a_resume_are_refused_and_nothing_is_visible(tmp_path: Path) -> None:
    source, result = packed(tmp_path)
    model = result.layers[0]
    spec = routes_for(source, result)
    good, media = spec.routes[f"/v2/org/m/blobs/{model.digest}"]
    spec.routes[f"/v2/org/m/blobs/{model.digest}"] = (good[:-10] + b"x" * 10, media)
    spec.cut.add(model.digest)
    target = LocalStore(tmp_path / "target")
    with flaky_registry(spec) as host, pytest.raises(Exception, match="does not match"):
        pull_modelkit(parse_reference(f"{host}/org/m:1"), target)
    assert not target.has_blob(model.digest)
    assert list((target.root / "ingest").iterdir()) == []
    assert target.resolve(parse_reference(f"{host}/org/m:1")) is None


def test_a_pull_that_cannot_fit_is_refused_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, result = packed(tmp_path)
    spec = routes_for(source, result)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1024))
    target = LocalStore(tmp_path / "target")
    with flaky_registry(spec) as host, pytest.raises(CacheError) as err:
        pull_modelkit(parse_reference(f"{host}/org/m:1"), target)
    assert "1.0 KiB" in err.value.message and "3.0 MiB" in err.value.message
    assert not any(p.endswith(result.layers[0].digest) for p, _ in spec.seen)  # no layer byte was asked for


@pytest.mark.slow
def test_a_corrupt_cached_blob_is_discarded_and_fetched_again(tmp_path: Path, registry: RegistryProcess) -> None:
    source, result = packed(tmp_path)
    ref = parse_reference(f"{registry.host}/org/m:1")
    push_modelkit(ref, source, source=result.reference)
    target = LocalStore(tmp_path / "target")
    pull_modelkit(ref, target)
    path = target.blob_path(result.layers[0].digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"bit rot")
    resolved = resolve_reference(str(ref), target)  # the cached copy fails to verify while unpacking
    assert resolved.model_path.read_bytes() == WEIGHTS
    assert target.verify_blob(result.layers[0].digest, result.layers[0].size)
    assert Counter(registry.blob_gets())[result.layers[0].digest] == 2


@pytest.mark.slow
def test_unreachable_registry_serves_the_cached_reference_with_a_warning(
    tmp_path: Path, registry: RegistryProcess, caplog: pytest.LogCaptureFixture
) -> None:
    source, result = packed(tmp_path)
    ref = parse_reference(f"{registry.host}/org/m:1")
    push_modelkit(ref, source, source=result.reference)
    target = LocalStore(tmp_path / "target")
    resolve_reference(str(ref), target)
    registry.stop()
    with caplog.at_level(logging.WARNING):
        resolved = resolve_reference(str(ref), target)
    assert resolved.source == "cache" and resolved.model_path.read_bytes() == WEIGHTS
    assert any(registry.host in r.message and "from the cache" in r.message for r in caplog.records)


def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full, so a new connection's SYN goes unanswered (a hung host)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    time.sleep(0.2)
    return listener, fillers


@pytest.mark.parametrize("kind", ["closed port", "hung host"])
def test_a_down_registry_fails_within_5_seconds_naming_host_and_cause(kind: str) -> None:
    listener, fillers = _blackhole() if kind == "hung host" else (None, [])
    host = f"127.0.0.1:{listener.getsockname()[1] if listener else free_port()}"
    started = time.monotonic()
    try:
        with RegistryClient(host) as client, pytest.raises(RegistryUnreachable) as err:
            client.get_manifest("org/m", "1")
    finally:
        for sock in [*fillers, *([listener] if listener else [])]:
            sock.close()
    assert time.monotonic() - started < 5
    assert host in err.value.message and ("timed out" in err.value.message or "cannot reach" in err.value.message)


def test_the_cli_reports_a_down_registry_within_5_seconds(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "devserver.cli", "pull", f"{host}/org/m:1", "--cache-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert time.monotonic() - started < 5 + 2  # the interpreter's own start-up on top of the 5 s bound
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and host in lines[0] and "refused" in lines[0].lower()


@pytest.mark.slow
def test_two_concurrent_pulls_download_each_blob_once(tmp_path: Path, registry: RegistryProcess) -> None:
    source, result = packed(tmp_path, os.urandom(24 << 20))
    ref = f"{registry.host}/org/m:1"
    push_modelkit(parse_reference(ref), source, source=result.reference)
    cache = tmp_path / "shared-cache"
    command = [sys.executable, "-m", "devserver.cli", "pull", ref, "--cache-dir", str(cache)]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    counts = Counter(registry.blob_gets())
    assert all(counts[d.digest] == 1 for d in [result.config_descriptor, *result.layers]), counts


def test_a_reference_in_kits_storage_is_served_without_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, result = packed(tmp_path)
    host = f"127.0.0.1:{free_port()}"  # nothing listens: any network call would fail
    ref = parse_reference(f"{host}/org/m:1")
    storage = tmp_path / "kitops-home" / "storage"  # kit's layout, written the way kit writes it
    (storage / "blobs" / "sha256").mkdir(parents=True)
    for descriptor in [result.config_descriptor, *result.layers]:
        shutil.copyfile(source.blob_path(descriptor.digest), storage / "blobs" / "sha256" / descriptor.digest[7:])
    (storage / "blobs" / "sha256" / result.manifest_digest[7:]).write_bytes(result.manifest)
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": result.manifest_digest,
                  "size": len(result.manifest)}  # fmt: skip
    key = base64.urlsafe_b64encode(f"{host}/org/m".encode()).decode()
    (storage / f"{key}-index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (storage / f"{key}-tags.json").write_text(json.dumps({"1": descriptor}))
    (storage / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (storage / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    monkeypatch.setenv("KITOPS_HOME", str(storage.parent))
    resolved = resolve_reference(str(ref), LocalStore(tmp_path / "cache"))
    assert resolved.source == "kit" and resolved.model_path.read_bytes() == WEIGHTS
    assert resolved.digest == result.manifest_digest
