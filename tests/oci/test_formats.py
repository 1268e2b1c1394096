"""Every ModelKit format kit has written, pushed as the spec defines it, pulled and unpacked by kit-dev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devserver.errors import ModelKitError
from devserver.modelkit.materialize import materialize
from devserver.oci.inspect import inspect_modelkit
from devserver.oci.options import RegistryOptions
from devserver.oci.pull import pull_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.store import LocalStore
from devserver.resolve import resolve_reference, unpack_to_directory
from tests.support.modelkits import (
    INDEX_ARTIFACT,
    OCI_INDEX,
    Layer,
    digest_of,
    kit_layer,
    manifest_bytes,
    push,
    push_kit,
    tar_bytes,
)
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.slow

MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
WEIGHTS = b"GGUF" + bytes(range(256)) * 40
KITFILE = {"manifestVersion": "1.0.0", "package": {"name": "fmt"}, "model": {"name": "m", "path": "model.gguf"}}


@pytest.mark.parametrize(
    ("fmt", "compression"), [("tar", "none"), ("tar", "gzip"), ("tar", "zstd"), ("raw", "none"), ("raw", "zstd")]
)
def test_each_layer_format_pulls_and_unpacks(registry: RegistryProcess, tmp_path: Path, fmt: str, compression: str):
    layers = [kit_layer("model", "model.gguf", {"model.gguf": WEIGHTS}, fmt=fmt, compression=compression)]
    push_kit(registry.url, "fmt/m", "1", KITFILE, layers)
    store = LocalStore(tmp_path / "cache")
    resolved = resolve_reference(f"{registry.host}/fmt/m:1", store)
    assert resolved.model_path.read_bytes() == WEIGHTS
    assert resolved.source == "registry" and resolved.cache_misses == 2


@pytest.mark.parametrize(
    ("artifact_type", "config_type"),
    [(None, "application/vnd.kitops.modelkit.config.v1+json"),  # kit v1.7: no artifactType
     ("application/vnd.kitops.modelkit.manifest.v1+json", "application/vnd.oci.empty.v1+json")],
)  # fmt: skip
def test_manifest_recognised_by_artifact_type_or_config_type(
    registry: RegistryProcess, tmp_path: Path, artifact_type: str | None, config_type: str
) -> None:
    layers = [kit_layer("model", "model.gguf", {"model.gguf": WEIGHTS})]
    push_kit(registry.url, "fmt/rec", "1", KITFILE, layers, artifact_type=artifact_type, config_type=config_type)
    resolved = resolve_reference(f"{registry.host}/fmt/rec:1", LocalStore(tmp_path / "cache"))
    assert resolved.model_path.read_bytes() == WEIGHTS


def test_not_a_modelkit_is_refused(registry: RegistryProcess, tmp_path: Path) -> None:
    layers = [kit_layer("model", "model.gguf", {"model.gguf": WEIGHTS})]
    push_kit(registry.url, "fmt/img", "1", KITFILE, layers, artifact_type=None,
             config_type="application/vnd.oci.image.config.v1+json")  # fmt: skip
    with pytest.raises(ModelKitError, match="not a modelkit"):
        resolve_reference(f"{registry.host}/fmt/img:1", LocalStore(tmp_path / "cache"))


def test_pre_v05_modelkit_matches_by_position_with_the_legacy_layout(registry: RegistryProcess, tmp_path: Path):
    # Before kit v0.5: no digests in the config, every layer +gzip, tar names relative to the path's parent.
    kitfile = {
        "manifestVersion": "1.0.0",
        "package": {"name": "old"},
        "model": {"name": "m", "path": "models/m.gguf", "parts": [{"name": "p", "path": "models/lora"}]},
        "code": [{"path": "src"}],
    }
    layers = [
        kit_layer("model", "", {"m.gguf": WEIGHTS}, compression="gzip"),
        kit_layer("modelpart", "", {"lora/a.gguf": b"adapter"}, compression="gzip"),
        kit_layer("code", "", {"src/run.py": b"print(1)\n"}, compression="gzip"),
    ]
    for layer in layers:
        layer.annotations = {}  # kit before v1.x wrote no layer annotations
    push_kit(registry.url, "fmt/old", "1", kitfile, layers, with_digests=False, artifact_type=None)
    store = LocalStore(tmp_path / "cache")
    resolved = resolve_reference(f"{registry.host}/fmt/old:1", store)
    assert (resolved.root / "models" / "m.gguf").read_bytes() == WEIGHTS
    assert (resolved.root / "models" / "lora" / "a.gguf").read_bytes() == b"adapter"
    out = tmp_path / "out"
    unpack_to_directory(f"{registry.host}/fmt/old:1", store, out, ["code"])
    assert (out / "src" / "run.py").read_text() == "print(1)\n"


def test_prompts_and_mcp_bundles_are_stored_and_unpacked_not_served(registry: RegistryProcess, tmp_path: Path):
    kitfile = {
        **KITFILE,
        "prompts": [{"name": "sys", "path": "prompts/system.md"}],
        "mcpServers": [{"name": "tools", "path": "tools.mcpb"}],
    }
    layers = [
        kit_layer("model", "model.gguf", {"model.gguf": WEIGHTS}),
        kit_layer("code", "prompts/system.md", {"prompts/system.md": b"Be brief."},
                  annotations={"ml.kitops.modelkit.layer-subtype": "prompt"}),
        kit_layer("mcpb", "tools.mcpb", {"tools.mcpb": b"PK\x03\x04zip"}, fmt="raw"),
    ]  # fmt: skip
    ref = f"{registry.host}/fmt/extras:1"
    push_kit(registry.url, "fmt/extras", "1", kitfile, layers)
    store = LocalStore(tmp_path / "cache")
    pulled = pull_modelkit(parse_reference(ref), store)
    assert all(store.has_blob(digest_of(layer.data)) for layer in layers)  # stored
    served = materialize(store, pulled.manifest_digest)
    assert (served / "model.gguf").exists() and not (served / "tools.mcpb").exists()  # not served
    out = tmp_path / "out"
    unpack_to_directory(ref, store, out, ["prompts", "mcpservers:tools"])
    assert (out / "prompts" / "system.md").read_text() == "Be brief."
    assert (out / "tools.mcpb").read_bytes() == b"PK\x03\x04zip"
    assert not (out / "model.gguf").exists() and not (out / "Kitfile").exists()


def test_modelkit_index_lists_and_picks_an_entry(registry: RegistryProcess, tmp_path: Path) -> None:
    digests = []
    for name, weights in (("cpu", b"GGUF-cpu"), ("gpu", b"GGUF-gpu")):
        layers = [kit_layer("model", "model.gguf", {"model.gguf": weights})]
        digests.append(push_kit(registry.url, "fmt/idx", name, KITFILE, layers))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": INDEX_ARTIFACT,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1,
             "modelMetadata": {"variant": v}} for d, v in zip(digests, ("cpu", "gpu"), strict=True)
        ],
    }  # fmt: skip
    for entry, name in zip(index["manifests"], ("cpu", "gpu"), strict=True):
        entry["size"] = len(_manifest_of(registry, name))
    push(registry.url, "fmt/idx", "all", [], json.dumps(index).encode(), OCI_INDEX)
    ref = f"{registry.host}/fmt/idx:all"
    store = LocalStore(tmp_path / "cache")
    assert resolve_reference(ref, store).model_path.read_bytes() == b"GGUF-cpu"  # the first by default
    assert resolve_reference(ref, store, index_entry="gpu").model_path.read_bytes() == b"GGUF-gpu"
    listing = inspect_modelkit(ref, store, RegistryOptions())
    assert [e["modelMetadata"] for e in listing["entries"]] == [{"variant": "cpu"}, {"variant": "gpu"}]
    with pytest.raises(ModelKitError, match="no entry 'tpu'"):
        resolve_reference(ref, LocalStore(tmp_path / "other"), index_entry="tpu")


def _manifest_of(registry: RegistryProcess, tag: str) -> bytes:
    import httpx

    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    return httpx.get(f"{registry.url}/v2/fmt/idx/manifests/{tag}", headers=accept).content


@pytest.mark.parametrize("with_kitfile_annotation", [True, False])
def test_modelpack_manifests(registry: RegistryProcess, tmp_path: Path, with_kitfile_annotation: bool) -> None:
    weights = Layer("application/vnd.cncf.model.weight.v1.raw", WEIGHTS, digest_of(WEIGHTS),
                    {"org.cncf.model.filepath": "model.gguf"})  # fmt: skip
    cfg_tar = tar_bytes({"config.json": b"{}"})
    config_layer = Layer("application/vnd.cncf.model.weight.config.v1.tar", cfg_tar, digest_of(cfg_tar),
                         {"org.cncf.model.filepath": "config.json"})  # fmt: skip
    layers = [weights, config_layer]
    modelfs = {"type": "layers", "diffIds": [weights.diff_id, config_layer.diff_id]}
    config = json.dumps({"descriptor": {"name": "mp"}, "modelfs": modelfs, "config": {"format": "gguf"}}).encode()
    annotations = {}
    if with_kitfile_annotation:
        kitfile = {"manifestVersion": "1.0.0", "package": {"name": "mp"},
                   "model": {"name": "mp-model", "path": "model.gguf", "digest": digest_of(WEIGHTS),
                             "parts": [{"path": "config.json", "digest": digest_of(cfg_tar)}]}}  # fmt: skip
        annotations["ml.kitops.modelkit.kitfile"] = json.dumps(kitfile)
    manifest = manifest_bytes(
        config, MODELPACK_CONFIG, layers, artifact_type=MODELPACK_ARTIFACT, annotations=annotations
    )
    push(registry.url, "fmt/mp", "1", [config, WEIGHTS, cfg_tar], manifest)
    resolved = resolve_reference(f"{registry.host}/fmt/mp:1", LocalStore(tmp_path / "cache"))
    assert resolved.model_path.read_bytes() == WEIGHTS
    assert (resolved.root / "config.json").read_bytes() == b"{}"
    assert resolved.model_id == ("mp-model" if with_kitfile_annotation else "mp")
