import json

import pytest

from devserver.errors import ModelKitError
from devserver.modelkit.kitfile import Kitfile
from devserver.modelkit.layers import match_layers, parse_manifest, serving_layers
from tests.support.kitops_vectors import kitops_vector

D = {k: "sha256:" + k * 64 for k in "abcdef"}


def manifest(*layers: tuple[str, str], artifact_type: bool = True) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "digest": D["f"], "size": 10},
        "layers": [
            {"mediaType": f"application/vnd.kitops.modelkit.{base}.v1.tar", "digest": digest, "size": 1}
            for base, digest in layers
        ],
    }
    if artifact_type:
        doc["artifactType"] = "application/vnd.kitops.modelkit.manifest.v1+json"
    return json.dumps(doc).encode()


CONFIG = Kitfile.from_config_json(
    json.dumps(
        {
            "manifestVersion": "1.0.0",
            "package": {},
            "model": {"name": "m", "path": "m.gguf", "digest": D["a"], "parts": [{"path": "lora", "digest": D["b"]}]},
            "code": [{"path": "src", "digest": D["c"]}],
            "datasets": [{"name": "train", "path": "data", "digest": D["d"]}],
            "docs": [{"path": "README.md", "digest": D["e"]}],
        }
    ).encode()
)


def test_match_by_config_digest_regardless_of_layer_order() -> None:
    parsed = parse_manifest(
        manifest(("docs", D["e"]), ("dataset", D["d"]), ("model", D["a"]), ("code", D["c"]), ("modelpart", D["b"]))
    )
    matched = match_layers(parsed, CONFIG)
    assert [(m.kind, m.path, m.descriptor.digest) for m in matched] == [
        ("model", "m.gguf", D["a"]),
        ("modelpart", "lora", D["b"]),
        ("code", "src", D["c"]),
        ("dataset", "data", D["d"]),
        ("docs", "README.md", D["e"]),
    ]
    assert [m.kind for m in serving_layers(matched)] == ["model", "modelpart"]


def test_missing_digest_is_an_error() -> None:
    with pytest.raises(ModelKitError, match="not found in manifest"):
        match_layers(parse_manifest(manifest(("model", D["a"]))), CONFIG)


def test_pre_0_5_configs_without_digests_match_by_position() -> None:
    old = Kitfile.from_config_json(
        b'{"manifestVersion":"1.0.0","package":{},"model":{"path":"m"},"datasets":[{"path":"a"},{"path":"b"}]}'
    )
    parsed = parse_manifest(manifest(("model", D["a"]), ("dataset", D["b"]), ("dataset", D["c"])))
    assert [m.descriptor.digest for m in match_layers(parsed, old)] == [D["a"], D["b"], D["c"]]


def test_v1_7_manifest_without_media_type_is_a_modelkit() -> None:
    text = kitops_vector("kitops-v1.7/manifests/manifestA.json").read_text()
    # The vector's digests are placeholders; give them real shapes to get past digest validation.
    text = text.replace("sha256:configA", D["a"]).replace("sha256:layer1", D["b"]).replace("sha256:layer2", D["c"])
    parsed = parse_manifest(text.encode())
    assert parsed.artifact_type is None
    assert [layer.size for layer in parsed.layers] == [123456789, 23456]
    assert parsed.annotations["ml.kitops.modelkit.cli-version"] == "0.2.5-29dbdc4"


def test_placeholder_digests_are_refused() -> None:
    with pytest.raises(ModelKitError, match="malformed digest"):
        parse_manifest(kitops_vector("kitops-v1.7/manifests/manifestA.json").read_bytes())


@pytest.mark.parametrize(
    "doc",
    [
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}',
        b'{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"digest":"sha256:' + b"a" * 64 + b'","size":2},"layers":[]}',
        b"[]",
        b"{",
    ],
    ids=["index", "container-image", "not-object", "not-json"],
)
def test_non_modelkits_are_refused(doc: bytes) -> None:
    with pytest.raises(ModelKitError):
        parse_manifest(doc)
