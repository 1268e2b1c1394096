"""login/logout, pull, list, inspect, unpack, rm and prune through the CLI, against real registries:
htpasswd Basic auth behind TLS (credentials from ``kit-dev login``) and token auth (credentials from a
Docker config's credential helper)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from devserver.modelkit.pack import pack_modelkit
from devserver.oci.credentials import Credentials
from devserver.oci.push import push_modelkit
from devserver.oci.reference import parse_reference
from devserver.oci.registry import RegistryClient
from devserver.oci.store import LocalStore
from tests.cli.conftest import Cli, small_kit
from tests.support.auth_fixtures import htpasswd_tls_registry, pki, token_registry, token_service  # noqa: F401
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.slow


def test_login_then_push_pull_list_inspect_unpack_rm_prune_over_tls(
    cli: Cli,
    tmp_path: Path,
    htpasswd_tls_registry: RegistryProcess,  # noqa: F811
    pki,  # noqa: F811
) -> None:
    host, ca = htpasswd_tls_registry.host, str(pki.ca_cert)
    bad = cli.run("login", host, "-u", "alice", "--password-stdin", "--tls-cert", ca, stdin="wrong\n", check=False)
    assert bad.returncode == 1 and host in bad.stderr and "alice" in bad.stderr
    cli.run("login", host, "-u", "alice", "--password-stdin", "--tls-cert", ca, stdin="secret\n")
    stored = cli.home / "kit-dev-config" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and host in json.loads(stored.read_text())["auths"]

    ref = f"{host}/org/small:1"
    cli.run("pack", str(small_kit(tmp_path / "ctx")), "-t", ref, "--push", "--tls-cert", ca)
    unverified = cli.run("pull", ref, "--cache-dir", str(tmp_path / "c0"), check=False)
    assert unverified.returncode == 1 and "--tls-cert" in unverified.stderr  # the fix is named
    cli.run("pull", ref, "--tls-cert", ca, "--cache-dir", str(tmp_path / "c1"))
    cli.run("pull", ref, "--tls-verify=false", "--cache-dir", str(tmp_path / "c2"), "--concurrency", "2")

    cache = ["--cache-dir", str(tmp_path / "c1")]
    table = cli.run("list", *cache).stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "MAINTAINER", "NAME", "SIZE", "DIGEST"]
    assert table[1].startswith(f"{host}/org/small") and "Ada Lovelace" in table[1] and "small" in table[1]
    rows = json.loads(cli.run("list", "--json", *cache).stdout)
    assert rows[0]["repo"] == f"{host}/org/small" and rows[0]["tags"] == ["1"] and isinstance(rows[0]["size"], int)

    inspected = json.loads(cli.run("inspect", ref, *cache).stdout)
    assert inspected["kitfile"]["model"]["name"] == "small-model" and inspected["manifest"]["layers"]
    out = tmp_path / "out"
    cli.run("unpack", ref, "-d", str(out), "--filter", "datasets:train", "--filter", "kitfile", *cache)
    assert (out / "data" / "train.jsonl").exists() and (out / "Kitfile").exists()
    assert not (out / "model.gguf").exists() and not (out / "README.md").exists()
    bad_filter = cli.run("unpack", ref, "-d", str(out), "--filter", "weights", *cache, check=False)
    assert "invalid filter type weights" in bad_filter.stderr

    assert "Removed" in cli.run("rm", ref, *cache).stdout
    assert cli.run("list", "--json", *cache).stdout.strip() == "[]"
    assert not list((tmp_path / "c1" / "blobs" / "sha256").iterdir())
    assert "Pruned 0 blobs" in cli.run("prune", *cache).stdout

    cli.run("logout", host)
    denied = cli.run("pull", ref, "--tls-cert", ca, "--cache-dir", str(tmp_path / "c3"), check=False)
    assert denied.returncode == 1 and "kit-dev login" in denied.stderr


def test_credentials_from_a_docker_credential_helper_with_token_auth(
    cli: Cli,
    tmp_path: Path,
    token_registry: RegistryProcess,  # noqa: F811
) -> None:
    host = token_registry.host
    ref = parse_reference(f"{host}/org/small:1")
    source = LocalStore(tmp_path / "source")
    result = pack_modelkit(small_kit(tmp_path / "ctx"), source)
    with RegistryClient(host, credentials=Credentials("alice", "secret", source="test")) as client:
        push_modelkit(ref, source, client=client, source=result.reference)

    anonymous = cli.run("pull", str(ref), check=False)
    assert anonymous.returncode == 1 and "requires a login" in anonymous.stderr

    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-kittest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'[ "$server" = "{host}" ] && echo \'{{"Username":"alice","Secret":"secret"}}\' && exit 0\n'
        "echo 'credentials not found in native keychain'; exit 1\n"
    )
    helper.chmod(0o755)
    (cli.home / "docker").mkdir()
    (cli.home / "docker" / "config.json").write_text(json.dumps({"auths": {}, "credHelpers": {host: "kittest"}}))
    cli.env["PATH"] = f"{helpers}:{cli.env['PATH']}"
    cli.run("pull", str(ref))
    assert "small" in cli.run("list").stdout
