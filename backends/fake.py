"""A backend that plays a script, for the server's unit tests (vLLM's mock engine, httpx's MockTransport).

It speaks the ``backends.base`` contract exactly (stop strings through ``StopMatcher``, ``max_tokens``,
cancellation within one piece, one ``FinishEvent``) so server tests exercise the real event flow
without a model. Knobs let tests hold a request running (``gate``), slow it (``delay_s``) or make it
fail part-way (``fail_after`` + ``error``). ``FakePushBackend`` plays the same script as a
``PushBackend``, on an engine thread of its own, as llama.cpp's scheduler does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from backends.base import (
    BackendInfo,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Timings,
    TokenEvent,
    TopLogprob,
)
from backends.stopping import StopMatcher
from devserver.errors import BackendError

FAKE_VOCAB_SIZE = 1000  # what logit_bias may name; the scripted pieces have no ids of their own

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class FakeBackend:
    """Emits ``pieces`` one token each, then finishes ``stop`` (or ``length`` at ``max_tokens``)."""

    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", ",", " world", "!"),
        *,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
        fail_after: int | None = None,
        error: Exception | None = None,
        max_concurrency: int = 1,
        context_size: int = 4096,
        chat_template: str | None = CHATML_TEMPLATE,
    ) -> None:
        self.pieces = tuple(pieces)
        self.delay_s = delay_s
        self.gate = gate
        self.fail_after = fail_after
        self.error = error or RuntimeError("scripted failure")
        self._chat_template = chat_template
        self.info = BackendInfo(
            name="fake",
            device="cpu",
            model_file="fake.gguf",
            context_size=context_size,
            max_concurrency=max_concurrency,
            vocab_size=FAKE_VOCAB_SIZE,
            reasons=("FakeBackend: scripted events for tests",),
        )
        self.requests: list[GenerationRequest] = []
        self.started = threading.Event()  # set when a generate call begins
        self.closed = False

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": "<s>", "eos_token": "<|im_end|>"}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        self.requests.append(request)
        self.started.set()
        prompt_tokens = self.count_tokens(request.prompt)
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if request.cancel.is_set():
                    yield FinishEvent("cancelled", prompt_tokens, 0)
                    return
        matcher = StopMatcher(request.params.stop)
        limit = request.params.max_tokens
        produced = 0
        reason: FinishReason = "stop"
        start = time.perf_counter()
        for index, piece in enumerate(self.pieces):
            if request.cancel.is_set():
                reason = "cancelled"
                break
            if self.fail_after is not None and index == self.fail_after:
                raise self.error
            if self.delay_s:
                time.sleep(self.delay_s)
            produced += 1
            text = matcher.feed(piece)
            if text:
                yield self._event(request, text, index)
            if matcher.stopped:
                break
            if limit is not None and produced >= limit:
                reason = "length"
                break
        tail = matcher.flush()
        if tail:
            yield TokenEvent(text=tail)
        elapsed = time.perf_counter() - start
        yield FinishEvent(
            reason,
            prompt_tokens,
            produced,
            timings=Timings(prefill_s=0.0, decode_s=elapsed),
        )

    @staticmethod
    def _event(request: GenerationRequest, text: str, index: int) -> TokenEvent:
        """With ``logprobs``: each piece scores ``-0.5 * (index + 1)``, its alternatives lower still."""
        if not request.params.logprobs:
            return TokenEvent(text=text, token_ids=(index,))
        logprob = -0.5 * (index + 1)
        top = tuple(
            TopLogprob(token=f"{text}~{k}" if k else text, logprob=logprob - k, bytes=list(text.encode()))
            for k in range(request.params.top_logprobs)
        )
        return TokenEvent(text=text, token_ids=(index,), logprob=logprob, top_logprobs=top)

    def close(self) -> None:
        self.closed = True


class FakePushBackend(FakeBackend):
    """The script pushed to the server's sink from one engine thread, one request after another; a
    request cancelled while it waited is dropped unstarted (it never reaches ``requests``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: queue.SimpleQueue[tuple[GenerationRequest, EventSink] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="fake-engine", daemon=True).start()

    def submit(self, request: GenerationRequest, sink: EventSink) -> None:
        if self.closed:
            raise BackendError("the model has been unloaded")
        self._inbox.put((request, sink))

    def _run(self) -> None:
        while (item := self._inbox.get()) is not None:
            request, sink = item
            if request.cancel.is_set():
                sink.deliver([FinishEvent("cancelled", 0, 0)])
                continue
            sink.started()
            try:
                for event in self.generate(request):
                    sink.deliver([event])
            except Exception as exc:  # the request's failure, as the real engine reports one
                sink.deliver([exc])

    def close(self) -> None:
        if not self.closed:
            self._inbox.put(None)
        super().close()
