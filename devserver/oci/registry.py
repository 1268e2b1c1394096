"""A small OCI distribution client on httpx: manifests and blobs, verified, resumable, errors mapped once.

Why not oras-py (which is installed): its retry decorator turns a closed port or an unanswerable auth
challenge into a ~130 s hang, it does not check digests on pull, it cannot resume a blob, and a
non-chunked upload reads the whole file into memory. The distribution API we need is a handful of
requests, so we speak it directly:

* HTTPS by default with kit's TLS flags (``devserver.oci.tls``), plain HTTP for loopback or on request;
* credentials from kit-dev's, kit's and Docker's files (``devserver.oci.credentials``) answering
  Basic and Bearer challenges (``devserver.oci.auth``);
* a 4 s connect timeout and no retry of a failed connect, so a registry that is down or unreachable
  fails within 5 s with one line naming the host and the cause;
* retries with backoff on 5xx and on connections dropped after they were made; a blob download
  that drops resumes with a ``Range`` request from the bytes already in ``ingest/``;
* every byte of a download hashed on its way into the store, 1 MiB at a time, so memory stays flat
  whatever the blob size. The client is thread-safe: pulls fetch several blobs at once through it.
  Blob bodies and manifests go through ``devserver.oci.fastget`` (``http.client``) when no proxy or
  test transport is involved: httpx's per-64 KiB parsing would cost most of the link's speed, and
  httpx itself is imported only when a request needs it (a 401 challenge, a 5xx, an upload).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from devserver import __version__
from devserver.errors import AuthError, DigestMismatch, NotFoundError, RegistryError, RegistryUnreachable
from devserver.oci import fastget
from devserver.oci.credentials import Credentials, lookup
from devserver.oci.descriptor import OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST, Descriptor, sha256_digest
from devserver.oci.options import RegistryOptions
from devserver.oci.reference import default_plain_http
from devserver.oci.store import Download, LocalStore
from devserver.oci.tls import tls_context, tls_error

if TYPE_CHECKING:  # imported when first needed: see RegistryClient._client
    import httpx

    from devserver.oci.auth import RegistryAuth

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MONOLITHIC_LIMIT",
    "READ_TIMEOUT_S",
    "RETRY_DELAYS",
    "ProgressFn",
    "RegistryClient",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 4.0  # < 5 s: "down" must fail inside 5 s
READ_TIMEOUT_S = 60.0
USER_AGENT = f"kit-dev/{__version__}"
MONOLITHIC_LIMIT = 100 << 20  # kit's uploadChunkDefaultSize: below it one PUT, above it PATCH chunks
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's recommended manifest limit
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # seconds before each retry of a 5xx or a dropped connection
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_ACCEPT = ", ".join([OCI_IMAGE_MANIFEST, OCI_IMAGE_INDEX, "application/vnd.docker.distribution.manifest.v2+json"])
_READ_CHUNK = 1 << 20
_LOOKUP = object()  # credentials= default: find them in the credential files

_T = TypeVar("_T")

ProgressFn = Callable[[Descriptor, int], None]
"""Called with the descriptor being transferred and the number of bytes just moved."""


class _Dropped(RegistryUnreachable):
    """A connection that was made and then broke, or a 5xx: worth another try, unlike a failed connect."""


class RegistryClient:
    """One registry host. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        registry: str,
        *,
        options: RegistryOptions | None = None,
        plain_http: bool | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        credentials: Credentials | object | None = _LOOKUP,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        monolithic_limit: int = MONOLITHIC_LIMIT,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        options = options or RegistryOptions()
        self.registry = registry
        chosen = plain_http if plain_http is not None else options.plain_http
        tls_asked = bool(options.ca_files or options.client_cert or not options.tls_verify)
        # Loopback defaults to plain HTTP, unless a TLS flag says the registry speaks HTTPS.
        self.plain_http = (default_plain_http(registry) and not tls_asked) if chosen is None else chosen
        self.monolithic_limit = monolithic_limit
        self.retry_delays = tuple(retry_delays)
        self._base_url = f"{'http' if self.plain_http else 'https'}://{registry}"
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._transport, self._auth_given, self._credentials = transport, auth, credentials
        self._pool = max(options.concurrency, 1) + 2
        # The fast path speaks to the registry itself: only with our own auth, no test transport, no proxy.
        self._fast = transport is None and auth is None and not urllib.request.getproxies()
        self._ssl_context: ssl.SSLContext | None = None
        if not self.plain_http:
            self._ssl_context = tls_context(
                tls_verify=options.tls_verify,
                ca_files=options.ca_files,
                client_cert=options.client_cert,
                client_key=options.client_key,
            )
        self._auth: RegistryAuth | None = None
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        """The httpx client, made on first use (pull threads share it).

        Made lazily because importing httpx and building its client cost ~0.15 s of CPU, which is
        most of what an anonymous pull through the fast path would otherwise spend before its first
        byte: such a pull never needs httpx at all.
        """
        with self._http_lock:
            if self._http is None:
                self._http = self._make_client()
            return self._http

    def _make_client(self) -> httpx.Client:
        import httpx

        from devserver.oci import auth as registry_auth

        auth = self._auth_given
        if auth is None:
            creds = lookup(self.registry) if self._credentials is _LOOKUP else self._credentials
            auth = self._auth = registry_auth.RegistryAuth(self.registry, creds)  # type: ignore[arg-type]
        return httpx.Client(
            base_url=self._base_url,
            transport=self._transport,
            auth=auth,
            verify=self._ssl_context or True,
            timeout=httpx.Timeout(self._read_timeout, connect=self._connect_timeout),
            limits=httpx.Limits(max_connections=self._pool, max_keepalive_connections=self._pool),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """``GET /v2/`` through the auth flow: how ``login`` checks credentials before storing them."""
        with self._request("GET", "/v2/", "login check"):
            pass

    # -- manifests ---------------------------------------------------------------------------

    def get_manifest(self, repository: str, tag_or_digest: str) -> tuple[bytes, str, str]:
        """Fetch a manifest: ``(bytes, media type, digest)``; the digest is checked when we know it."""
        return self._retrying(lambda: self._get_manifest_once(repository, tag_or_digest))

    def _get_manifest_once(self, repository: str, tag_or_digest: str) -> tuple[bytes, str, str]:
        what = f"manifest {repository}:{tag_or_digest}"
        path = f"/v2/{repository}/manifests/{tag_or_digest}"
        fast = self._fast_call(what, path, functools.partial(fastget.get_document, limit=MAX_MANIFEST_BYTES), _ACCEPT)
        if fast is not None:
            data, headers = fast
            if len(data) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{what} on {self.registry} is larger than {MAX_MANIFEST_BYTES} bytes")
            content_type, claimed = headers.get("Content-Type", ""), headers.get("Docker-Content-Digest")
        else:
            with self._request("GET", path, what, accept=_ACCEPT) as resp:
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise RegistryError(f"{what} on {self.registry} is larger than {MAX_MANIFEST_BYTES} bytes")
                content_type, claimed = resp.headers.get("Content-Type", ""), resp.headers.get("Docker-Content-Digest")
            data = bytes(body)
        media_type = content_type.split(";")[0].strip()
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

    def read_small_blob(self, repository: str, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A config-sized blob into memory, verified (inspect reads configs without storing them)."""
        with self._request("GET", f"/v2/{repository}/blobs/{digest}", f"blob {digest}") as resp:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body.extend(chunk)
                if len(body) > limit:
                    raise RegistryError(f"blob {digest} on {self.registry} is larger than {limit} bytes")
        if sha256_digest(bytes(body)) != digest:
            raise DigestMismatch(f"blob {digest} from {self.registry} does not match its digest")
        return bytes(body)

    def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            with self._request("HEAD", f"/v2/{repository}/blobs/{digest}", f"blob {digest}"):
                return True
        except NotFoundError:
            return False

    def fetch_blob(
        self, repository: str, descriptor: Descriptor, store: LocalStore, *, progress: ProgressFn | None = None
    ) -> bool:
        """Stream a blob into ``store``, verified; return False when the store already had it.

        The partial file in ``ingest/`` survives an interruption (this process's or an earlier one's)
        and the next attempt asks only for the missing bytes. Other processes pulling the same blob
        wait on its lock and then find it committed, so each blob crosses the network once.
        """
        with store.download(descriptor.digest, descriptor.size) as download:
            if download.present:
                return False
            if download.offset and progress is not None:
                progress(descriptor, download.offset)
            delays = list(self.retry_delays)
            while True:
                before = download.offset
                try:
                    self._fetch_into(repository, descriptor, download, progress)
                    break
                except _Dropped as exc:
                    if download.offset > before:
                        delays = list(self.retry_delays)  # progress was made: a fresh budget of retries
                    if not delays:
                        raise
                    delay = delays.pop(0)
                    log.info("%s; resuming at byte %d in %.2fs", exc.message, download.offset, delay)
                    time.sleep(delay)
            download.commit()
        return True

    def _fetch_into(
        self, repository: str, descriptor: Descriptor, download: Download, progress: ProgressFn | None
    ) -> None:
        if download.offset >= descriptor.size:
            return  # everything is on disk already; commit verifies it
        what = f"blob {descriptor.digest}"
        path = f"/v2/{repository}/blobs/{descriptor.digest}"

        def started(resumed: bool) -> None:
            if download.offset and not resumed:
                download.reset()  # the registry sent the whole blob: start over

        def write(chunk: memoryview | bytes) -> None:
            download.write(chunk)
            if progress is not None:
                progress(descriptor, len(chunk))

        get = functools.partial(fastget.get_blob, offset=download.offset, on_start=started, write=write)
        if self._fast_call(what, path, get) is not None:
            return
        headers = {"Range": f"bytes={download.offset}-"} if download.offset else {}
        with self._request("GET", path, what, headers=headers) as resp:
            started(_range_honoured(resp, download.offset))
            for chunk in resp.iter_bytes(_READ_CHUNK):
                write(chunk)

    def _fast_call(self, what: str, path: str, call: Callable[..., _T], accept: str | None = None) -> _T | None:
        """``call`` through ``fastget`` with the auth httpx already earned; None: ask through httpx.

        Errors are mapped here as ``_request`` maps httpx's: a drop may be retried, a failed connect
        is the registry being down.
        """
        if not self._fast:
            return None
        url = self._base_url + path
        headers = {"User-Agent": USER_AGENT, **({"Accept": accept} if accept else {})}
        authorization = self._auth.header_for("GET", url) if self._auth is not None else None
        if authorization:
            headers["Authorization"] = authorization
        try:
            return call(
                url,
                headers,
                context=self._ssl_context,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
            )
        except fastget.Fallback as exc:
            log.debug("%s on %s: %s; asking again through httpx", what, self.registry, exc)
            return None
        except fastget.Dropped as exc:
            raise _Dropped(f"registry {self.registry} dropped the connection ({what}): {exc}") from exc
        except fastget.Unreachable as exc:
            raise RegistryUnreachable(f"cannot reach registry {self.registry} ({what}): {exc}") from exc

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

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run a whole small exchange again after a drop (a manifest whose body broke off)."""
        delays = list(self.retry_delays)
        while True:
            try:
                return call()
            except _Dropped:
                if not delays:
                    raise
                time.sleep(delays.pop(0))

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
        """Send one request, streamed; retry what is safe to retry; translate errors once, here.

        A request is sent again after a 5xx or a dropped connection when its body can be replayed
        (none, or bytes). A failed connect is never retried: that is the registry being down, and
        the user should hear so within seconds. Errors while the caller reads the body become
        ``_Dropped`` so the caller can resume.
        """
        import httpx  # already imported by ``_client``; bound here for the except clauses

        all_headers = dict(headers or {})
        if accept:
            all_headers["Accept"] = accept
        replayable = content is None or isinstance(content, bytes)
        delays = list(self.retry_delays) if replayable else []
        while True:
            with contextlib.ExitStack() as stack:
                try:
                    resp = stack.enter_context(self._client.stream(method, url, headers=all_headers, content=content))
                    if resp.status_code in _RETRY_STATUSES and delays:
                        log.info("%s on %s: HTTP %d, retrying", what, self.registry, resp.status_code)
                        time.sleep(delays.pop(0))
                        continue
                    if resp.status_code >= 400:
                        resp.read()
                        error = self._status_error(resp, what)
                        if resp.status_code in _RETRY_STATUSES:
                            raise _Dropped(error.message) from None
                        raise error
                except httpx.TransportError as exc:
                    connect = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                    if delays and not connect:
                        time.sleep(delays.pop(0))
                        continue
                    raise self._transport_error(exc, what, dropped=not connect) from exc
                try:
                    yield resp
                except httpx.TransportError as exc:
                    raise self._transport_error(exc, what, dropped=True) from exc
                return

    def _transport_error(self, exc: httpx.TransportError, what: str, *, dropped: bool) -> RegistryError:
        import httpx

        tls = tls_error(exc, self.registry)
        if tls is not None:
            return tls
        cause = " ".join((str(exc) or type(exc).__name__).split())
        if isinstance(exc, httpx.TimeoutException):
            message = f"registry {self.registry} timed out ({what}): {cause}"
        elif dropped:
            message = f"registry {self.registry} dropped the connection ({what}): {cause}"
        else:
            message = f"cannot reach registry {self.registry} ({what}): {cause}"
        return _Dropped(message) if dropped else RegistryUnreachable(message)

    def _status_error(self, resp: httpx.Response, what: str) -> RegistryError:
        detail = _error_detail(resp)
        message = f"{what} on {self.registry}: HTTP {resp.status_code}{': ' + detail if detail else ''}"
        if resp.status_code in (401, 403):
            return AuthError(message, hint="check the credentials and that you may access this repository")
        if resp.status_code == 404:
            return NotFoundError(message)
        if resp.status_code == 400 and "HTTPS server" in resp.text:  # Go's answer to plain HTTP on a TLS port
            return RegistryError(
                f"registry {self.registry} speaks HTTPS, but kit-dev used plain HTTP (the loopback default)",
                hint="pass --tls-cert CA_FILE (or --tls-verify=false) to use HTTPS",
            )
        return RegistryError(message)


def _range_honoured(resp: httpx.Response, offset: int) -> bool:
    """Whether a response to ``Range: bytes=offset-`` really starts at ``offset``."""
    if resp.status_code != 206:
        return False
    content_range = resp.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


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
