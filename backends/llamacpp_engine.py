"""Continuous batching on one llama.cpp context: slots, a scheduler thread, one decode per step.

The context holds ``parallel`` sequences, each in its own KV stream (``kv_unified=False``): with a
unified cache llama.cpp's attention over a shared cell pool makes a sequence's greedy output depend on
what else is in the batch (measured in ``shared/notes/batching.md``), and a dev server must give the
same answer to the same request whatever else is running.

Each scheduler step, per adapter group (adapters apply to the whole context, so groups take turns
within the step):
  * every sequence that still has prompt left evaluates its next chunk (up to ``n_batch`` tokens) in
    its own ``llama_decode``. Prompts are kept out of the shared decode batch on purpose: llama.cpp
    splits a multi-sequence batch into equal-length ubatches, so a prompt mixed with other sequences'
    tokens would be cut differently from the same prompt alone, and the numerics (hence the greedy
    text) would depend on the neighbours. Alone it is chunked exactly as ``Llama.eval`` chunks it;
  * all sequences with a sampled token waiting go into one ``llama_decode`` (one token each, in slot
    order so that consecutive slots share a ubatch), and each samples its next token with its own
    chain from its own batch position.
A finished or cancelled sequence's generated tokens are removed from the KV cache
(``llama_memory_seq_rm``) at once and its slot is refilled from the waiting list at the start of the
next step.

Prompt-prefix reuse: a freed slot keeps the KV of its prompt, and a new request goes to the free slot
whose kept prompt shares the longest prefix with its own (same adapter), evaluating only the rest. This
keeps answers bit-identical to evaluating the whole prompt, because on the CPU a token's KV and logits
do not depend on the chunk it was evaluated in as long as that chunk holds two tokens or more
(measured on SmolLM2: suffixes of 2–48 tokens after prefixes computed in other prompts, all equal; a
1-token chunk goes through other kernels and differs by up to 0.86 in a logit). So only KV computed as
a prompt chunk is kept (never a generated token's, computed one at a time), chunks stay aligned to
multiples of ``N_BATCH`` as a whole-prompt evaluation cuts them, and a reuse point that would leave a
1-token chunk the whole evaluation would not have is moved back one token (``reuse_point``). A prompt
about to be cut from its slot is first copied to host memory (``PromptStore``) and copied back when a
later prompt shares more with it than with any slot. A prompt evaluated to its end also keeps the
logits after its last token (in the slot and in host memory), so the same prompt again evaluates
nothing: its first token is sampled from those logits and it joins the next batched decode at once,
instead of costing every running stream one decode step of its own for a 2-token chunk.

Every llama.cpp call on the context happens on the scheduler thread; other threads hand it work
(``submit``) or a function to run between steps (``call``: adapter load/unload, close).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from backends.llamacpp_adapters import AdapterSet
from backends.llamacpp_model import GgufModel
from backends.llamacpp_prompt_store import PromptStore, common_prefix_length
from backends.llamacpp_sampling import SamplerChain, batch_logits, token_logprobs, top_logprob
from backends.llamacpp_stream import RequestStream
from devserver.errors import BackendError

N_BATCH = 512  # llama-cpp-python's default n_batch: prompts are chunked the same way, for equal numerics
T = TypeVar("T")


@dataclass(eq=False)
class Sequence:
    """A request while it holds a slot (or waits for one)."""

    stream: RequestStream
    prompt: list[int]
    sampler: SamplerChain
    adapter: str | None
    slot: int = -1
    n_past: int = 0  # tokens already in this slot's KV stream
    next_token: int | None = None  # sampled, not yet decoded
    batch_index: int = 0  # where this sequence's logits are in the last decode
    kept_logits: np.ndarray | None = None  # its whole prompt was cached: the first token comes from these
    done: bool = field(default=False)


@dataclass
class SlotCache:
    """The prompt whose KV a free slot still holds, the adapter that KV was computed under, and the
    logits after the prompt's last token when they were computed with it (else ``None``)."""

    adapter: str | None = None
    tokens: list[int] = field(default_factory=list)
    logits: np.ndarray | None = None

    def common_prefix(self, sequence: Sequence) -> int:
        return common_prefix_length(self.tokens, sequence.prompt) if sequence.adapter == self.adapter else 0

    def holds_whole(self, sequence: Sequence) -> bool:
        """Whether this is exactly the sequence's prompt, logits included: nothing left to evaluate."""
        return self.logits is not None and self.adapter == sequence.adapter and self.tokens == sequence.prompt

    def hold(self, adapter: str | None, tokens: list[int], logits: np.ndarray | None = None) -> None:
        self.adapter, self.tokens, self.logits = adapter, tokens, logits

    def truncate(self, length: int) -> None:
        if length < len(self.tokens):
            del self.tokens[length:]
            self.logits = None  # they were the last token's


def reuse_point(common: int, prompt_length: int) -> int:
    """How many prompt tokens to take from the cache when ``common`` of them are there.

    At least one token is evaluated (its logits give the first sample; ``_place`` skips even that when
    the slot kept the logits after the whole prompt), and every chunk evaluated must
    be one a whole-prompt evaluation would also make 1 token long, or else hold two tokens or more:
    the first chunk runs up to the next multiple of ``N_BATCH``, so a start just before one is moved
    back a token."""
    start = min(common, prompt_length - 1)
    if start > 0 and start % N_BATCH != 0 and min(prompt_length, (start // N_BATCH + 1) * N_BATCH) - start == 1:
        start -= 1
    return start


def reusable_length(evaluated: int) -> int:
    """Of ``evaluated`` prompt tokens, those whose KV may be reused: not a lone final chunk's token."""
    return evaluated - 1 if evaluated % N_BATCH == 1 else evaluated


@dataclass(frozen=True)
class ContextSettings:
    n_ctx_seq: int  # tokens one request may use (prompt plus completion)
    parallel: int
    threads: int
    threads_batch: int
    prompt_cache_bytes: int = 0  # host memory for prompts' KV after their slot moved on (0: none)
    flash_attn: Literal["auto", "on", "off"] = "auto"


class Scheduler:
    """Owns the llama.cpp context and the thread that decodes every running sequence."""

    def __init__(self, model: GgufModel, adapters: AdapterSet, settings: ContextSettings) -> None:
        lib = model.lib
        self._lib = lib
        self._model = model
        self._adapters = adapters
        params = lib.llama_context_default_params()
        params.n_ctx = settings.n_ctx_seq * settings.parallel
        params.n_seq_max = settings.parallel
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_threads = settings.threads
        params.n_threads_batch = settings.threads_batch
        params.kv_unified = False
        params.flash_attn_type = {
            "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[settings.flash_attn]
        params.no_perf = True
        ctx = lib.llama_init_from_model(model.model, params)
        if not ctx:
            raise BackendError(
                f"llama.cpp could not create a context of {settings.parallel} × {settings.n_ctx_seq} tokens",
                hint="lower --ctx-size or --parallel",
            )
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))
        self.parallel = settings.parallel
        capacity = max(N_BATCH, settings.parallel)
        self._batch = lib.llama_batch_init(capacity, 0, 1)
        self._capacity = capacity
        self._free_slots = list(range(settings.parallel))
        self._slot_cache = [SlotCache() for _ in range(settings.parallel)]
        self._store = PromptStore(lib, ctx, settings.prompt_cache_bytes) if settings.prompt_cache_bytes else None
        self._running: list[Sequence] = []
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._wake = threading.Condition()
        self._current_adapter: object = object()  # nothing applied yet
        self._turn = 0  # which adapter group goes first this step, rotated for fairness
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llama.cpp-scheduler", daemon=True)
        self._thread.start()

    # ---- called from other threads ---------------------------------------------------------------

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._closing:
                raise BackendError("the model has been unloaded")
            self._waiting.append(sequence)
            self._wake.notify()

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the scheduler thread between two steps and return its result."""
        future: Future[T] = Future()
        with self._wake:
            if self._closing:
                raise BackendError("the model has been unloaded")
            self._calls.append((function, future))
            self._wake.notify()
        return future.result()

    def close(self) -> None:
        """Cancel everything, stop the thread, free the context. Idempotent."""
        with self._wake:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)

    # ---- the scheduler thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closing or self._calls or self._running or self._waiting):
                    self._wake.wait()
                if self._closing:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for function, future in calls:
                try:
                    future.set_result(function())
                except BaseException as exc:  # the caller gets it from future.result()
                    future.set_exception(exc)
            self._admit()
            self._drop_cancelled()
            if self._running:
                self._step()
        for sequence in [*self._running, *self._waiting]:
            sequence.stream.finish("cancelled")
            self._release(sequence)
        with self._wake:
            calls = list(self._calls)
        for _, future in calls:
            future.set_exception(BackendError("the model has been unloaded"))

    def _admit(self) -> None:
        with self._wake:
            while self._free_slots and self._waiting:
                sequence = self._waiting.popleft()
                if sequence.adapter is not None and not self._adapters.available(sequence.adapter):
                    sequence.stream.fail(BackendError(f"adapter {sequence.adapter!r} is not loaded"))
                    sequence.stream.flush()
                    sequence.sampler.free()
                    continue
                self._place(sequence)
                sequence.stream.start()
                self._running.append(sequence)

    def _place(self, sequence: Sequence) -> None:
        """Put the sequence in the free slot that already holds most of its prompt (the lowest on a tie,
        so running slots stay consecutive), or copy in a longer prefix kept in host memory, and drop
        that slot's KV past the part reused (keeping the prompt it held in host memory first)."""
        common, slot = max((self._slot_cache[s].common_prefix(sequence), -s) for s in self._free_slots)
        slot = -slot
        self._free_slots.remove(slot)
        cache = self._slot_cache[slot]
        stored = self._store.best(sequence.adapter, sequence.prompt, common) if self._store is not None else None
        if self._store is not None and stored is not None:
            self._keep(slot)  # the slot's own prompt, before the stored one replaces it
            common, tokens, logits = stored
            if self._store.restore(slot, sequence.adapter, tokens):
                cache.hold(sequence.adapter, tokens, logits)
            else:
                common = 0
                cache.hold(None, [])
        if cache.holds_whole(sequence):
            start = len(sequence.prompt)  # nothing to evaluate: the first sample comes from the kept logits
            sequence.kept_logits = cache.logits
        else:
            start = reuse_point(common, len(sequence.prompt))
            if start < len(cache.tokens):
                self._keep(slot)
            cache.hold(sequence.adapter, sequence.prompt[:start])
        self._lib.llama_memory_seq_rm(self._memory, slot, start, -1)
        sequence.slot = slot
        sequence.n_past = start
        sequence.stream.cached_tokens = start

    def _keep(self, slot: int) -> None:
        cache = self._slot_cache[slot]
        if self._store is not None and cache.tokens:
            self._store.save(slot, cache.adapter, cache.tokens, cache.logits)

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running if s.stream.cancelled]:
            sequence.stream.finish("cancelled")
            self._release(sequence)
        with self._wake:
            cancelled = [s for s in self._waiting if s.stream.cancelled]
            for sequence in cancelled:
                self._waiting.remove(sequence)
        for sequence in cancelled:
            sequence.stream.finish("cancelled")
            sequence.stream.flush()
            sequence.sampler.free()

    def _step(self) -> None:
        groups: dict[str | None, list[Sequence]] = {}
        for sequence in sorted(self._running, key=lambda s: s.slot):
            groups.setdefault(sequence.adapter, []).append(sequence)
        order = list(groups)
        self._turn = (self._turn + 1) % len(order)
        for adapter in order[self._turn :] + order[: self._turn]:
            self._use_adapter(adapter)
            members = groups[adapter]
            for sequence in members:
                if sequence.n_past < len(sequence.prompt):
                    self._prefill_chunk(sequence)
                elif sequence.kept_logits is not None:
                    logits, sequence.kept_logits = sequence.kept_logits, None
                    self._sample(sequence, logits)
            self._decode([s for s in members if not s.done and s.next_token is not None])

    def _use_adapter(self, adapter: str | None) -> None:
        if adapter != self._current_adapter:
            self._adapters.apply(self._ctx, adapter)
            self._current_adapter = adapter

    def _prefill_chunk(self, sequence: Sequence) -> None:
        start = sequence.n_past
        chunk = sequence.prompt[start : (start // N_BATCH + 1) * N_BATCH]  # aligned as a whole-prompt pass
        last = start + len(chunk) == len(sequence.prompt)
        batch = self._batch
        token, pos, n_seq_id, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        for i, value in enumerate(chunk):
            token[i] = value
            pos[i] = start + i
            n_seq_id[i] = 1
            seq_id[i][0] = sequence.slot
            logits[i] = 0
        if last:
            logits[len(chunk) - 1] = 1
        batch.n_tokens = len(chunk)
        if not self._llama_decode([sequence]):
            return
        sequence.n_past += len(chunk)
        cache = self._slot_cache[sequence.slot]
        cache.tokens.extend(chunk)
        if last:
            sequence.batch_index = len(chunk) - 1
            cache.logits = batch_logits(self._lib, self._ctx, sequence.batch_index, self._model.n_vocab).copy()
            self._sample(sequence)

    def _decode(self, sequences: list[Sequence]) -> None:
        if not sequences:
            return
        batch = self._batch
        token, pos, n_seq_id, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        for i, sequence in enumerate(sequences):
            token[i] = sequence.next_token
            pos[i] = sequence.n_past
            n_seq_id[i] = 1
            seq_id[i][0] = sequence.slot
            logits[i] = 1
            sequence.batch_index = i
        batch.n_tokens = len(sequences)
        if not self._llama_decode(sequences):
            return
        for sequence in sequences:
            sequence.n_past += 1
            sequence.next_token = None
            self._sample(sequence)

    def _llama_decode(self, sequences: list[Sequence]) -> bool:
        for running in self._running:  # what the last decode produced, read while this one runs
            running.stream.flush()
        status = self._lib.llama_decode(self._ctx, self._batch)
        if status == 0:
            return True
        error = BackendError(f"llama.cpp failed to decode (status {status})")
        for sequence in sequences:
            sequence.stream.fail(error)
            self._release(sequence, keep_prompt=False)
        return False

    def _sample(self, sequence: Sequence, kept: np.ndarray | None = None) -> None:
        """Sample the sequence's next token from its logits in the last decode (or the ``kept`` logits
        of its cached prompt) and hand it on."""
        stream, model = sequence.stream, self._model
        index = sequence.batch_index
        token = sequence.sampler.sample(self._ctx, index) if kept is None else sequence.sampler.sample_logits(kept)
        eog = model.is_eog(token)
        if stream.wants_logprobs and not eog:
            logits = batch_logits(self._lib, self._ctx, index, model.n_vocab) if kept is None else kept
            chosen, best = token_logprobs(logits, token, stream.top_n)
            top = tuple(top_logprob(model.piece(t), lp) for t, lp in best)
            finished = stream.on_token(token, model.piece(token), eog, chosen, top)
        else:
            finished = stream.on_token(token, b"" if eog else model.piece(token), eog)
        if finished:
            self._release(sequence)
        else:
            sequence.next_token = token

    def _release(self, sequence: Sequence, *, keep_prompt: bool = True) -> None:
        """Free the sequence's sampler, slot and generated tokens' KV (its prompt's KV too unless
        ``keep_prompt``), and its adapter if that is being unloaded."""
        sequence.stream.flush()
        if sequence.done:
            return
        sequence.done = True
        sequence.sampler.free()
        if sequence.slot >= 0:
            cache = self._slot_cache[sequence.slot]
            kept = reusable_length(len(cache.tokens)) if keep_prompt else 0
            cache.truncate(kept)
            self._lib.llama_memory_seq_rm(self._memory, sequence.slot, kept, -1)
            self._free_slots.append(sequence.slot)
            self._free_slots.sort()  # lowest first: running slots stay consecutive, so ubatches stay whole
        if sequence in self._running:
            self._running.remove(sequence)
        adapter = sequence.adapter
        if adapter is not None and self._adapters.pending_release(adapter) and not self.adapter_in_use(adapter):
            self.release_adapter(adapter)

    def adapter_in_use(self, name: str) -> bool:
        return any(s.adapter == name for s in self._running)

    def release_adapter(self, name: str) -> None:
        """Free an unloading adapter; the context must not point at it any more (scheduler thread)."""
        if self._current_adapter == name:
            self._use_adapter(None)
        for cache in self._slot_cache:  # a new adapter of the same name must not find this one's KV
            if cache.adapter == name:
                cache.hold(None, [])
        if self._store is not None:
            self._store.forget(name)
        self._adapters.release(name)
