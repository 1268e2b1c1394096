"""OpenAI wire types, named as OpenAI names them, in one module with no engine or web imports.

Requests are strict where laxness hides client bugs: a field kit-dev does not know is refused with a
400 naming it (never silently dropped), ``"stream": "true"`` is not a boolean, and options that are
recognised but not yet served (``tools``, ``logprobs``, ``n > 1`` …) are refused by name rather than
ignored. The request converts itself into ``backends.base.SamplingParams`` (vLLM's
``to_sampling_params``), so the serving code never reads request fields one by one.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.base import FinishReason, SamplingParams
from devserver.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4


class OpenAIBaseModel(BaseModel):
    """Unknown fields are refused (``extra_forbidden`` becomes a 400 naming the field); strict types
    (validated from JSON, where an int still counts as a float) keep ``"true"`` from passing as a bool."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: only fields the client sent, content as text."""
        message = self.model_dump(exclude_unset=True)
        if isinstance(self.content, list):
            message["content"] = "".join(part.text for part in self.content)
        return message


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text"]


class ChatCompletionRequest(OpenAIBaseModel):
    """``POST /v1/chat/completions``. Fields in the order of OpenAI's reference, then extensions."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    # --- extensions (llama.cpp and vLLM accept these too) ---
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check_combinations(self) -> ChatCompletionRequest:
        if self.n != 1:
            raise InvalidRequest("only n=1 is supported", param="n")
        if self.logprobs or self.top_logprobs:
            raise InvalidRequest("logprobs are not supported yet", param="logprobs")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options needs stream=true", param="stream_options")
        if len(self.stop_sequences) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop")
        if self.logit_bias:
            for key, value in self.logit_bias.items():
                if not key.lstrip("-").isdigit():
                    raise InvalidRequest(f"logit_bias keys are token ids, got {key!r}", param="logit_bias")
                if not -100.0 <= value <= 100.0:
                    raise InvalidRequest("logit_bias values lie in [-100, 100]", param="logit_bias")
        return self

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_sampling_params(self, max_tokens_limit: int | None = None) -> SamplingParams:
        """The engine's view of this request; ``max_tokens_limit`` is the server's per-request cap."""
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens_limit is not None:
            max_tokens = min(max_tokens or max_tokens_limit, max_tokens_limit)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            stop=self.stop_sequences,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
        )


# --- responses -------------------------------------------------------------------------------------

OpenAIFinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


def openai_finish_reason(reason: FinishReason) -> OpenAIFinishReason:
    """``cancelled`` and ``error`` never reach a client as finish reasons; the rest map one to one."""
    return "length" if reason == "length" else "tool_calls" if reason == "tool_calls" else "stop"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatCompletionResponseChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: OpenAIFinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionResponseStreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: OpenAIFinishReason | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None

    def to_json(self) -> str:
        """Delta fields the chunk does not carry are left out; ``finish_reason: null`` is kept."""
        data = self.model_dump(exclude={"usage"} if self.usage is None else set())
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kit-dev"
    kitdev: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
