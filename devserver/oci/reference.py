"""ModelKit references (``[registry/]repository[:tag][@digest]``), parsed the way kit parses them.

kit does not default to Docker Hub: the first path segment is a registry only when it contains
``.`` or ``:``; otherwise the registry is ``localhost`` (kit's "local only" marker) and the whole
string is the repository. ``repo:tag@digest`` keeps only the digest, and a missing tag is ``latest``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from devserver.errors import ReferenceError_

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_TAG", "Reference", "default_plain_http", "parse_reference"]

DEFAULT_REGISTRY = "localhost"
DEFAULT_TAG = "latest"

# The OCI distribution grammar, as oras-go's registry.Reference validates it.
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. Exactly one of ``tag`` and ``digest`` is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: the key kit uses for a repository."""
        return f"{self.registry}/{self.repository}"

    @property
    def tag_or_digest(self) -> str:
        """What goes after ``/manifests/`` in a registry URL."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"


def parse_reference(text: str) -> Reference:
    """Parse ``text`` as kit does; raise ReferenceError_ naming what is wrong."""
    if not text or text != text.strip():
        raise ReferenceError_(f"invalid reference {text!r}: empty or surrounded by spaces")
    if _SHA256.match(text):
        return Reference(DEFAULT_REGISTRY, "_", None, text)
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest) or (digest.startswith("sha256:") and not _SHA256.match(digest)):
            raise ReferenceError_(f"invalid reference {text!r}: bad digest {digest!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first):
        registry, path = first, remainder
    else:
        registry, path = DEFAULT_REGISTRY, rest
    repository, tag = path, None
    last_colon = path.rfind(":")
    if last_colon > path.rfind("/"):
        repository, tag = path[:last_colon], path[last_colon + 1 :]
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid reference {text!r}: bad tag {tag!r}")
    if not _REPOSITORY.match(repository):
        raise ReferenceError_(
            f"invalid reference {text!r}: repository {repository!r} must be lowercase letters, digits and "
            "separators, starting and ending with a letter or digit"
        )
    _check_registry(text, registry)
    if digest:
        return Reference(registry, repository, None, digest)
    return Reference(registry, repository, tag or DEFAULT_TAG, None)


def _check_registry(text: str, registry: str) -> None:
    host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
    if port and not port.isdigit():
        raise ReferenceError_(f"invalid reference {text!r}: bad registry port in {registry!r}")
    if not host or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host):
        raise ReferenceError_(f"invalid reference {text!r}: bad registry {registry!r}")


def default_plain_http(registry: str) -> bool:
    """Loopback registries (``localhost:PORT``, ``127.0.0.1:PORT``, ``[::1]:PORT``) default to plain HTTP.

    kit itself never falls back to HTTP; kit-dev is a local dev tool whose typical registry is a
    loopback test registry, so loopback gets HTTP unless the caller says otherwise. Anything that
    leaves the machine stays HTTPS.
    """
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 or registry.startswith("[") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
