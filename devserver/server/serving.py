"""Chat completions: from request bytes to a JSON response or an SSE stream.

This is where a request is checked (body, model name, context length), rendered with the chat
template, queued on the model's worker, and where its client leaving cancels it: a stream through
sse-starlette cancelling our generator, a plain request by racing the generation against the
connection's ``http.disconnect`` (vLLM's ``with_cancellation``). Every request is counted in the
metrics exactly once, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from backends.base import FinishEvent, GenerationRequest, TokenEvent
from devserver.errors import BackendError, ContextLengthExceeded, KitDevError, ModelNotFound
from devserver.server.errors import invalid_request
from devserver.server.metrics import RequestTracker
from devserver.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ResponseMessage,
    UsageInfo,
    completion_id,
    now,
    openai_finish_reason,
)
from devserver.server.state import Loaded, ServerState
from devserver.server.streaming import chat_completion_stream
from devserver.server.worker import Job


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse the body as JSON whatever its Content-Type (``curl -d`` sends form-urlencoded)."""
    try:
        return ChatCompletionRequest.model_validate_json(body or b"null")
    except pydantic.ValidationError as exc:
        raise invalid_request(exc) from None


class ChatServing:
    def __init__(self, state: ServerState) -> None:
        self._state = state

    def _check_model(self, name: str) -> None:
        served = self._state.config.model
        if name != served.id and name not in served.aliases:
            raise ModelNotFound(f"the model {name!r} does not exist; this server serves {served.id!r}", param="model")

    async def create(self, body: bytes, http_request: Request) -> JSONResponse | EventSourceResponse:
        tracker = RequestTracker(self._state.metrics)  # a refused request is counted by its HTTP status only
        request = parse_chat_request(body)
        self._check_model(request.model)
        loaded = self._state.ready()
        generation = await self._prepare(request, loaded)
        tracker.adapter = generation.adapter
        job = loaded.worker.submit(generation, on_start=tracker.started)
        if request.stream:
            return EventSourceResponse(
                self._stream(job, tracker, request),
                ping=self._state.config.sse_ping_seconds,
                sep="\n",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            response = await self._complete(job, tracker, http_request)
        finally:
            tracker.end(cancelled=job.request.cancel.is_set())
        return JSONResponse(response.model_dump())

    async def _prepare(self, request: ChatCompletionRequest, loaded: Loaded) -> GenerationRequest:
        """Render and measure the prompt off the loop (long prompts take real time to tokenize)."""
        messages = [m.to_template() for m in request.messages]

        def render() -> tuple[str, int]:
            prompt = loaded.template.render(messages, add_generation_prompt=True)
            return prompt, loaded.backend.count_tokens(prompt)

        prompt, prompt_tokens = await run_in_threadpool(render)
        params = request.to_sampling_params(self._state.config.max_tokens_limit)
        context = loaded.backend.info.context_size
        if prompt_tokens >= context:
            raise ContextLengthExceeded(
                f"the prompt is {prompt_tokens} tokens; the model's context holds {context}", param="messages"
            )
        if params.max_tokens is not None and prompt_tokens + params.max_tokens > context:
            raise ContextLengthExceeded(
                f"{prompt_tokens} prompt tokens + max_tokens {params.max_tokens} exceed the context of {context}",
                param="max_tokens",
            )
        return GenerationRequest(request_id=completion_id(), prompt=prompt, params=params)

    def _model_name(self) -> str:
        return self._state.config.model.id

    async def _stream(self, job: Job, tracker: RequestTracker, request: ChatCompletionRequest) -> AsyncIterator[str]:
        completed = False
        try:
            async for data in chat_completion_stream(
                tracker.watch(job.events()),
                completion_id=job.request.request_id,
                created=now(),
                model=self._model_name(),
                include_usage=request.include_usage,
            ):
                yield data
            completed = True
        finally:
            # Also reached when sse-starlette cancels us because the client left.
            if not completed:
                job.cancel()
            tracker.end(cancelled=not completed)

    async def _complete(self, job: Job, tracker: RequestTracker, http_request: Request) -> ChatCompletionResponse:
        collect = asyncio.ensure_future(_collect(tracker.watch(job.events())))
        disconnect = asyncio.ensure_future(_client_left(http_request))
        try:
            await asyncio.wait({collect, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not collect.done():
                job.cancel()  # the backend stops within one token; the response goes nowhere
            text, finish = await collect
        finally:
            disconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disconnect
        if finish.reason == "error":
            raise BackendError(finish.error or "generation failed")
        message = ResponseMessage(content=text)
        choice = ChatCompletionResponseChoice(message=message, finish_reason=openai_finish_reason(finish.reason))
        return ChatCompletionResponse(
            id=job.request.request_id,
            created=now(),
            model=self._model_name(),
            choices=[choice],
            usage=UsageInfo.of(finish.prompt_tokens, finish.completion_tokens),
        )


async def _collect(events: AsyncIterator[Any]) -> tuple[str, FinishEvent]:
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TokenEvent):
            parts.append(event.text)
        elif isinstance(event, FinishEvent):
            return "".join(parts), event
    raise KitDevError("the generation ended without finishing")


async def _client_left(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so only ``http.disconnect`` remains)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
