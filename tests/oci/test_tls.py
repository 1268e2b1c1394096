"""The TLS context for registries, and the errors a TLS failure turns into."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from devserver.errors import RegistryError, UsageError
from devserver.oci.auth import RegistryAuth
from devserver.oci.credentials import Credentials
from devserver.oci.tls import tls_context, tls_error
from tests.support.auth_fixtures import *  # noqa: F403  (fixtures)
from tests.support.auth_registries import TLSRegistryProcess, upload_blob
from tests.support.registry import RegistryProcess
from tests.support.tls import TestPKI

ALICE = Credentials("alice", "secret", source="test")


def _error(client: httpx.Client, url: str, host: str) -> RegistryError:
    """The RegistryError a registry client would raise for this request's transport failure."""
    with pytest.raises(httpx.TransportError) as caught:
        client.get(url)
    error = tls_error(caught.value, host)
    assert error is not None, f"not recognised as a TLS failure: {caught.value!r}"
    return error


# -- the context -------------------------------------------------------------------------------


def test_default_verifies_chain_and_host_name() -> None:
    context = tls_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_tls_verify_false_checks_nothing() -> None:
    context = tls_context(tls_verify=False)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_extra_ca_is_added_to_the_system_store(pki: TestPKI) -> None:
    baseline = tls_context().cert_store_stats()["x509_ca"]
    assert tls_context(ca_files=[pki.ca_cert]).cert_store_stats()["x509_ca"] == baseline + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca_files": ["/nonexistent/ca.pem"]}, "cannot use CA file /nonexistent/ca.pem"),
        ({"client_key": "/some/key.pem"}, "a client key needs its certificate"),
        ({"client_cert": "/nonexistent/c.pem"}, "cannot use client certificate /nonexistent/c.pem"),
    ],
)
def test_bad_files_are_usage_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        tls_context(**kwargs)


def test_a_file_that_is_not_a_certificate(tmp_path: Path, pki: TestPKI) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="cannot use CA file"):
        tls_context(ca_files=[junk])
    with pytest.raises(UsageError, match=f"with key {pki.server_key}"):
        tls_context(client_cert=pki.client_cert, client_key=pki.server_key)  # key does not match


def test_errors_without_tls_are_left_alone() -> None:
    assert tls_error(httpx.ConnectError("[Errno 111] Connection refused"), "h:1") is None


# -- against real registries -------------------------------------------------------------------


@pytest.mark.slow
def test_ca_file_verifies_ip_and_dns_names(htpasswd_tls_registry: TLSRegistryProcess, pki: TestPKI) -> None:
    registry = htpasswd_tls_registry
    for base in (registry.url, f"https://localhost:{registry.port}"):
        with httpx.Client(verify=tls_context(ca_files=[pki.ca_cert]), auth=RegistryAuth(registry.host, ALICE)) as c:
            assert c.get(f"{base}/v2/").status_code == 200


@pytest.mark.slow
def test_unknown_ca_is_a_clear_registry_error(htpasswd_tls_registry: TLSRegistryProcess) -> None:
    registry = htpasswd_tls_registry
    with httpx.Client(verify=tls_context()) as client:
        error = _error(client, f"{registry.url}/v2/", registry.host)
    line = error.one_line()
    assert f"cannot verify the TLS certificate of registry {registry.host}" in line
    assert "--tls-verify=false" in line and "CA file" in line


@pytest.mark.slow
def test_tls_verify_false_pushes_and_pulls(htpasswd_tls_registry: TLSRegistryProcess) -> None:
    registry = htpasswd_tls_registry
    verify = tls_context(tls_verify=False)
    with httpx.Client(base_url=registry.url, verify=verify, auth=RegistryAuth(registry.host, ALICE)) as client:
        digest = upload_blob(client, "tls/noverify", b"unverified but encrypted")
        assert client.get(f"/v2/tls/noverify/blobs/{digest}").content == b"unverified but encrypted"


@pytest.mark.slow
def test_https_to_a_plain_http_registry_suggests_plain_http(registry: RegistryProcess) -> None:
    with httpx.Client(verify=tls_context()) as client:
        error = _error(client, f"https://{registry.host}/v2/", registry.host)
    assert "--plain-http" in error.one_line()


@pytest.mark.slow
def test_client_certificate(mtls_registry: TLSRegistryProcess, pki: TestPKI) -> None:
    registry = mtls_registry
    with_cert = tls_context(ca_files=[pki.ca_cert], client_cert=pki.client_cert, client_key=pki.client_key)
    with httpx.Client(verify=with_cert) as client:
        assert client.get(f"{registry.url}/v2/").status_code == 200
    with httpx.Client(verify=tls_context(ca_files=[pki.ca_cert])) as client:
        error = _error(client, f"{registry.url}/v2/", registry.host)
    assert "--cert and --key" in error.one_line()
