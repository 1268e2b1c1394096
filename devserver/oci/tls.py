"""TLS for registry connections: kit's ``--tls-verify``, ``--cert``/``--key`` and extra CA files.

We always hand httpx an ``ssl.SSLContext``: a ``verify=`` path string is deprecated in httpx and warns,
and a context is the one value that can carry extra CAs and a client certificate together. The base
is the system trust store (``ssl.create_default_context``, which also honours ``SSL_CERT_FILE`` and
``SSL_CERT_DIR``), like kit's Go client, rather than httpx's certifi bundle, so a company CA installed
on the machine just works.

``tls_error`` turns an httpx connection error that TLS caused into a ``RegistryError`` that tells the
user which flag fixes it; a bare "CERTIFICATE_VERIFY_FAILED" says neither.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from devserver.errors import RegistryError, UsageError

if TYPE_CHECKING:  # only for annotations: a pull that never needs httpx does not import it
    import httpx

__all__ = ["tls_context", "tls_error"]


def tls_context(
    *,
    tls_verify: bool = True,
    ca_files: Sequence[str | Path] = (),
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> ssl.SSLContext:
    """The ``verify=`` value for an ``httpx.Client`` that talks to one registry.

    ``ca_files`` are trusted in addition to the system store. ``client_cert`` may hold the key too;
    otherwise pass ``client_key``. ``tls_verify=False`` checks neither the chain nor the host name.
    """
    context = ssl.create_default_context()
    if not tls_verify:
        context.check_hostname = False  # must come before verify_mode, or ssl refuses
        context.verify_mode = ssl.CERT_NONE
    for ca in ca_files:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot use CA file {ca}: {_reason(exc)}", param="tls-cert") from exc
    if client_key is not None and client_cert is None:
        raise UsageError("a client key needs its certificate: pass --cert as well as --key", param="cert")
    if client_cert is not None:
        try:
            context.load_cert_chain(str(client_cert), None if client_key is None else str(client_key))
        except (OSError, ssl.SSLError) as exc:
            what = f"{client_cert}" + ("" if client_key is None else f" with key {client_key}")
            raise UsageError(f"cannot use client certificate {what}: {_reason(exc)}", param="cert") from exc
    return context


def tls_error(exc: httpx.TransportError, host: str) -> RegistryError | None:
    """A clear error when ``exc`` was caused by TLS, else None (let the caller say 'unreachable')."""
    cause = _ssl_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        return RegistryError(
            f"cannot verify the TLS certificate of registry {host}: {cause.verify_message or _reason(cause)}",
            hint="pass the registry's CA file with --tls-cert, or --tls-verify=false to skip verification",
        )
    reason = _reason(cause)
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        return RegistryError(
            f"registry {host} did not answer TLS: {reason}", hint="if it serves plain HTTP, pass --plain-http"
        )
    if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "HANDSHAKE_FAILURE")):
        return RegistryError(  # how Go servers refuse a missing or untrusted client certificate
            f"registry {host} refused the TLS handshake: {reason}",
            hint="if it requires a client certificate, pass --cert and --key with one signed by a CA it trusts",
        )
    return RegistryError(f"TLS with registry {host} failed: {reason}")


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error under httpx's and httpcore's wrappers, following ``__cause__``/``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "reason", None) or exc or type(exc).__name__).split())
