"""The one exception tree of kit-dev.

Every error a user can cause or meet is a ``KitDevError``. Each class carries what both faces of the
program need: the HTTP status and OpenAI error ``type``/``code`` (mapped in one place in
``devserver.server.errors``) and a one-line message for the CLI (printed in one place in
``devserver.cli``). Foreign exceptions (httpx, OSError, llama.cpp, torch) are translated where they
enter and chained with ``from``; a bare ``ValueError`` is never mapped to a 4xx.

    KitDevError
    ├── UsageError                 bad flags or arguments (CLI)
    ├── ReferenceError_            a ModelKit reference that does not parse
    ├── KitfileError               a Kitfile that kit would reject
    ├── ModelKitError              a manifest/config/layer that is not a usable ModelKit
    │   └── UnsafeArchiveError     a tar entry that escapes the target or is a link
    ├── RegistryError              talking to an OCI registry failed
    │   ├── RegistryUnreachable
    │   ├── AuthError
    │   └── NotFoundError
    ├── DigestMismatch             bytes that do not match their digest
    ├── CacheError                 the local cache cannot do what was asked
    ├── BackendError               no backend can serve this model, or it failed to load
    ├── InvalidRequest             an API request the server refuses (400, names ``param``)
    │   └── ContextLengthExceeded
    ├── ModelNotFound              an API request for a model id that is not served (404)
    ├── Unauthorized               missing/wrong API key (401)
    ├── QueueFull                  the model's queue is full (429)
    └── ServerNotReady             the model is still loading (503)
"""

from __future__ import annotations


class KitDevError(Exception):
    """Base of every error kit-dev raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.hint = hint

    def one_line(self) -> str:
        """The message as the CLI prints it: one line, with the fix when we know it."""
        text = " ".join(self.message.split())
        if self.hint:
            text = f"{text} ({' '.join(self.hint.split())})"
        return text


class UsageError(KitDevError):
    status_code = 400
    error_type = "invalid_request_error"


class ReferenceError_(KitDevError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_reference"


class KitfileError(KitDevError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_kitfile"


class ModelKitError(KitDevError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_modelkit"


class UnsafeArchiveError(ModelKitError):
    code = "unsafe_archive"


class RegistryError(KitDevError):
    status_code = 502
    error_type = "registry_error"


class RegistryUnreachable(RegistryError):
    code = "registry_unreachable"


class AuthError(RegistryError):
    status_code = 401
    code = "registry_auth_failed"


class NotFoundError(RegistryError):
    status_code = 404
    code = "not_found"


class DigestMismatch(KitDevError):
    status_code = 502
    error_type = "registry_error"
    code = "digest_mismatch"


class CacheError(KitDevError):
    code = "cache_error"


class BackendError(KitDevError):
    code = "backend_error"


class InvalidRequest(KitDevError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(KitDevError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class Unauthorized(KitDevError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class QueueFull(KitDevError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class ServerNotReady(KitDevError):
    status_code = 503
    error_type = "server_error"
    code = "model_loading"
