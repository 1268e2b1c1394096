"""Session fixtures for registries with authentication and TLS; import the ones a test module uses.

    from tests.support.auth_fixtures import htpasswd_tls_registry, pki  # noqa: F401

Users everywhere: ``alice:secret`` (pull, push, delete) and ``reader:readonly`` (pull only, on the
token registry; the htpasswd registry has no per-repository rights, so ``reader`` may push there).
Each fixture skips when ``docker-registry`` is not installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.auth_registries import (
    TLSRegistryProcess,
    htpasswd_config,
    token_auth_config,
    write_htpasswd,
)
from tests.support.registry import RegistryProcess
from tests.support.tls import TestPKI, make_pki
from tests.support.token_service import USERS, TokenService, make_signer

__all__ = ["htpasswd_tls_registry", "mtls_registry", "pki", "token_registry", "token_service"]


def _require_registry() -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed: run `make test` (or scripts/setup.sh --test)")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def htpasswd_tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[TLSRegistryProcess]:
    """HTTPS (the ``pki`` CA) with Basic auth from an htpasswd file."""
    _require_registry()
    root = tmp_path_factory.mktemp("registry-htpasswd-tls")
    htpasswd = write_htpasswd(root / "htpasswd", {user: password for user, (password, _) in USERS.items()})
    process = TLSRegistryProcess(root=root / "registry", pki=pki, extra_config=htpasswd_config(htpasswd)).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def mtls_registry(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[TLSRegistryProcess]:
    """HTTPS that demands a client certificate signed by the ``pki`` CA; no other auth."""
    _require_registry()
    root = tmp_path_factory.mktemp("registry-mtls")
    process = TLSRegistryProcess(root=root, pki=pki, require_client_cert=True).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    """The token service in a thread; its signing certificate is ``token_service.bundle``."""
    root = tmp_path_factory.mktemp("token-service")
    service = TokenService(key=make_signer(root / "signer.crt"), bundle=root / "signer.crt").start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_service: TokenService) -> Iterator[RegistryProcess]:
    """Plain HTTP with token auth through ``token_service``."""
    _require_registry()
    config = token_auth_config(token_service.realm, token_service.bundle)
    process = RegistryProcess(root=tmp_path_factory.mktemp("registry-token"), extra_config=config).start()
    try:
        yield process
    finally:
        process.stop()
