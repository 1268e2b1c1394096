"""One request's output side: sampled tokens in, ``TokenEvent``s and one ``FinishEvent`` out.

The scheduler thread calls ``RequestStream`` for every token it samples for the request; the events go
to the request's ``EventSink`` (the server's hand-off to its event loop, or ``generate``'s queue). They
are held until the scheduler calls ``flush``, which it does just before its next ``llama_decode``:
woken then, the consumers run while decoding has released the GIL, instead of taking the GIL from the
scheduler between two decodes (measured on 2 cores, 4 streams: the scheduler's time outside
``llama_decode`` fell from 1.3 to 0.5 ms a step). Keeping the text work here (incremental UTF-8
decoding, stop strings, log-probabilities) means the consumer only waits, and each token costs one
dictionary lookup for its bytes and one list append.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field

from backends.base import (
    EventItem,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    Timings,
    TokenEvent,
    TopLogprob,
)
from backends.stopping import StopMatcher


@dataclass
class RequestStream:
    """Text assembly and bookkeeping for one request; lives on the scheduler thread."""

    request: GenerationRequest
    prompt_tokens: int
    max_tokens: int
    sink: EventSink
    submitted_at: float = field(default_factory=time.perf_counter)
    produced: int = 0
    finished: bool = False
    started_at: float | None = None
    first_token_at: float | None = None
    cached_tokens: int = 0  # prompt tokens whose KV an earlier request left in the slot

    def __post_init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._matcher = StopMatcher(self.request.params.stop)
        self._pending: list[int] = []
        self._held: list[EventItem] = []
        self._per_token = self.request.params.logprobs  # one event per token, so each has its logprob

    @property
    def wants_logprobs(self) -> bool:
        return self._per_token

    @property
    def top_n(self) -> int:
        return self.request.params.top_logprobs

    @property
    def cancelled(self) -> bool:
        return self.request.cancel.is_set()

    def on_token(
        self, token: int, piece: bytes, eog: bool, logprob: float | None = None, top: tuple[TopLogprob, ...] = ()
    ) -> bool:
        """Take one sampled token; return True when the request is finished (and its event sent)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if eog:
            self.finish("stop")
            return True
        self.produced += 1
        self._pending.append(token)
        text = self._matcher.feed(self._decoder.decode(piece))
        if text or self._per_token:
            self._hold(TokenEvent(text=text, token_ids=tuple(self._pending), logprob=logprob, top_logprobs=top))
            self._pending = []
        if self._matcher.stopped:
            self.finish("stop")
            return True
        if self.produced >= self.max_tokens:
            self.finish("length")
            return True
        return False

    def start(self) -> None:
        """The scheduler gave the request a slot (scheduler thread)."""
        self.started_at = time.perf_counter()
        self.sink.started()

    def flush(self) -> None:
        """Hand the held events to the consumer (scheduler thread)."""
        if self._held:
            held, self._held = self._held, []
            self.sink.deliver(held)

    def _hold(self, item: EventItem) -> None:
        self._held.append(item)

    def finish(self, reason: FinishReason) -> None:
        """Send the held-back tail (unless stopped or cancelled) and the ``FinishEvent``."""
        if self.finished:
            return
        self.finished = True
        if reason != "cancelled" and not self._matcher.stopped:
            # Bytes of a character cut off by max_tokens are dropped, as llama-cpp-python does.
            tail = self._matcher.flush()
            if tail:
                self._hold(TokenEvent(text=tail, token_ids=tuple(self._pending)))
        end = time.perf_counter()
        started = self.started_at or end
        first = self.first_token_at or end
        timings = Timings(queue_s=started - self.submitted_at, prefill_s=first - started, decode_s=end - first)
        prompt_tokens = self.prompt_tokens if self.started_at is not None else 0  # never given a slot: none read
        self._hold(FinishEvent(reason, prompt_tokens, self.produced, timings, cached_tokens=self.cached_tokens))

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._hold(error)
