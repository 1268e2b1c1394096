"""SSE framing of chat and text completions, in vLLM's outline and nothing else.

Every chunk of a response shares one ``id`` and ``created``. Per choice: (chat only) a first chunk
carrying ``delta.role`` (and only it does), then a chunk per event that adds text, tool-call deltas
or logprobs, then a chunk with an empty delta and the ``finish_reason`` (``null`` on every chunk
before it). Choices interleave as their events arrive. With ``stream_options.include_usage`` a
usage-only chunk with ``choices: []`` follows the last finish. A failure after the stream started
becomes one ``data: {"error": …}`` event (the HTTP status is already sent) and the stream ends; a
generation cancelled under us (shutdown) is such a failure too, so no stream ever ends without
either a ``finish_reason`` or an error. ``data: [DONE]`` is always last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from backends.base import FinishEvent, GenerationEvent
from devserver.errors import BackendError, KitDevError
from devserver.server.choices import Choice, Step, on_event
from devserver.server.errors import error_payload
from devserver.server.protocol import (
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChoiceLogprobs,
    DeltaMessage,
    ToolCallDelta,
    ToolCallFunctionDelta,
    UsageInfo,
)

log = logging.getLogger(__name__)

DONE = "[DONE]"


class Framer(Protocol):
    """Turns one endpoint's choice steps into its chunk JSON."""

    def opening(self, choice: Choice) -> str | None: ...

    def step(self, choice: Choice, step: Step) -> str | None: ...

    def finish(self, choice: Choice) -> str: ...

    def usage(self, usage: UsageInfo) -> str | None: ...


async def stream_choices(
    events: AsyncIterator[tuple[int, GenerationEvent]],
    choices: list[Choice],
    framer: Framer,
    usage: Callable[[], UsageInfo],
) -> AsyncIterator[str]:
    """Yield the ``data:`` payloads of one streamed completion (sse-starlette frames them)."""
    for choice in choices:
        if (opening := framer.opening(choice)) is not None:
            yield opening
    try:
        async for index, event in events:
            step = on_event(choices, index, event)
            if (data := framer.step(choices[index], step)) is not None:
                yield data
            if isinstance(event, FinishEvent):
                if event.reason in ("error", "cancelled"):
                    yield json.dumps(error_payload(BackendError(_failure(event))))
                    break
                yield framer.finish(choices[index])
        else:
            if (data := framer.usage(usage())) is not None:
                yield data
    except KitDevError as exc:
        yield json.dumps(error_payload(exc))
    except Exception:
        log.exception("a streamed completion failed")
        yield json.dumps(error_payload(KitDevError("internal server error (see the server log)")))
    yield DONE


def _failure(event: FinishEvent) -> str:
    if event.reason == "cancelled":
        return "the generation was cancelled (the server is shutting down)"
    return event.error or "generation failed"


class ChatFramer:
    """``chat.completion.chunk`` objects.

    Most chunks of a stream carry only text, one per token, so that case skips the models: its JSON is
    the model's own output for an empty text, cut around the text and index, and filled in per chunk
    (the same bytes as the model path; ``tests/server/test_streaming_framer.py`` compares them).
    """

    _TEXT_SLOT = '"index":0,"delta":{"content":""}'

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool) -> None:
        self._id, self._created, self._model = completion_id, created, model
        self._include_usage = include_usage
        empty = ChatCompletionResponseStreamChoice(index=0, delta=DeltaMessage(content=""))
        self._head, self._tail = self._chunk([empty]).split(self._TEXT_SLOT)

    def _chunk(self, choices: list[ChatCompletionResponseStreamChoice], usage: UsageInfo | None = None) -> str:
        return ChatCompletionStreamResponse(
            id=self._id, created=self._created, model=self._model, choices=choices, usage=usage
        ).to_json()

    def opening(self, choice: Choice) -> str:
        delta = DeltaMessage(role="assistant", content="")
        return self._chunk([ChatCompletionResponseStreamChoice(index=choice.index, delta=delta)])

    def step(self, choice: Choice, step: Step) -> str | None:
        calls = [
            ToolCallDelta(
                index=d.index,
                id=d.id,
                type="function" if d.id is not None else None,
                function=ToolCallFunctionDelta(name=d.name, arguments=d.arguments),
            )
            for d in step.calls
        ]
        text = step.text
        if not calls and not step.logprobs:
            if not text:
                return None
            content = json.dumps(text, ensure_ascii=False)
            return f'{self._head}"index":{choice.index},"delta":{{"content":{content}}}{self._tail}'
        delta = DeltaMessage(content=text or None, tool_calls=calls or None)
        logprobs = ChoiceLogprobs(content=step.logprobs) if step.logprobs else None
        return self._chunk([ChatCompletionResponseStreamChoice(index=choice.index, delta=delta, logprobs=logprobs)])

    def finish(self, choice: Choice) -> str:
        stream_choice = ChatCompletionResponseStreamChoice(
            index=choice.index, delta=DeltaMessage(), finish_reason=choice.finish_reason
        )
        return self._chunk([stream_choice])

    def usage(self, usage: UsageInfo) -> str | None:
        return self._chunk([], usage) if self._include_usage else None
