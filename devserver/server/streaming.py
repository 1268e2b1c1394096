"""SSE framing of a chat completion, in vLLM's outline and nothing else.

Every chunk shares one ``id`` and ``created``. The first chunk carries ``delta.role`` (and only it
does), then one chunk per text event, then a chunk with an empty delta and the ``finish_reason``
(``null`` on every chunk before it). With ``stream_options.include_usage`` a usage-only chunk with
``choices: []`` follows. A failure after the stream started becomes one ``data: {"error": …}`` event
(the HTTP status is already sent). ``data: [DONE]`` is always last, even after an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from backends.base import FinishEvent, GenerationEvent, TokenEvent
from devserver.errors import BackendError, KitDevError
from devserver.server.errors import error_payload
from devserver.server.protocol import (
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
    openai_finish_reason,
)

log = logging.getLogger(__name__)

DONE = "[DONE]"


async def chat_completion_stream(
    events: AsyncIterator[GenerationEvent],
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Yield the ``data:`` payloads of one streamed chat completion (sse-starlette frames them)."""

    def chunk(delta: DeltaMessage, finish: FinishEvent | None = None) -> str:
        reason = openai_finish_reason(finish.reason) if finish is not None else None
        choice = ChatCompletionResponseStreamChoice(delta=delta, finish_reason=reason)
        return ChatCompletionStreamResponse(id=completion_id, created=created, model=model, choices=[choice]).to_json()

    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        finish: FinishEvent | None = None
        async for event in events:
            if isinstance(event, TokenEvent):
                if event.text:
                    yield chunk(DeltaMessage(content=event.text))
            else:
                finish = event
        if finish is None or finish.reason == "error":
            detail = finish.error if finish is not None and finish.error else "generation failed"
            yield json.dumps(error_payload(BackendError(detail)))
        elif finish.reason != "cancelled":
            yield chunk(DeltaMessage(), finish)
            if include_usage:
                usage = UsageInfo.of(finish.prompt_tokens, finish.completion_tokens)
                yield ChatCompletionStreamResponse(
                    id=completion_id, created=created, model=model, choices=[], usage=usage
                ).to_json()
    except KitDevError as exc:
        yield json.dumps(error_payload(exc))
    except Exception:
        log.exception("a streamed chat completion failed")
        yield json.dumps(error_payload(KitDevError("internal server error (see the server log)")))
    yield DONE
