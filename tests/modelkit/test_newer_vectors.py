"""The vectors of newer kit (ModelPack → Kitfile), the ModelKit-reference chain, and the older dialect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from devserver.errors import KitfileError, ModelKitError
from devserver.modelkit.dialect import parse_any_kitfile
from devserver.modelkit.modelpack import kitfile_from_modelpack
from devserver.modelkit.pack import pack_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.store import LocalStore
from devserver.resolve import resolve_reference, unpack_to_directory
from tests.support.kitops_vectors import kitops_vector, vectors_dir


@pytest.mark.parametrize(
    "name", ["test-kitfile-for-manifest-and-config.yaml", "test-manifest-with-multiple-model-weights.yaml"]
)
def test_modelpack_kitfile_generation(name: str) -> None:
    case = yaml.safe_load(kitops_vector(f"kitops-newer/modelpack-kitfile-generation/{name}").read_text())
    kitfile = kitfile_from_modelpack(json.loads(case["manifestJson"]), json.loads(case["configJson"]))
    produced = json.loads(kitfile.to_config_json())
    assert produced.pop("package") == {}  # kit's Package is a struct: always emitted, empty here
    assert produced == json.loads(case["kitfileJson"])


def test_modelpack_layer_without_a_file_path_is_refused() -> None:
    manifest = {"layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": "sha256:a"}]}
    with pytest.raises(ModelKitError, match="unknown file path for layer"):
        kitfile_from_modelpack(manifest, None)


def _pack_chain(tmp_path: Path, store: LocalStore, modelkits: list[dict]) -> None:  # type: ignore[type-arg]
    for i, kit in enumerate(modelkits):
        ctx = tmp_path / f"kit{i}"
        ctx.mkdir(parents=True)
        for name in kit.get("files", []):
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / name).write_text(f"contents of {name}\n")
        (ctx / "Kitfile").write_text(kit["kitfile"])
        pack_modelkit(ctx, store, reference=parse_reference(kit["tag"]))


def test_modelkit_reference_chain_vector(tmp_path: Path) -> None:
    case = yaml.safe_load(kitops_vector("kitops-v1.7/modelkit-refs/test_reference-basic.yaml").read_text())
    store = LocalStore(tmp_path / "cache")
    _pack_chain(tmp_path, store, case["modelkits"])
    out = tmp_path / "out"
    unpack_to_directory(case["modelkits"][-1]["tag"], store, out, [])
    for kit in case["modelkits"]:
        for name in kit["files"]:
            assert (out / name).read_text() == f"contents of {name}\n", name
    resolved = resolve_reference(case["modelkits"][-1]["tag"], store)
    model = resolved.kitfile.model
    assert model is not None and model.path == "my-model/" and model.name == "model-3"
    assert [p.name for p in model.parts][:2] == ["model-1-part-1", "model-1-part-2"] and len(model.parts) == 9
    assert (resolved.root / "my-model" / "model-1-file-1.txt").exists()


def test_modelkit_reference_cycles_and_long_chains_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")
    _pack_chain(tmp_path / "cycle", store, [
        {"tag": "loop:a", "kitfile": "manifestVersion: 1.0.0\nmodel:\n  path: loop:b\n"},
        {"tag": "loop:b", "kitfile": "manifestVersion: 1.0.0\nmodel:\n  path: loop:a\n"},
    ])  # fmt: skip
    with pytest.raises(ModelKitError, match="cycle: localhost/loop:a -> localhost/loop:b -> localhost/loop:a"):
        resolve_reference("loop:a", store)
    chain = [
        {"tag": f"deep:{i}", "kitfile": f"manifestVersion: 1.0.0\nmodel:\n  path: deep:{i + 1}\n"} for i in range(11)
    ]
    chain.append({"tag": "deep:11", "kitfile": "manifestVersion: 1.0.0\nmodel:\n  path: m.gguf\n", "files": ["m.gguf"]})
    (tmp_path / "deep").mkdir()
    _pack_chain(tmp_path / "deep", store, chain)
    with pytest.raises(ModelKitError, match="longer than 10"):
        resolve_reference("deep:0", store)
    assert resolve_reference("deep:2", store).model_path.read_text() == "contents of m.gguf\n"  # 9 deep is fine


def test_older_dialect_is_read_with_one_warning_naming_each_key() -> None:
    loaded = parse_any_kitfile((vectors_dir() / "dialect" / "Kitfile").read_text())
    warning = loaded.warning
    assert warning is not None
    for key in ("manifestVersion v1alpha1", "modelParts entry base-llm", "127.0.0.1:5000/models/smollm2:1",
                "top-level metadata", "model is a list", "package.repository", "datasets[training-data].samples",
                "code[inference-script].name", "docs[model-card].name", "model[support-adapter].size"):  # fmt: skip
        assert key in warning, key
    model = loaded.kitfile.model
    assert model is not None and model.path == "127.0.0.1:5000/models/smollm2:1"
    assert (model.framework, model.format, model.version) == ("llama.cpp", "gguf", "0.3.36")
    assert [p.path for p in model.parts] == ["./models/adapter.gguf"]
    assert loaded.metadata["performance"] == {"accuracy": 0.92}
    assert loaded.kitfile.manifest_version == "1.0.0" and loaded.kitfile.package.version == "2.1.0"


def test_a_1_0_0_kitfile_stays_strict_and_warning_free() -> None:
    assert parse_any_kitfile("manifestVersion: 1.0.0\nmodel:\n  path: m\n").warning is None
    with pytest.raises(KitfileError, match=r"line 3: field size not found in type artifact\.Model"):
        parse_any_kitfile("manifestVersion: 1.0.0\nmodel:\n  size: 2MB\n")


def test_pykitops_kitfile_is_still_refused_for_its_part_type() -> None:
    with pytest.raises(KitfileError, match="invalid type"):
        parse_any_kitfile(kitops_vector("pykitops/Kitfile_full").read_text())
