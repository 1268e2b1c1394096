"""RegistryClient error mapping and verification, with httpx's MockTransport and a closed port."""

import time
from pathlib import Path

import httpx
import pytest

from devserver.errors import AuthError, DigestMismatch, NotFoundError, RegistryError, RegistryUnreachable
from devserver.oci.descriptor import Descriptor, sha256_digest
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore
from tests.support.ports import free_port

MANIFEST = b'{"schemaVersion":2}'


def client_for(handler) -> RegistryClient:  # type: ignore[no-untyped-def]
    return RegistryClient("registry.test", transport=httpx.MockTransport(handler))


def test_https_by_default_for_non_loopback() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": "application/json"})

    with client_for(handler) as client:
        client.get_manifest("org/m", "1")
    assert seen == ["https://registry.test/v2/org/m/manifests/1"]


def test_manifest_by_digest_is_verified() -> None:
    digest = sha256_digest(MANIFEST)
    with client_for(lambda r: httpx.Response(200, content=b"{}")) as client, pytest.raises(DigestMismatch):
        client.get_manifest("org/m", digest)
    with client_for(lambda r: httpx.Response(200, content=MANIFEST)) as client:
        assert client.get_manifest("org/m", digest)[2] == digest


def test_manifest_by_tag_checks_the_claimed_digest() -> None:
    headers = {"Docker-Content-Digest": sha256_digest(b"other")}
    client = client_for(lambda r: httpx.Response(200, content=MANIFEST, headers=headers))
    with client, pytest.raises(DigestMismatch):
        client.get_manifest("org/m", "1")


@pytest.mark.parametrize(
    ("status", "error"), [(401, AuthError), (403, AuthError), (404, NotFoundError), (500, RegistryError)]
)
def test_statuses_map_to_the_error_tree(status: int, error: type) -> None:
    body = {"errors": [{"code": "DENIED", "message": "nope"}]}
    with client_for(lambda r: httpx.Response(status, json=body)) as client, pytest.raises(error) as exc:
        client.get_manifest("org/m", "1")
    assert "registry.test" in exc.value.message and "DENIED nope" in exc.value.message


def test_blob_exists_is_false_on_404() -> None:
    with client_for(lambda r: httpx.Response(404)) as client:
        assert client.blob_exists("org/m", "sha256:" + "a" * 64) is False


def test_tampered_blob_stream_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    good = b"the real layer"
    descriptor = Descriptor("application/vnd.kitops.modelkit.model.v1.tar", sha256_digest(good), len(good))
    client = client_for(lambda r: httpx.Response(200, content=b"the fake layer"))
    with client, pytest.raises(DigestMismatch):
        client.fetch_blob("org/m", descriptor, store)
    assert not store.has_blob(descriptor.digest)
    assert list((tmp_path / "ingest").iterdir()) == []


def test_unreachable_registry_fails_fast_naming_the_host() -> None:
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with RegistryClient(host) as client, pytest.raises(RegistryUnreachable) as exc:
        client.get_manifest("org/m", "1")
    assert time.monotonic() - started < 5
    assert host in exc.value.message
