"""The HTTP routes, kept thin: each reads the app's state and hands over to the module that does the work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from devserver.server.auth import require_api_key
from devserver.server.metrics import CONTENT_TYPE
from devserver.server.protocol import ChatCompletionRequest, ModelCard, ModelList
from devserver.server.serving import ChatServing
from devserver.server.state import ServerState

api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
probes = APIRouter()

# The body is parsed by hand (any Content-Type, errors in OpenAI's shape); this documents it.
_CHAT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
    }
}


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kitdev
    return state


@api.post("/chat/completions", openapi_extra=_CHAT_BODY, response_model=None)
async def chat_completions(request: Request) -> JSONResponse | EventSourceResponse:
    return await ChatServing(_state(request)).create(await request.body(), request)


@api.get("/models")
async def list_models(request: Request) -> ModelList:
    state = _state(request)
    served = state.config.model
    details: dict[str, Any] = {
        "status": state.status,
        "reference": served.reference,
        "digest": served.digest,
        "version": served.version,
        "aliases": list(served.aliases),
        "metadata": served.metadata,
    }
    if state.loaded is not None:
        info = state.loaded.backend.info
        details.update(
            backend=info.name,
            device=info.device,
            reasons=list(info.reasons),
            context_size=info.context_size,
            max_concurrency=info.max_concurrency,
        )
    return ModelList(data=[ModelCard(id=served.id, created=state.created, kitdev=details)])


@probes.get("/health")
async def health(request: Request) -> JSONResponse:
    state = _state(request)
    if state.status == "ok":
        return JSONResponse({"status": "ok"})
    body: dict[str, Any] = {"status": state.status}
    if state.error:
        body["error"] = state.error
    return JSONResponse(body, status_code=503)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE)


def chat_request_schema() -> dict[str, Any]:
    """The request schema for OpenAPI (the route reads its body itself, so FastAPI cannot infer it)."""
    return ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
