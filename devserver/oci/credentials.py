"""Registry credentials: where a user's login for a host is found, and where ``kit-dev login`` keeps it.

Users already log in with ``kit login`` or ``docker login``; making them log in a third time would be
the first thing they hit. So ``lookup`` reads, in order:

1. kit-dev's own store, ``$KIT_DEV_CONFIG_DIR/credentials.json`` (default ``~/.config/kit-dev``),
   the only file we write;
2. kit's ``$KITOPS_HOME/credentials.json``;
3. Docker's ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``).

All three use Docker's config format. In each, a ``credHelpers`` entry for the host, then a
``credsStore`` default helper, is asked first (``docker-credential-NAME get``), then ``auths``. A
helper that is missing or fails is skipped rather than fatal: a stale ``credsStore: desktop`` must not
block an anonymous pull. Every path and the helper's ``PATH`` come from an ``env`` mapping so tests
never touch the real home directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devserver.errors import CacheError

__all__ = ["Credentials", "credential_files", "kit_dev_store_path", "lookup", "remove_login", "store_login"]

log = logging.getLogger(__name__)

IDENTITY_TOKEN_USER = "<token>"  # what a credential helper returns as Username for an identity token
HELPER_TIMEOUT_S = 30.0
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key Docker files Hub logins under
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    """A login for one registry host: a user name and password, or an identity (refresh) token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""  # the file or helper it came from, so error messages can say which login failed


def kit_dev_store_path(env: Mapping[str, str] | None = None) -> Path:
    """The file ``kit-dev login`` writes."""
    env = os.environ if env is None else env
    if env.get("KIT_DEV_CONFIG_DIR"):
        return Path(env["KIT_DEV_CONFIG_DIR"]) / "credentials.json"
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else _home(env) / ".config"
    return base / "kit-dev" / "credentials.json"


def credential_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """Every file ``lookup`` reads, in the order it reads them."""
    env = os.environ if env is None else env
    return [kit_dev_store_path(env), _kitops_home(env) / "credentials.json", _docker_config_dir(env) / "config.json"]


def lookup(host: str, *, env: Mapping[str, str] | None = None) -> Credentials | None:
    """The first login found for ``host`` (``name[:port]``), or None to go anonymous."""
    env = os.environ if env is None else env
    for path in credential_files(env):
        config = _read_config(path)
        if config is None:
            continue
        found = _from_config(config, host, path, env)
        if found is not None:
            return found
    return None


def store_login(host: str, username: str, password: str, *, env: Mapping[str, str] | None = None) -> Path:
    """Save a login in kit-dev's store (mode 0600) and return the file; an empty user stores a token."""
    path = kit_dev_store_path(env)
    config = _read_config(path) or {}
    auths = config.setdefault("auths", {})
    key = _normalize(host)
    for existing in [k for k in auths if _normalize(k) == key]:
        del auths[existing]
    if username:
        auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    else:
        auths[key] = {"identitytoken": password}  # as kit does: no user means the password is a token
    _write_private(path, config)
    return path


def remove_login(host: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Forget ``host`` in kit-dev's store; False when there was nothing to forget."""
    path = kit_dev_store_path(env)
    config = _read_config(path)
    auths = (config or {}).get("auths", {})
    keys = [k for k in auths if _normalize(k) == _normalize(host)]
    if config is None or not keys:
        return False
    for k in keys:
        del auths[k]
    _write_private(path, config)
    return True


# -- where the files are ---------------------------------------------------------------------


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def _kitops_home(env: Mapping[str, str]) -> Path:
    """kit's KITOPS_HOME default: the XDG data dir on Linux, ~/Library/Caches on macOS."""
    if env.get("KITOPS_HOME"):
        return Path(env["KITOPS_HOME"])
    if sys.platform == "darwin":
        return _home(env) / "Library" / "Caches" / "kitops"
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else _home(env) / ".local" / "share"
    return base / "kitops"


def _docker_config_dir(env: Mapping[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else _home(env) / ".docker"


# -- reading a Docker-format config ----------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None when it is absent or unreadable (logged: one bad file must not block)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring credentials file %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring credentials file %s: not a JSON object", path)
        return None
    return data


def _normalize(key: str) -> str:
    """``https://host:port/v1/`` → ``host:port``; Docker Hub's aliases all become Docker's Hub key."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return _DOCKER_HUB_KEY if host in _DOCKER_HUB_HOSTS else host


def _from_config(config: dict[str, Any], host: str, path: Path, env: Mapping[str, str]) -> Credentials | None:
    key = _normalize(host)
    helpers = config.get("credHelpers") or {}
    helper = next((name for k, name in helpers.items() if _normalize(k) == key), None) or config.get("credsStore")
    if isinstance(helper, str) and helper:
        found = _from_helper(helper, key, env)
        if found is not None:
            return found
    auths = config.get("auths") or {}
    for k, entry in auths.items():
        if _normalize(k) == key and isinstance(entry, dict):
            found = _from_entry(entry, f"{path} [{k}]")
            if found is not None:
                return found
    return None


def _from_entry(entry: dict[str, Any], source: str) -> Credentials | None:
    username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("ignoring malformed 'auth' in %s", source)
            return None
    token = str(entry.get("identitytoken") or "")
    if not (username or password or token):
        return None  # an empty entry, as `docker login` leaves behind when a helper holds the secret
    return Credentials(username=username, password=password, identity_token=token, source=source)


def _from_helper(name: str, server: str, env: Mapping[str, str]) -> Credentials | None:
    """Ask ``docker-credential-NAME get``; any failure means 'not here' so the next source is tried."""
    program = shutil.which(f"docker-credential-{name}", path=env.get("PATH"))
    if program is None:
        log.debug("credential helper docker-credential-%s is not on PATH", name)
        return None
    try:
        done = subprocess.run(
            [program, "get"], input=server, capture_output=True, text=True, env=dict(env), timeout=HELPER_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s failed for %s: %s", program, server, exc)
        return None
    if done.returncode != 0:  # "credentials not found in native keychain" is the usual case
        log.debug("credential helper %s has nothing for %s: %s", program, server, done.stdout.strip())
        return None
    try:
        reply = json.loads(done.stdout)
        username, secret = str(reply.get("Username") or ""), str(reply.get("Secret") or "")
    except (ValueError, AttributeError):
        log.warning("credential helper %s gave unreadable output for %s", program, server)
        return None
    if not secret:
        return None
    source = f"docker-credential-{name}"
    if username == IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret, source=source)
    return Credentials(username=username, password=secret, source=source)


# -- writing ---------------------------------------------------------------------------------


def _write_private(path: Path, config: dict[str, Any]) -> None:
    """Write atomically with mode 0600 from the start, so the secret is never readable by others."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # mkstemp creates with 0600
        with _removed_on_error(Path(tmp)):
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as exc:
        raise CacheError(f"cannot write credentials file {path}: {exc}") from exc


@contextlib.contextmanager
def _removed_on_error(tmp: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
