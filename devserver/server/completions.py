"""``POST /v1/completions``: raw text prompts, no chat template, OpenAI's legacy completion objects.

A prompt is a string or a list of strings; each prompt gets ``n`` choices, indexed prompt-major as
OpenAI does (``index = prompt * n + choice``). Prompts are tokenized with the model's BOS
(``add_special_tokens``), since nothing else puts it there. ``logprobs`` is the legacy integer form
(0–5 alternatives) and comes back in the legacy shape (``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``). ``echo`` prepends the prompt to the text; ``suffix`` (insertion)
and ``best_of`` > ``n`` have no engine behind them and are refused by name.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from backends.base import GenerationRequest
from devserver.errors import InvalidRequest
from devserver.server.choices import Choice, Step, choice_list
from devserver.server.protocol import LogprobEntry, OpenAIFinishReason, SamplingRequest, UsageInfo, completion_id, now
from devserver.server.serving import Plan, Serving
from devserver.server.state import Loaded
from devserver.server.tools import Extractor

MAX_PROMPTS = 16
MAX_LEGACY_LOGPROBS = 5


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    best_of: int | None = Field(None, ge=1, le=16)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LEGACY_LOGPROBS)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts_only(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(item, int | list) for item in value):
            raise PydanticCustomError(
                "token_prompt", "token-id prompts are not supported; send text (a string or a list of strings)"
            )
        return value

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidRequest("suffix (insertion) is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("best_of other than n is not supported", param="best_of")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: OpenAIFinishReason | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude={"usage"} if self.usage is None else set()), ensure_ascii=False)


def legacy_logprobs(entries: list[LogprobEntry], offset: int) -> CompletionLogprobs:
    """Chat-shaped logprob entries in the legacy completion shape; ``offset`` is where they start."""
    out = CompletionLogprobs()
    for entry in entries:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append({top.token: top.logprob for top in entry.top_logprobs})
        out.text_offset.append(offset)
        offset += len(entry.token)
    return out


class CompletionServing(Serving[CompletionRequest]):
    request_type = CompletionRequest

    async def plan(self, request: CompletionRequest, loaded: Loaded, adapter: str | None) -> Plan:
        prompts = request.prompts
        if not all(prompts):  # nothing to condition on: llama.cpp cannot decode 0 tokens (as vLLM refuses)
            raise InvalidRequest("a prompt is empty; give at least one character of text", param="prompt")
        counts = await run_in_threadpool(lambda: [loaded.backend.count_tokens(p) for p in prompts])
        limit = self._state.config.max_tokens_limit
        want_logprobs = request.logprobs is not None
        request_id = completion_id("cmpl")
        generations: list[GenerationRequest] = []
        for prompt, tokens in zip(prompts, counts, strict=True):
            for i in range(request.n):
                params = request.to_sampling_params(
                    limit, choice=i, logprobs=want_logprobs, top_logprobs=request.logprobs or 0
                )
                self.check_context(tokens, params.max_tokens, loaded, "prompt")
                self.check_token_ids(params, loaded)
                generations.append(
                    GenerationRequest(
                        request_id=f"{request_id}-{len(generations)}",
                        prompt=prompt,
                        params=params,
                        adapter=adapter,
                        add_special_tokens=True,
                    )
                )
        choices = choice_list(len(generations), Extractor, logprobs=want_logprobs)
        firsts = [p * request.n for p in range(len(prompts))]
        return Plan(request_id, generations, choices, firsts, self.model_id(adapter))

    def framer(self, request: CompletionRequest, plan: Plan) -> CompletionFramer:
        return CompletionFramer(request, plan)

    def respond(self, request: CompletionRequest, plan: Plan) -> dict[str, Any]:
        choices = []
        for choice, generation in zip(plan.choices, plan.generations, strict=True):
            prefix = generation.prompt if request.echo else ""
            logprobs = legacy_logprobs(choice.logprobs, len(prefix)) if request.logprobs is not None else None
            choices.append(
                CompletionChoice(
                    text=prefix + "".join(choice.text),
                    index=choice.index,
                    logprobs=logprobs,
                    finish_reason=choice.finish_reason,
                )
            )
        response = CompletionResponse(
            id=plan.request_id, created=now(), model=plan.model, choices=choices, usage=plan.usage()
        )
        return response.model_dump()


class CompletionFramer:
    """``text_completion`` chunks: no role chunk; ``echo`` sends the prompt as each choice's first text."""

    def __init__(self, request: CompletionRequest, plan: Plan) -> None:
        self._request, self._plan = request, plan
        self._created = now()
        self._offsets = [0] * len(plan.choices)

    def _chunk(self, choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
        return CompletionResponse(
            id=self._plan.request_id, created=self._created, model=self._plan.model, choices=choices, usage=usage
        ).to_json()

    def opening(self, choice: Choice) -> str | None:
        if not self._request.echo:
            return None
        prompt = self._plan.generations[choice.index].prompt
        self._offsets[choice.index] = len(prompt)
        return self._chunk([CompletionChoice(text=prompt, index=choice.index)])

    def step(self, choice: Choice, step: Step) -> str | None:
        text = step.text
        if not text and not step.logprobs:
            return None
        logprobs = None
        if self._request.logprobs is not None:
            logprobs = legacy_logprobs(step.logprobs, self._offsets[choice.index])
        self._offsets[choice.index] += len(text)
        return self._chunk([CompletionChoice(text=text, index=choice.index, logprobs=logprobs)])

    def finish(self, choice: Choice) -> str:
        return self._chunk([CompletionChoice(text="", index=choice.index, finish_reason=choice.finish_reason)])

    def usage(self, usage: UsageInfo) -> str | None:
        return self._chunk([], usage) if self._request.include_usage else None
