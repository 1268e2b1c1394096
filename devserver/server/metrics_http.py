"""Count every inference request once by the HTTP status it was answered with.

A pure ASGI middleware sees the status however the response was made: a 200 stream, a 400 from body
validation, a 401 from the API-key dependency, a 404 for an unknown model, a 429 from a full queue.
It counts as the response starts (so a client that has its answer also finds it counted), and counts
500 when the app raised before answering. Inference requests are the ``POST``s under ``/v1/``;
``GET /v1/models``, ``/health`` and ``/metrics`` are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StatusCounter:
    def __init__(self, app: ASGIApp, count: Callable[[int], None]) -> None:
        self._app = app
        self._count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self._app(scope, receive, send)
            return
        answered = False

        async def counting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self._count(int(message["status"]))
            await send(message)

        try:
            await self._app(scope, receive, counting_send)
        except Exception:  # ServerErrorMiddleware outside us turns it into a 500
            if not answered:
                self._count(500)
            raise
