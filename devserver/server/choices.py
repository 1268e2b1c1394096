"""The ``n`` generations of one request: their event streams merged, and each choice's text, calls,
logprobs and finish reason, shared by chat and text completions, streamed or not.

Each choice is its own ``GenerationRequest`` on the worker; with a batching backend they run at
once, otherwise one after another. ``merge`` interleaves their events in arrival order, tagged with
the choice index, so a stream shows every choice as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from backends.base import FinishEvent, GenerationEvent, TokenEvent
from devserver.server.protocol import LogprobEntry, OpenAIFinishReason, TopLogprobEntry, openai_finish_reason
from devserver.server.tools import CallDelta, Content, Extractor, FunctionCall, Item, ToolCall

Events = AsyncIterator[GenerationEvent]


@dataclass
class Step:
    """What one backend event adds to one choice."""

    items: list[Item] = field(default_factory=list)
    logprobs: list[LogprobEntry] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(i.text for i in self.items if isinstance(i, Content))

    @property
    def calls(self) -> list[CallDelta]:
        return [i for i in self.items if isinstance(i, CallDelta)]


class Choice:
    """One choice's state: its parser, and everything it produced so far (for non-streamed replies)."""

    def __init__(self, index: int, extractor: Extractor, *, logprobs: bool) -> None:
        self.index = index
        self._extractor = extractor
        self._want_logprobs = logprobs
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self.logprobs: list[LogprobEntry] = []
        self.finish: FinishEvent | None = None

    def on_token(self, event: TokenEvent) -> Step:
        step = Step(list(self._extractor.feed(event.text)), self._logprobs(event))
        self._keep(step)
        return step

    def on_finish(self, event: FinishEvent) -> Step:
        self.finish = event
        step = Step(list(self._extractor.finish()))
        self._keep(step)
        return step

    @property
    def finish_reason(self) -> OpenAIFinishReason:
        assert self.finish is not None
        if self._extractor.calls and self.finish.reason == "stop":
            return "tool_calls"
        return openai_finish_reason(self.finish.reason)

    def _keep(self, step: Step) -> None:
        self.text.append(step.text)
        self.logprobs.extend(step.logprobs)
        for delta in step.calls:
            if delta.id is not None:
                call = FunctionCall(name=delta.name or "", arguments=delta.arguments)
                self.calls.append(ToolCall(id=delta.id, function=call))
            elif self.calls:
                self.calls[delta.index].function.arguments += delta.arguments

    def _logprobs(self, event: TokenEvent) -> list[LogprobEntry]:
        if not self._want_logprobs or event.logprob is None:
            return []
        top = [TopLogprobEntry(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in event.top_logprobs]
        raw = list(event.text.encode())
        return [LogprobEntry(token=event.text, logprob=event.logprob, bytes=raw, top_logprobs=top)]


async def merge(streams: list[Events]) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Every stream's events tagged with its index, in arrival order, until all have finished.

    A stream that raises ends the merge with its exception; leaving early (the client went) stops
    the pumps, and the caller cancels the generations themselves.
    """
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: Events) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield index, item
            if isinstance(item, FinishEvent):
                remaining -= 1
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def on_event(choices: list[Choice], index: int, event: GenerationEvent) -> Step:
    choice = choices[index]
    return choice.on_token(event) if isinstance(event, TokenEvent) else choice.on_finish(event)


def choice_list(n: int, make_extractor: Callable[[], Extractor], *, logprobs: bool) -> list[Choice]:
    return [Choice(i, make_extractor(), logprobs=logprobs) for i in range(n)]
