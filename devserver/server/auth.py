"""``--api-key``: a Bearer token on ``/v1/*``; ``/health`` and ``/metrics`` stay open for probes."""

from __future__ import annotations

import secrets

from fastapi import Request

from devserver.errors import Unauthorized


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: pass when no key is configured or the Bearer token matches it."""
    expected = request.app.state.kitdev.config.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong API key", hint="send the header Authorization: Bearer <key>")
