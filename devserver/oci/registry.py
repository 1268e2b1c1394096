"""A small OCI distribution client on httpx: manifests and blobs, verified, with errors mapped once.

Why not oras-py (which is installed): its retry decorator turns a closed port or an unanswerable auth
challenge into a ~130 s hang, it does not check digests on pull, and a non-chunked upload reads the
whole file into memory. The distribution API we need is a handful of requests, so we speak it
directly: explicit timeouts (connect 5 s), every byte of a download hashed into the store's ingest
writer, and every httpx error translated here into a RegistryError subclass naming the host.

Authentication is a seam: ``auth=`` takes any ``httpx.Auth`` (Basic credentials today; the token
flow and TLS options plug in here without changing callers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from devserver import __version__
from devserver.errors import AuthError, DigestMismatch, NotFoundError, RegistryError, RegistryUnreachable
from devserver.oci.descriptor import OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST, Descriptor, sha256_digest
from devserver.oci.reference import default_plain_http
from devserver.oci.store import LocalStore

__all__ = ["DEFAULT_TIMEOUT", "MONOLITHIC_LIMIT", "ProgressFn", "RegistryClient"]

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
MONOLITHIC_LIMIT = 100 << 20  # kit's uploadChunkDefaultSize: below it one PUT, above it PATCH chunks
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's recommended manifest limit
_ACCEPT = ", ".join([OCI_IMAGE_MANIFEST, OCI_IMAGE_INDEX, "application/vnd.docker.distribution.manifest.v2+json"])
_READ_CHUNK = 1 << 20

ProgressFn = Callable[[Descriptor, int], None]
"""Called with the descriptor being transferred and the number of bytes just moved."""


class RegistryClient:
    """One registry host. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        monolithic_limit: int = MONOLITHIC_LIMIT,
    ) -> None:
        self.registry = registry
        self.plain_http = default_plain_http(registry) if plain_http is None else plain_http
        self.monolithic_limit = monolithic_limit
        scheme = "http" if self.plain_http else "https"
        self._client = httpx.Client(
            base_url=f"{scheme}://{registry}",
            transport=transport,
            auth=auth,
            timeout=timeout,
            follow_redirects=True,
            headers={"User-Agent": f"kit-dev/{__version__}"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests ---------------------------------------------------------------------------

    def get_manifest(self, repository: str, tag_or_digest: str) -> tuple[bytes, str, str]:
        """Fetch a manifest: ``(bytes, media type, digest)``; the digest is checked when we know it."""
        what = f"manifest {repository}:{tag_or_digest}"
        with self._request("GET", f"/v2/{repository}/manifests/{tag_or_digest}", what, accept=_ACCEPT) as resp:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body.extend(chunk)
                if len(body) > MAX_MANIFEST_BYTES:
                    raise RegistryError(f"{what} on {self.registry} is larger than {MAX_MANIFEST_BYTES} bytes")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            claimed = resp.headers.get("Docker-Content-Digest")
        data = bytes(body)
        digest = sha256_digest(data)
        expected = tag_or_digest if tag_or_digest.startswith("sha256:") else claimed
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(f"{what} from {self.registry} does not match its digest {expected} (got {digest})")
        return data, media_type, digest

    def put_manifest(self, repository: str, tag: str, data: bytes, media_type: str = OCI_IMAGE_MANIFEST) -> str:
        """Upload a manifest under ``tag`` (or its digest); return its digest."""
        digest = sha256_digest(data)
        what = f"manifest {repository}:{tag}"
        headers = {"Content-Type": media_type}
        with self._request("PUT", f"/v2/{repository}/manifests/{tag}", what, content=data, headers=headers):
            pass
        return digest

    # -- blobs -------------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            with self._request("HEAD", f"/v2/{repository}/blobs/{digest}", f"blob {digest}"):
                return True
        except NotFoundError:
            return False

    def fetch_blob(
        self, repository: str, descriptor: Descriptor, store: LocalStore, *, progress: ProgressFn | None = None
    ) -> bool:
        """Stream a blob into ``store``, verified; return False when the store already had it."""
        if store.has_blob(descriptor.digest):
            return False
        what = f"blob {descriptor.digest}"
        with (
            self._request("GET", f"/v2/{repository}/blobs/{descriptor.digest}", what) as resp,
            store.ingest(descriptor.digest, descriptor.size) as writer,
        ):
            for chunk in resp.iter_bytes(_READ_CHUNK):
                writer.write(chunk)
                if progress is not None:
                    progress(descriptor, len(chunk))
        return True

    def push_blob(
        self, repository: str, path: Path, descriptor: Descriptor, *, progress: ProgressFn | None = None
    ) -> bool:
        """Upload the file at ``path`` as ``descriptor``; return False when the registry already has it."""
        if self.blob_exists(repository, descriptor.digest):
            return False
        what = f"blob upload {descriptor.digest}"
        with self._request("POST", f"/v2/{repository}/blobs/uploads/", what) as resp:
            location = self._location(resp, what)
        octet = {"Content-Type": "application/octet-stream"}
        with path.open("rb") as f:
            if descriptor.size < self.monolithic_limit:
                headers = {**octet, "Content-Length": str(descriptor.size)}
                body = _stream(f, descriptor, descriptor.size, progress)
                url = _with_digest(location, descriptor.digest)
                with self._request("PUT", url, what, content=body, headers=headers):
                    return True
            offset = 0
            while offset < descriptor.size:
                length = min(self.monolithic_limit, descriptor.size - offset)
                headers = {
                    **octet,
                    "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}",
                }
                body = _stream(f, descriptor, length, progress)
                with self._request("PATCH", location, what, content=body, headers=headers) as resp:
                    location = self._location(resp, what)
                offset += length
        with self._request(
            "PUT", _with_digest(location, descriptor.digest), what, headers={**octet, "Content-Length": "0"}
        ):
            return True

    # -- plumbing ----------------------------------------------------------------------------

    def _location(self, resp: httpx.Response, what: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry} gave no upload location for {what}")
        return urljoin(str(resp.url), location)

    @contextlib.contextmanager
    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        accept: str | None = None,
        headers: dict[str, str] | None = None,
        content: Any = None,
    ) -> Iterator[httpx.Response]:
        """Send one request, streamed; translate transport errors and error statuses once, here."""
        all_headers = dict(headers or {})
        if accept:
            all_headers["Accept"] = accept
        try:
            with self._client.stream(method, url, headers=all_headers, content=content) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._status_error(resp, what)
                yield resp
        except httpx.TimeoutException as exc:
            cause = str(exc) or type(exc).__name__
            raise RegistryUnreachable(f"registry {self.registry} timed out ({what}): {cause}") from exc
        except httpx.TransportError as exc:
            cause = str(exc) or type(exc).__name__
            raise RegistryUnreachable(f"cannot reach registry {self.registry} ({what}): {cause}") from exc

    def _status_error(self, resp: httpx.Response, what: str) -> RegistryError:
        detail = _error_detail(resp)
        message = f"{what} on {self.registry}: HTTP {resp.status_code}{': ' + detail if detail else ''}"
        if resp.status_code in (401, 403):
            return AuthError(message, hint="check the credentials and that you may access this repository")
        if resp.status_code == 404:
            return NotFoundError(message)
        return RegistryError(message)


def _error_detail(resp: httpx.Response) -> str:
    """The first ``errors[]`` entry of a distribution error body, if there is one."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')} {first.get('message', '')}".strip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _with_digest(location: str, digest: str) -> str:
    # Appended by hand: httpx's params= would replace the query, dropping the registry's signed _state.
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _stream(f: Any, descriptor: Descriptor, length: int, progress: ProgressFn | None) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        chunk = f.read(min(_READ_CHUNK, remaining))
        if not chunk:
            raise RegistryError(f"{descriptor.digest}: the local file ended {remaining} bytes early")
        remaining -= len(chunk)
        if progress is not None:
            progress(descriptor, len(chunk))
        yield chunk
