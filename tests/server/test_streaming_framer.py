"""The chat framer's fast path for text-only chunks gives the model path's bytes exactly."""

from __future__ import annotations

import json

import pytest

from devserver.server.choices import Choice, Step
from devserver.server.protocol import ChatCompletionResponseStreamChoice, ChatCompletionStreamResponse, DeltaMessage
from devserver.server.streaming import ChatFramer
from devserver.server.tools import Content, Extractor

TEXTS = ["Hello", " world", 'say "hi"\\', "line\nbreak\ttab\r", "café 日本語 🙂", "\x00\x1f\x7f", "</script>", "null"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 3])
def test_text_chunk_equals_the_model_dump(text: str, index: int) -> None:
    framer = ChatFramer('chatcmpl-1"x', 1700000000, "org/model:1 ü", include_usage=False)
    choice = Choice(index, Extractor(), logprobs=False)
    fast = framer.step(choice, Step([Content(text)]))
    delta = DeltaMessage(content=text)
    expected = ChatCompletionStreamResponse(
        id="chatcmpl-1\"x", created=1700000000, model="org/model:1 ü",
        choices=[ChatCompletionResponseStreamChoice(index=index, delta=delta)],
    ).to_json()  # fmt: skip
    assert fast == expected
    assert json.loads(fast)["choices"] == [
        {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]
    assert "\n" not in fast  # one SSE data line


def test_an_empty_step_sends_nothing() -> None:
    framer = ChatFramer("id", 1, "m", include_usage=False)
    assert framer.step(Choice(0, Extractor(), logprobs=False), Step([])) is None
