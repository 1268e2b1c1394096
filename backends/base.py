"""The contract between the server and every inference engine.

The server knows only this module. A backend turns one ``GenerationRequest`` into a stream of
``TokenEvent`` followed by exactly one ``FinishEvent``; it never sees HTTP, SSE or OpenAI JSON, and it
imports nothing from ``devserver.server``, so it runs wherever only its own engine is installed.

Threading: ``generate`` is blocking and is called from a worker thread that the server owns, never
from the event loop. A backend that can run several requests at once (continuous batching) says so
with ``BackendInfo.max_concurrency``; the server then calls ``generate`` from that many threads at
once. A backend whose own engine thread already drives every request may instead be a
``PushBackend``: the server hands it each request with an ``EventSink`` and the engine thread delivers
the events itself, so no server thread sits between the engine and the event loop relaying every
token (on two cores that relay, one thread wake-up per token, cost a few per cent of decode speed).
Cancellation is cooperative: the server sets ``request.cancel`` when the client leaves and the
backend must stop within one token and then emit its ``FinishEvent`` with reason ``"cancelled"``.

Text: ``TokenEvent.text`` is always whole UTF-8 characters (partial bytes are held back until
complete) and never contains any part of a stop string (text that could still grow into a stop
string is held back; see ``backends.stopping``). Concatenating every ``text`` gives the completion.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding options, already validated by the server (OpenAI names, engine units)."""

    max_tokens: int | None = None  # None: until end of sequence or the context is full
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # GBNF text, for constrained decoding (llama.cpp)
    json_schema: dict[str, Any] | None = None  # for backends that constrain by schema instead of GBNF


@dataclass
class GenerationRequest:
    """One completion to produce. ``prompt`` is already rendered (chat template applied)."""

    request_id: str
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # a LoRA adapter name from BackendInfo.adapters, None for the base
    cancel: threading.Event = field(default_factory=threading.Event)
    add_special_tokens: bool = False  # chat prompts carry their own BOS from the template


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass(frozen=True)
class TokenEvent:
    """New text. ``token_ids`` may hold several ids when held-back text is released at once."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Timings:
    """Seconds measured inside the backend, for metrics. ``None`` when not measured."""

    queue_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings = Timings()
    error: str | None = None  # set when reason == "error": a message safe to show the client
    cached_tokens: int = 0  # prompt tokens not evaluated again: their KV was kept from an earlier request


GenerationEvent = TokenEvent | FinishEvent
EventItem = GenerationEvent | BaseException  # what a sink receives: an event, or why the request failed


@dataclass(frozen=True)
class AdapterInfo:
    name: str  # served as "<model id>/<name>"
    source: str  # the part path or reference it came from
    kind: Literal["gguf-lora", "peft-lora"]


@dataclass(frozen=True)
class BackendInfo:
    """What the server shows about a loaded engine (``/v1/models`` ``kitdev`` key, metrics info)."""

    name: Literal["llama.cpp", "transformers", "fake"]
    device: str  # "cpu", "cuda:0", "metal"
    model_file: str
    context_size: int
    max_concurrency: int = 1
    vocab_size: int | None = None  # token ids run 0..vocab_size-1 (checked in logit_bias); None: unknown
    adapters: tuple[AdapterInfo, ...] = ()
    reasons: tuple[str, ...] = ()  # why this backend and device were chosen, in words
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded model ready to generate. See the module docstring for the threading contract."""

    info: BackendInfo

    @property
    def chat_template(self) -> str | None:
        """The model's own Jinja chat template, or None if it ships none."""

    @property
    def special_tokens(self) -> dict[str, str]:
        """Template variables such as ``bos_token`` and ``eos_token``."""

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (used for context-length checks before queueing)."""

    def generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        """Blocking: yield ``TokenEvent``s then exactly one ``FinishEvent``."""

    def close(self) -> None:
        """Free the engine. Idempotent."""


class EventSink(Protocol):
    """Where a ``PushBackend`` hands one request's output; called from the backend's own thread."""

    def started(self) -> None:
        """The request left the backend's queue: its prompt is being evaluated."""

    def deliver(self, items: list[EventItem]) -> None:
        """Events in order; the last item delivered is the ``FinishEvent`` or the exception that ended
        the request. The list is the sink's to keep."""


@runtime_checkable
class PushBackend(Protocol):
    """A backend that queues requests on its own engine thread and pushes their events to a sink."""

    def submit(self, request: GenerationRequest, sink: EventSink) -> None:
        """Queue ``request`` and return; raise (as ``generate`` would) for a request it cannot take.
        Blocking only as long as preparing the request takes (tokenizing), never for generation."""


def collect(events: Sequence[GenerationEvent] | Iterator[GenerationEvent]) -> tuple[str, FinishEvent]:
    """Join a finished event stream into its text and finish event (non-streaming responses, tests)."""
    parts: list[str] = []
    finish: FinishEvent | None = None
    for event in events:
        if isinstance(event, TokenEvent):
            parts.append(event.text)
        else:
            finish = event
    if finish is None:
        raise RuntimeError("backend ended without a FinishEvent")
    return "".join(parts), finish
