"""Chat and text completions: from request bytes to a JSON response or an SSE stream.

``Serving`` holds the part both endpoints share: the body is checked, the ``model`` resolved to the
base or one of its LoRA adapters, the request planned into one ``GenerationRequest`` per choice
(the endpoint's ``plan``), the backend asked whether it can honour the options (``check_request``,
where it has one, so a refusal is a 400 before any stream starts), every choice queued at once, and
the client leaving cancels them all: a stream through sse-starlette cancelling our generator, a plain
request by racing the generation against the connection's ``http.disconnect`` (vLLM's
``with_cancellation``). Every request is counted in the metrics exactly once, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from backends.base import GenerationRequest, SamplingParams
from devserver.errors import BackendError, ContextLengthExceeded, InvalidRequest
from devserver.server import chat
from devserver.server.choices import Choice, choice_list, merge, on_event
from devserver.server.errors import invalid_request
from devserver.server.metrics import RequestTracker
from devserver.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChoiceLogprobs,
    ResponseMessage,
    SamplingRequest,
    UsageInfo,
    completion_id,
    now,
)
from devserver.server.state import Loaded, ServerState
from devserver.server.streaming import ChatFramer, Framer, stream_choices
from devserver.server.worker import Job

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer: no one reads it

RequestT = TypeVar("RequestT", bound=SamplingRequest)


@dataclass
class Plan:
    """One request's generations and the choices they feed (``choices[i]`` ← ``generations[i]``)."""

    request_id: str
    generations: list[GenerationRequest]
    choices: list[Choice]
    first_of_prompt: list[int]  # one choice index per distinct prompt, to count prompt tokens once
    model: str  # the id the client named, base or adapter, echoed in every response

    def usage(self) -> UsageInfo:
        firsts = [finish for i in self.first_of_prompt if (finish := self.choices[i].finish)]
        completion = sum(c.finish.completion_tokens for c in self.choices if c.finish)
        return UsageInfo.of(
            sum(f.prompt_tokens for f in firsts), completion, cached_tokens=sum(f.cached_tokens for f in firsts)
        )


def parse(model: type[RequestT], body: bytes) -> RequestT:
    """Parse the body as JSON whatever its Content-Type (``curl -d`` sends form-urlencoded)."""
    try:
        return model.model_validate_json(body or b"null")
    except pydantic.ValidationError as exc:
        raise invalid_request(exc) from None
    except UnicodeError:
        raise InvalidRequest("the request body is not valid UTF-8") from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    return parse(ChatCompletionRequest, body)


class Serving(Generic[RequestT]):
    """The flow both endpoints share; subclasses parse, plan, frame and respond."""

    request_type: type[RequestT]

    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def plan(self, request: RequestT, loaded: Loaded, adapter: str | None) -> Plan:
        raise NotImplementedError

    def framer(self, request: RequestT, plan: Plan) -> Framer:
        raise NotImplementedError

    def respond(self, request: RequestT, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    async def create(self, body: bytes, http_request: Request) -> Response:
        tracker = RequestTracker(self._state.metrics)  # a refused request is counted by its HTTP status only
        request = parse(self.request_type, body)
        adapter = tracker.adapter = self._state.resolve_model(request.model)
        loaded = self._state.ready()
        plan = await self.plan(request, loaded, adapter)
        check = getattr(loaded.backend, "check_request", None)
        if callable(check):
            check(plan.generations[0])
        jobs = loaded.worker.submit_all(plan.generations, on_start=tracker.started)
        if request.stream:
            return EventSourceResponse(
                self._stream(request, plan, jobs, tracker),
                ping=self._state.config.sse_ping_seconds,
                sep="\n",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        client_left = False
        try:
            client_left = await self._complete(plan, jobs, tracker, http_request)
        finally:  # a failed choice cancels the others too, so only a departed client counts as abort
            tracker.end(cancelled=client_left, tool_calls=_tool_calls(plan))
        if client_left:  # not a server error: the status is only counted, as the abort it is
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        _raise_failure(plan)
        return JSONResponse(self.respond(request, plan))

    def model_id(self, adapter: str | None) -> str:
        base = self._state.config.model.id
        return base if adapter is None else f"{base}/{adapter}"

    def check_context(self, prompt_tokens: int, max_tokens: int | None, loaded: Loaded, param: str) -> None:
        context = loaded.backend.info.context_size
        if prompt_tokens >= context:
            raise ContextLengthExceeded(
                f"the prompt is {prompt_tokens} tokens; the model's context holds {context}", param=param
            )
        if max_tokens is not None and prompt_tokens + max_tokens > context:
            raise ContextLengthExceeded(
                f"{prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the context of {context}",
                param="max_tokens",
            )

    def check_token_ids(self, params: SamplingParams, loaded: Loaded) -> None:
        """Refuse a ``logit_bias`` naming a token the model does not have, as OpenAI and vLLM do,
        before the request queues (the engine would fail it mid-stream or ignore it)."""
        vocab = loaded.backend.info.vocab_size
        if vocab is None or not params.logit_bias:
            return
        unknown = sorted(t for t in params.logit_bias if not 0 <= t < vocab)
        if unknown:
            raise InvalidRequest(
                f"logit_bias names token ids {unknown[:5]} that the model lacks; its ids run 0 to {vocab - 1}",
                param="logit_bias",
            )

    async def _stream(
        self, request: RequestT, plan: Plan, jobs: list[Job], tracker: RequestTracker
    ) -> AsyncIterator[bytes]:
        """Each payload framed here as one SSE event (a JSON text never holds a raw line break, so it is
        one ``data:`` line); sse-starlette passes bytes through instead of re-splitting every chunk."""
        completed = False
        try:
            events = merge([tracker.watch(job.events()) for job in jobs])
            async for data in stream_choices(events, plan.choices, self.framer(request, plan), plan.usage):
                yield f"data: {data}\n\n".encode()
            completed = True
        finally:
            # Also reached when sse-starlette cancels us because the client left.
            for choice, job in zip(plan.choices, jobs, strict=True):
                if choice.finish is None:
                    job.cancel()
            tracker.end(cancelled=not completed, tool_calls=_tool_calls(plan))

    async def _complete(self, plan: Plan, jobs: list[Job], tracker: RequestTracker, http_request: Request) -> bool:
        """Collect every choice; return whether the client left first."""

        async def collect() -> None:
            async for index, event in merge([tracker.watch(job.events()) for job in jobs]):
                on_event(plan.choices, index, event)

        collecting = asyncio.ensure_future(collect())
        disconnect = asyncio.ensure_future(_client_left(http_request))
        client_left = False
        try:
            await asyncio.wait({collecting, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():
                client_left = True
                for job in jobs:
                    job.cancel()  # the backend stops within one token; the response goes nowhere
            await collecting
        finally:
            disconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disconnect
            for choice, job in zip(plan.choices, jobs, strict=True):
                if choice.finish is None:
                    job.cancel()  # a choice failed or the client left: the rest are not needed
        return client_left


class ChatServing(Serving[ChatCompletionRequest]):
    request_type = ChatCompletionRequest

    async def plan(self, request: ChatCompletionRequest, loaded: Loaded, adapter: str | None) -> Plan:
        """Render and measure the prompt off the loop (long prompts take real time to tokenize)."""
        template = loaded.template
        chat.check_tool_syntax(request, template)
        messages = chat.template_messages(request, template)
        tools = chat.template_tools(request, template)

        def render() -> tuple[str, int]:
            prompt = template.render(messages, add_generation_prompt=True, tools=tools)
            return prompt, loaded.backend.count_tokens(prompt)

        prompt, prompt_tokens = await run_in_threadpool(render)
        schema = chat.constraint(request)
        request_id = completion_id()
        generations = [
            GenerationRequest(
                request_id=request_id if request.n == 1 else f"{request_id}-{i}",
                prompt=prompt,
                params=request.to_sampling_params(
                    self._state.config.max_tokens_limit,
                    choice=i,
                    logprobs=request.logprobs,
                    top_logprobs=request.top_logprobs or 0,
                    json_schema=schema,
                ),
                adapter=adapter,
            )
            for i in range(request.n)
        ]
        self.check_context(prompt_tokens, generations[0].params.max_tokens, loaded, "messages")
        self.check_token_ids(generations[0].params, loaded)
        choices = choice_list(request.n, lambda: chat.extractor(request), logprobs=request.logprobs)
        return Plan(request_id, generations, choices, [0], self.model_id(adapter))

    def framer(self, request: ChatCompletionRequest, plan: Plan) -> Framer:
        return ChatFramer(plan.request_id, now(), plan.model, include_usage=request.include_usage)

    def respond(self, request: ChatCompletionRequest, plan: Plan) -> dict[str, Any]:
        choices = []
        for choice in plan.choices:
            text = "".join(choice.text)
            message = ResponseMessage(content=text or (None if choice.calls else ""), tool_calls=choice.calls or None)
            logprobs = ChoiceLogprobs(content=choice.logprobs) if request.logprobs else None
            choices.append(
                ChatCompletionResponseChoice(
                    index=choice.index, message=message, logprobs=logprobs, finish_reason=choice.finish_reason
                )
            )
        response = ChatCompletionResponse(
            id=plan.request_id, created=now(), model=plan.model, choices=choices, usage=plan.usage()
        )
        return response.to_dict()


def _raise_failure(plan: Plan) -> None:
    for choice in plan.choices:
        assert choice.finish is not None
        if choice.finish.reason == "error":
            raise BackendError(choice.finish.error or "generation failed")
        if choice.finish.reason == "cancelled":
            raise BackendError("the generation was cancelled (the server is shutting down)")


async def _client_left(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so only ``http.disconnect`` remains)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _tool_calls(plan: Plan) -> int:
    """Choices that finished in tool calls, which the metrics cannot see in the backend's events."""
    return sum(1 for c in plan.choices if c.finish is not None and c.finish_reason == "tool_calls")
