"""OpenAI wire types, named as OpenAI names them, with no engine or web imports.

Requests are strict where laxness hides client bugs: a field kit-dev does not know is refused with a
400 naming it (never silently dropped), ``"stream": "true"`` is not a boolean, ``Infinity`` is not a
temperature, and every bound that can be written into the JSON schema is (``/openapi.json`` is what
schemathesis fuzzes, so the schema and the validation must be the same rules). Requests convert
themselves into ``backends.base.SamplingParams`` (vLLM's ``to_sampling_params``), so the serving code
never reads sampling fields one by one. Chat-only types live here; ``/v1/completions`` has
``protocol_completions``, tools have ``tools``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backends.base import FinishReason, SamplingParams
from devserver.errors import InvalidRequest
from devserver.server.tools import ChatCompletionTool, NamedToolChoice, ToolCall

MAX_STOP_SEQUENCES = 4
MAX_N = 16  # choices per request; each one is a generation holding a queue place
MAX_TOP_LOGPROBS = 20
SEED_SPACE = 2**32  # llama.cpp seeds are uint32; larger OpenAI (int64) seeds wrap deterministically

TokenId = Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
StopList = Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)]


class OpenAIBaseModel(BaseModel):
    """Unknown fields are refused (``extra_forbidden`` becomes a 400 naming the field); strict types
    (validated from JSON, where an int still counts as a float) keep ``"true"`` from passing as a
    bool; ``NaN``/``Infinity`` are refused so no bound can be slipped past."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class SamplingRequest(OpenAIBaseModel):
    """The fields chat and text completions share, in OpenAI's order, then the extensions."""

    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[TokenId, Bias] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | StopList | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    # --- extensions (llama.cpp and vLLM accept these too) ---
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _check_stream_options(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options needs stream=true", param="stream_options")
        return self

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_sampling_params(
        self,
        max_tokens_limit: int | None = None,
        *,
        choice: int = 0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        json_schema: dict[str, Any] | None = None,
    ) -> SamplingParams:
        """The engine's view of choice ``choice`` of this request; ``max_tokens_limit`` is the server's
        cap. Choices of one seeded request get seeds ``seed + choice``, so ``n`` seeded choices differ
        from each other and each repeats across identical requests."""
        max_tokens = self.requested_max_tokens()
        if max_tokens_limit is not None:
            max_tokens = min(max_tokens or max_tokens_limit, max_tokens_limit)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=None if self.seed is None else (self.seed + choice) % SEED_SPACE,
            stop=self.stop_sequences,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            json_schema=json_schema,
        )


# --- chat requests ---------------------------------------------------------------------------------


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: which call it answers

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise InvalidRequest("only assistant messages carry tool_calls", param="messages.tool_calls")
        if self.content is None and self.role != "assistant":
            raise InvalidRequest(f"a {self.role} message needs content", param="messages.content")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(OpenAIBaseModel):
    name: Annotated[str, StringConstraints(max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatText(OpenAIBaseModel):
    type: Literal["text"]


class ResponseFormatJsonObject(OpenAIBaseModel):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(OpenAIBaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]
ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tools: list[ChatCompletionTool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None

    @model_validator(mode="after")
    def _check_combinations(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs=true", param="top_logprobs")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise InvalidRequest(
                    f"tool_choice names {self.tool_choice.function.name!r}, which is not among the tools",
                    param="tool_choice",
                )
        if self.response_format is not None and self.response_format.type != "text" and self.calls_tools:
            raise InvalidRequest("response_format cannot be combined with tools", param="response_format")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def calls_tools(self) -> bool:
        """True when tools may be called (tools given and tool_choice is not ``none``)."""
        return bool(self.tools) and self.tool_choice != "none"

    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema ``response_format`` asks for, or None for free text."""
        if isinstance(self.response_format, ResponseFormatJsonObject):
            return {"type": "object"}
        if isinstance(self.response_format, ResponseFormatJsonSchema):
            return self.response_format.json_schema.schema_ or {"type": "object"}
        return None


# --- responses -------------------------------------------------------------------------------------

OpenAIFinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


def openai_finish_reason(reason: FinishReason) -> OpenAIFinishReason:
    """``cancelled`` and ``error`` never reach a client as finish reasons; the rest map one to one."""
    return "length" if reason == "length" else "tool_calls" if reason == "tool_calls" else "stop"


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier request, as OpenAI counts them


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class TopLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobEntry(TopLogprobEntry):
    top_logprobs: list[TopLogprobEntry] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[LogprobEntry] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionResponseChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: OpenAIFinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo

    def to_dict(self) -> dict[str, Any]:
        """``tool_calls`` appears only on messages that made calls, as OpenAI's responses do."""
        data = self.model_dump()
        for choice in data["choices"]:
            if choice["message"]["tool_calls"] is None:
                del choice["message"]["tool_calls"]
        return data


class ToolCallFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletionResponseStreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
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
        data = self.model_dump(exclude={"usage"} if self.usage is None else set(), exclude_none=False)
        for choice in data["choices"]:
            choice["delta"] = _without_none(choice["delta"])
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kit-dev"
    root: str | None = None
    parent: str | None = None  # the base model's id, for a LoRA adapter
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
