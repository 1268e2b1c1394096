"""The HTTP routes, kept thin: each reads the app's state and hands over to the module that does the work.

Request bodies are parsed by hand (any Content-Type, errors in OpenAI's shape), so FastAPI cannot
infer them: ``BODIES`` names each route's strict request model, and ``app`` puts those models'
schemas into ``/openapi.json`` — the same models that validate, so the schema fuzzers read is the
rule the server applies. Every error a route can answer is documented with OpenAI's error body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from devserver.errors import ModelNotFound
from devserver.server import lora
from devserver.server.auth import require_api_key
from devserver.server.completions import CompletionRequest, CompletionServing
from devserver.server.metrics import CONTENT_TYPE
from devserver.server.protocol import ChatCompletionRequest, ErrorResponse, ModelCard, ModelList
from devserver.server.serving import ChatServing, parse
from devserver.server.state import ServerState

api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
probes = APIRouter()

BODIES: dict[str, type[BaseModel]] = {
    "ChatCompletionRequest": ChatCompletionRequest,
    "CompletionRequest": CompletionRequest,
    "LoadLoRAAdapterRequest": lora.LoadLoRAAdapterRequest,
    "UnloadLoRAAdapterRequest": lora.UnloadLoRAAdapterRequest,
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (403, "Forbidden by the server's configuration"),
        (404, "Unknown model"),
        (429, "Queue full"),
        (503, "Model loading"),
    )
}


def _body(name: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kitdev
    return state


@api.post("/chat/completions", openapi_extra=_body("ChatCompletionRequest"), response_model=None, responses=_ERRORS)
async def chat_completions(request: Request) -> Response:
    return await ChatServing(_state(request)).create(await request.body(), request)


@api.post("/completions", openapi_extra=_body("CompletionRequest"), response_model=None, responses=_ERRORS)
async def completions(request: Request) -> Response:
    return await CompletionServing(_state(request)).create(await request.body(), request)


@api.get("/models", responses=_ERRORS)
async def list_models(request: Request) -> ModelList:
    state = _state(request)
    return ModelList(data=[_card(state, model_id) for model_id, _ in state.served_ids()])


@api.get("/models/{model_id:path}", responses=_ERRORS)
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    state = _state(request)
    for served_id, _ in state.served_ids():
        if served_id == model_id:
            return _card(state, model_id)
    raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")


def _card(state: ServerState, model_id: str) -> ModelCard:
    """The base model's card carries kit-dev's facts; an adapter's names its base as ``parent``."""
    served = state.config.model
    if model_id != served.id:
        adapter = state.loaded.adapters[model_id.removeprefix(f"{served.id}/")] if state.loaded else None
        details = {"adapter": adapter.source, "kind": adapter.kind} if adapter else {}
        return ModelCard(id=model_id, created=state.created, root=served.id, parent=served.id, kitdev=details)
    details = {
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
            adapters=[a.name for a in state.loaded.adapters.values()],
        )
    return ModelCard(id=served.id, created=state.created, root=served.id, kitdev=details)


@api.post("/load_lora_adapter", openapi_extra=_body("LoadLoRAAdapterRequest"), responses=_ERRORS)
async def load_lora_adapter(request: Request) -> Response:
    body = parse(lora.LoadLoRAAdapterRequest, await request.body())
    return Response(await lora.load_adapter(_state(request), body), media_type="text/plain")


@api.post("/unload_lora_adapter", openapi_extra=_body("UnloadLoRAAdapterRequest"), responses=_ERRORS)
async def unload_lora_adapter(request: Request) -> Response:
    body = parse(lora.UnloadLoRAAdapterRequest, await request.body())
    return Response(await lora.unload_adapter(_state(request), body), media_type="text/plain")


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


def request_schemas() -> dict[str, Any]:
    """Every hand-parsed request model's schema (and the models they use), for OpenAPI components."""
    components: dict[str, Any] = {}
    for name, model in BODIES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    return components
