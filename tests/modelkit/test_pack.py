"""Pack writes kit's tar bytes: entries, order, modes, mtimes, owners and the archive end, parsed by hand."""

import json
import os
from pathlib import Path

import pytest
import yaml

from devserver.errors import KitfileError
from devserver.modelkit.kitfile import Kitfile
from devserver.modelkit.layers import match_layers, parse_manifest
from devserver.modelkit.pack import pack_modelkit
from devserver.modelkit.unpack import unpack_layer
from devserver.oci.store import LocalStore
from tests.support.kitops_vectors import kitops_vector


def parse_headers(data: bytes) -> tuple[list[dict[str, object]], int]:
    """Walk 512-byte headers as a tar reader would; return the entries and the count of trailing zero blocks."""
    entries, offset = [], 0
    while offset < len(data):
        block = data[offset : offset + 512]
        if block == b"\0" * 512:
            break
        checksum = sum(block[:148]) + 8 * 32 + sum(block[156:])
        assert block[148:156] == b"%06o\0 " % checksum
        name = block[0:100].rstrip(b"\0").decode()
        prefix = block[345:500].rstrip(b"\0").decode()
        size = int(block[124:136].rstrip(b"\0"), 8)
        entries.append(
            {
                "name": f"{prefix}/{name}" if prefix else name,
                "mode": block[100:108],
                "uid": block[108:116],
                "gid": block[116:124],
                "size": size,
                "mtime": block[136:148],
                "type": block[156:157],
                "magic": block[257:265],
                "uname": block[265:297],
                "gname": block[297:329],
                "dev": block[329:345],
            }
        )
        offset += 512 + (size + 511) // 512 * 512
    trailer = data[offset:]
    assert len(trailer) % 512 == 0
    assert trailer == b"\0" * len(trailer)
    return entries, len(trailer) // 512


def make_context(root: Path) -> Path:
    ctx = root / "ctx"
    (ctx / "model" / "sub").mkdir(parents=True)
    (ctx / "model" / "lora").mkdir()
    (ctx / "model.txt").write_text("a sibling that sorts after model/ in Go's walk")
    (ctx / "model" / "b.gguf").write_bytes(b"w" * 1000)
    (ctx / "model" / "a.json").write_text("{}")
    (ctx / "model" / "sub" / "x.bin").write_bytes(b"x")
    (ctx / "model" / "lora" / "adapter.gguf").write_bytes(b"lora")
    (ctx / "docs").mkdir()
    (ctx / "docs" / "README.md").write_text("# readme")
    os.symlink("b.gguf", ctx / "model" / "link.gguf")  # kit skips symlinks
    (ctx / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: t\nmodel:\n  name: m\n  path: ./model\n"
        "  parts:\n    - name: lora\n      path: model/lora/\n      type: lora-adapter\n"
        "docs:\n  - path: docs/README.md\n"
    )
    os.chmod(ctx / "model", 0o750)
    os.chmod(ctx / "model" / "sub", 0o700)
    os.chmod(ctx / "model" / "b.gguf", 0o640)
    os.chmod(ctx / "model" / "a.json", 0o600)
    os.chmod(ctx / "model" / "sub" / "x.bin", 0o755)
    os.chmod(ctx / "model" / "lora", 0o755)
    os.chmod(ctx / "model" / "lora" / "adapter.gguf", 0o644)
    os.chmod(ctx / "docs", 0o755)
    os.chmod(ctx / "docs" / "README.md", 0o644)
    return ctx


def test_layers_follow_kits_tar_rules(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    store = LocalStore(tmp_path / "store")
    result = pack_modelkit(ctx, store, environ={"SOURCE_DATE_EPOCH": "1700000000"})
    model, part, docs = (store.blob_path(d.digest).read_bytes() for d in result.layers)

    def expect(name: str, mode: int, kind: bytes, size: int = 0) -> dict[str, object]:
        return {
            "name": name,
            "mode": b"%07o\0" % mode,
            "uid": b"0001750\0",  # 1000
            "gid": b"0000000\0",
            "size": size,
            "mtime": b"00000000000\0",
            "type": kind,
            "magic": b"ustar\x0000",
            "uname": b"\0" * 32,
            "gname": b"\0" * 32,
            "dev": b"0000000\0" * 2,
        }

    entries, zero_blocks = parse_headers(model)
    assert zero_blocks == 2  # no padding to a 10 KiB record
    assert entries == [
        expect("model", 0o750, b"5"),
        expect("model/a.json", 0o600, b"0", 2),
        expect("model/b.gguf", 0o640, b"0", 1000),
        expect("model/sub", 0o700, b"5"),  # lora/ belongs to the part layer; link.gguf is a symlink
        expect("model/sub/x.bin", 0o755, b"0", 1),
    ]
    entries, zero_blocks = parse_headers(part)
    assert zero_blocks == 2
    assert entries == [
        expect("model", 0o750, b"5"),
        expect("model/lora", 0o755, b"5"),
        expect("model/lora/adapter.gguf", 0o644, b"0", 4),
    ]
    entries, _ = parse_headers(docs)
    assert [e["name"] for e in entries] == ["docs", "docs/README.md"]

    manifest = json.loads(result.manifest)
    assert manifest["artifactType"] == "application/vnd.kitops.modelkit.manifest.v1+json"
    assert manifest["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert manifest["annotations"]["ml.kitops.modelkit.cli-version"].startswith("kit-dev/")
    assert [layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]] == [
        "model",
        "model/lora",
        "docs/README.md",
    ]
    config = store.read_blob(manifest["config"]["digest"])
    assert config == result.config.to_config_json()
    assert Kitfile.from_config_json(config).model.parts[0].digest == result.layers[1].digest  # type: ignore[union-attr]


def test_pack_is_reproducible(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    env = {"SOURCE_DATE_EPOCH": "0"}
    first = pack_modelkit(ctx, LocalStore(tmp_path / "a"), environ=env)
    second = pack_modelkit(ctx, LocalStore(tmp_path / "b"), environ=env)
    assert first.manifest_digest == second.manifest_digest


def test_long_and_non_ascii_names_use_ustar_prefix_or_pax(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    splittable = f"d/{'a' * 90}/{'c' * 20}.bin"  # > 100 chars, but prefix ≤ 155 and name ≤ 100
    too_long = f"d/{'x' * 120}.bin"  # no split fits (the name part alone is > 100): PAX path record
    for name in (splittable, too_long, "d/été.txt"):  # non-ASCII: PAX path record
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(name)
    (ctx / "Kitfile").write_text("manifestVersion: 1.0.0\ndatasets:\n  - name: d\n    path: d\n")
    store = LocalStore(tmp_path / "store")
    result = pack_modelkit(ctx, store)
    data = store.blob_path(result.layers[0].digest).read_bytes()
    entries, zero_blocks = parse_headers(data)
    assert zero_blocks == 2
    names = [e["name"] for e in entries]
    assert splittable in names
    pax = [e["name"] for e in entries if e["type"] == b"x"]
    assert pax == [
        f"d/PaxHeaders.0/{'x' * 120}.bin"[:100],
        "d/PaxHeaders.0/t.txt",  # Go's toASCII drops the non-ASCII runes; "é" sorts after "x" in bytes
    ]
    assert b"%d path=%s\n" % (len(too_long) + 10, too_long.encode()) in data
    target = tmp_path / "out"
    with store.open_blob(result.layers[0].digest) as f:
        unpack_layer(f, result.layers[0].media_type, target)
    for name in (splittable, too_long, "d/été.txt"):
        assert (target / name).read_text() == name


def test_reference_model_path_packs_no_model_layer(tmp_path: Path) -> None:
    (tmp_path / "lora.gguf").write_bytes(b"adapter")
    (tmp_path / "Kitfile").write_text(
        "manifestVersion: 1.0.0\nmodel:\n  path: jozu.ml/org/base:1\n  parts:\n    - path: lora.gguf\n"
    )
    result = pack_modelkit(tmp_path, LocalStore(tmp_path / ".store"))
    assert [d.media_type for d in result.layers] == ["application/vnd.kitops.modelkit.modelpart.v1.tar"]
    assert result.config.model is not None and result.config.model.path == "jozu.ml/org/base:1"


def test_missing_layer_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Kitfile").write_text("manifestVersion: 1.0.0\nmodel:\n  path: nowhere\n")
    with pytest.raises(KitfileError, match="path nowhere does not exist"):
        pack_modelkit(tmp_path, LocalStore(tmp_path / ".store"))


VECTORS = [
    "test_pack-ignores-intersecting.yaml",
    "test_pack-modelkit-parts-kitignore.yaml",
    "test_pack-path-formats.yaml",
]


@pytest.mark.parametrize("name", VECTORS)
def test_kit_pack_unpack_vectors(tmp_path: Path, name: str) -> None:
    case = yaml.safe_load(kitops_vector(f"kitops-v1.7/pack-unpack/{name}").read_text())
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Kitfile").write_text(case["kitfile"])
    if case.get("kitignore"):
        (ctx / ".kitignore").write_text(case["kitignore"])
    for path in [*case["files"], *(case.get("ignored") or [])]:
        (ctx / path).parent.mkdir(parents=True, exist_ok=True)
        (ctx / path).write_text(f"content of {path}")
    store = LocalStore(tmp_path / "store")
    result = pack_modelkit(ctx, store)

    out = tmp_path / "out"
    seen: list[str] = []
    for layer in match_layers(parse_manifest(result.manifest), result.config):
        entries, _ = parse_headers(store.read_blob(layer.descriptor.digest))
        seen += [str(e["name"]) for e in entries if e["type"] == b"0"]
        with store.open_blob(layer.descriptor.digest) as f:
            unpack_layer(f, layer.descriptor.media_type, out)
    for path in case["files"]:
        assert (out / path).read_text() == f"content of {path}"
        assert seen.count(path) == 1, f"{path} must be in exactly one layer"
    for path in case.get("ignored") or []:
        assert not (out / path).exists()
