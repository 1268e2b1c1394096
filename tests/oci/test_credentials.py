"""Where credentials are found: kit-dev's store, then kit's, then Docker's (helpers included)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from devserver.oci.credentials import Credentials, credential_files, lookup, remove_login, store_login

HOST = "reg.example:5000"

HELPER = """#!/bin/sh
[ "$1" = get ] || exit 2
read -r host
case "$host" in
  reg.example:5000) echo '{"ServerURL":"reg.example:5000","Username":"helper-user","Secret":"helper-pass"}' ;;
  tok.example) echo '{"ServerURL":"tok.example","Username":"<token>","Secret":"identity-123"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A home of its own and a PATH holding only system tools and our fake helper."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(HELPER)
    helper.chmod(0o755)
    return {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))


def _files(env: dict[str, str]) -> tuple[Path, Path, Path]:
    kit_dev, kit, docker = credential_files(env)
    return kit_dev, kit, docker


def test_default_paths_follow_home(env: dict[str, str]) -> None:
    home = Path(env["HOME"])
    assert _files(env) == (
        home / ".config/kit-dev/credentials.json",
        home / ".local/share/kitops/credentials.json",
        home / ".docker/config.json",
    )


def test_paths_follow_their_variables(env: dict[str, str], tmp_path: Path) -> None:
    env |= {"KIT_DEV_CONFIG_DIR": str(tmp_path / "kd"), "KITOPS_HOME": str(tmp_path / "kh")}
    env["DOCKER_CONFIG"] = str(tmp_path / "dc")
    assert _files(env) == (
        tmp_path / "kd/credentials.json",
        tmp_path / "kh/credentials.json",
        tmp_path / "dc/config.json",
    )


def test_nothing_found_is_none(env: dict[str, str]) -> None:
    assert lookup(HOST, env=env) is None


def test_lookup_order_kit_dev_then_kit_then_docker(env: dict[str, str]) -> None:
    kit_dev, kit, docker = _files(env)
    _write(docker, {"auths": {HOST: _auth("docker-user", "d")}})
    _write(kit, {"auths": {HOST: _auth("kit-user", "k")}})
    store_login(HOST, "kit-dev-user", "kd", env=env)

    found = lookup(HOST, env=env)
    assert found is not None
    assert (found.username, found.password) == ("kit-dev-user", "kd")
    assert str(kit_dev) in found.source

    assert remove_login(HOST, env=env) is True
    assert remove_login(HOST, env=env) is False
    assert lookup(HOST, env=env) == Credentials("kit-user", "k", source=f"{kit} [{HOST}]")

    kit.unlink()
    found = lookup(HOST, env=env)
    assert found is not None and found.username == "docker-user"


def test_store_login_writes_docker_format_with_mode_0600(env: dict[str, str]) -> None:
    path = store_login(HOST, "alice", "p:ss", env=env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"auths": {HOST: _auth("alice", "p:ss")}}
    found = lookup(HOST, env=env)
    assert found is not None and (found.username, found.password) == ("alice", "p:ss")


def test_store_login_keeps_other_hosts_and_replaces_aliases(env: dict[str, str]) -> None:
    kit_dev, _, _ = _files(env)
    _write(kit_dev, {"auths": {"other.example": _auth("o", "o"), f"https://{HOST}/v1/": _auth("old", "old")}})
    store_login(HOST, "new", "new", env=env)
    assert json.loads(kit_dev.read_text())["auths"] == {"other.example": _auth("o", "o"), HOST: _auth("new", "new")}


def test_empty_username_stores_an_identity_token(env: dict[str, str]) -> None:
    store_login(HOST, "", "refresh-token", env=env)
    found = lookup(HOST, env=env)
    assert found is not None
    assert (found.username, found.password, found.identity_token) == ("", "", "refresh-token")


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Credentials("alice", "hunter2", "tok-xyz", source="here"))
    assert "alice" in text and "hunter2" not in text and "tok-xyz" not in text


def test_docker_entries_match_by_host_and_read_every_field(env: dict[str, str]) -> None:
    _, _, docker = _files(env)
    _write(
        docker,
        {
            "auths": {
                f"https://{HOST}/v2/": {"username": "plain", "password": "fields"},
                "tok.example": {"identitytoken": "idt"},
                "https://index.docker.io/v1/": _auth("hubuser", "hubpass"),
                "empty.example": {},
            }
        },
    )
    found = lookup(HOST, env=env)
    assert found is not None and (found.username, found.password) == ("plain", "fields")
    found = lookup("tok.example", env=env)
    assert found is not None and found.identity_token == "idt"
    found = lookup("registry-1.docker.io", env=env)
    assert found is not None and found.username == "hubuser"
    assert lookup("empty.example", env=env) is None


def test_cred_helper_for_the_host_wins_over_auths(env: dict[str, str]) -> None:
    _, _, docker = _files(env)
    _write(docker, {"credHelpers": {HOST: "fake"}, "auths": {HOST: _auth("file-user", "f")}})
    assert lookup(HOST, env=env) == Credentials("helper-user", "helper-pass", source="docker-credential-fake")


def test_creds_store_token_user_means_identity_token(env: dict[str, str]) -> None:
    _, _, docker = _files(env)
    _write(docker, {"credsStore": "fake"})
    assert lookup("tok.example", env=env) == Credentials(identity_token="identity-123", source="docker-credential-fake")


def test_helper_without_the_host_or_missing_falls_back(env: dict[str, str]) -> None:
    _, kit, docker = _files(env)
    _write(docker, {"credsStore": "fake", "auths": {"nohelper.example": _auth("file-user", "f")}})
    found = lookup("nohelper.example", env=env)  # the helper exits 1: "not found"
    assert found is not None and found.username == "file-user"

    _write(kit, {"credsStore": "desktop"})  # no docker-credential-desktop on PATH: skipped, not fatal
    found = lookup("nohelper.example", env=env)
    assert found is not None and found.username == "file-user"


def test_a_broken_file_is_skipped(env: dict[str, str]) -> None:
    kit_dev, kit, _ = _files(env)
    kit_dev.parent.mkdir(parents=True)
    kit_dev.write_text("{not json")
    _write(kit, {"auths": {HOST: {"auth": "%%%not-base64"}}})
    assert lookup(HOST, env=env) is None
