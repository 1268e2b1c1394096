import pytest

from devserver.errors import ModelKitError
from devserver.modelkit import mediatypes as mt


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("application/vnd.kitops.modelkit.model.v1.tar", ("model", "tar", "none")),
        ("application/vnd.kitops.modelkit.modelpart.v1.tar+gzip", ("modelpart", "tar", "gzip")),
        ("application/vnd.kitops.modelkit.dataset.v1.tar+zstd", ("dataset", "tar", "zstd")),
        ("application/vnd.kitops.modelkit.code.v1.raw", ("code", "raw", "none")),
        ("application/vnd.kitops.modelkit.docs.v1.raw+gzip", ("docs", "raw", "gzip")),
        ("application/vnd.kitops.modelkit.mcpb.v1.raw", ("mcpb", "raw", "none")),
    ],
)
def test_parse_round_trips(media_type: str, expected: tuple[str, str, str]) -> None:
    parsed = mt.parse_layer_media_type(media_type)
    assert (parsed.base, parsed.format, parsed.compression) == expected
    assert str(parsed) == media_type


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.kitops.modelkit.config.v1+json",
        "application/vnd.kitops.modelkit.model.v1.zip",
        "application/vnd.kitops.modelkit.model.v1.tar+brotli",
        "application/vnd.kitops.modelkit.weights.v1.tar",
        "application/vnd.jozu.model.content.v1.tar+gzip",  # pre-release names, never emitted by kit
        "application/vnd.cncf.model.weights.v1.tar",
        "application/vnd.kitops.modelkit.model.v1.tar trailing",
    ],
)
def test_parse_refuses_other_types(media_type: str) -> None:
    with pytest.raises(ModelKitError):
        mt.parse_layer_media_type(media_type)


@pytest.mark.parametrize(
    ("media_type", "base", "fmt", "compression"),
    [
        ("application/vnd.cncf.model.weight.v1.raw", "model", "raw", "none"),
        ("application/vnd.cncf.model.weight.config.v1.tar", "modelpart", "tar", "none"),
        ("application/vnd.cncf.model.doc.v1.tar+gzip", "docs", "tar", "gzip"),
        ("application/vnd.cncf.model.dataset.v1.tar+zstd", "dataset", "tar", "zstd"),
        ("application/vnd.cncf.model.code.v1.tar", "code", "tar", "none"),
    ],
)
def test_modelpack_types_read_as_kit_kinds(media_type: str, base: str, fmt: str, compression: str) -> None:
    parsed = mt.parse_layer_media_type(media_type)
    assert (parsed.base, parsed.format, parsed.compression) == (base, fmt, compression)


def test_constants_match_the_spec() -> None:
    assert mt.MEDIA_TYPE_KIT_CONFIG == "application/vnd.kitops.modelkit.config.v1+json"
    assert mt.ARTIFACT_TYPE_KIT_MANIFEST == "application/vnd.kitops.modelkit.manifest.v1+json"
    assert mt.ANNOTATION_CLI_VERSION == "ml.kitops.modelkit.cli-version"
    assert mt.ANNOTATION_FILEPATH == "org.cncf.model.filepath"
    assert mt.layer_media_type("dataset") == "application/vnd.kitops.modelkit.dataset.v1.tar"
    assert mt.layer_media_type("model", "tar", "gzip") == "application/vnd.kitops.modelkit.model.v1.tar+gzip"
