import pytest

from devserver.errors import ReferenceError_
from devserver.oci.reference import Reference, default_plain_http, parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/model:1", ("localhost", "org/model", "1", None)),
        ("localhost:5000/org/m:1", ("localhost:5000", "org/m", "1", None)),
        ("localhost/m:1", ("localhost", "localhost/m", "1", None)),  # kit's quirk
        ("a/b/c/d", ("localhost", "a/b/c/d", "latest", None)),
        ("test.io/a/b/c/d", ("test.io", "a/b/c/d", "latest", None)),
        (f"testrepo:ignoredtag@{DIGEST}", ("localhost", "testrepo", None, DIGEST)),
        (f"ghcr.io/org/m@{DIGEST}", ("ghcr.io", "org/m", None, DIGEST)),
        (DIGEST, ("localhost", "_", None, DIGEST)),
        ("127.0.0.1:5000/models/smollm2:1", ("127.0.0.1:5000", "models/smollm2", "1", None)),
        ("jozu.ml/org/my_model-v2.1:v1.0-rc_1", ("jozu.ml", "org/my_model-v2.1", "v1.0-rc_1", None)),
    ],
)
def test_parse_like_kit(text: str, expected: tuple) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "text",
    ["", " org/m", "Org/Model:1", "org/m:", "org/m:bad tag", "org//m", "org/m-", f"org/m@sha256:{'a' * 10}", "-m"],
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(ReferenceError_):
        parse_reference(text)


def test_str_is_the_full_reference() -> None:
    assert str(parse_reference("localhost:5000/org/m")) == "localhost:5000/org/m:latest"
    assert str(Reference("r.io", "a/b", None, DIGEST)) == f"r.io/a/b@{DIGEST}"
    assert parse_reference("r.io/a:1").tag_or_digest == "1"


@pytest.mark.parametrize(
    ("registry", "plain"),
    [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("localhost", True),
        ("ghcr.io", False),
        ("registry.example.com:5000", False),
        ("10.0.0.5:5000", False),
    ],
)
def test_default_plain_http_only_for_loopback(registry: str, plain: bool) -> None:
    assert default_plain_http(registry) is plain
