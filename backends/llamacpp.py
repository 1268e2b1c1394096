"""GGUF models through llama-cpp-python, with continuous batching over ``--parallel`` slots.

``load`` reads the model with the low-level API, loads the Kitfile's GGUF LoRA adapters, and starts a
``Scheduler`` (``backends.llamacpp_engine``) that decodes every running request in one step. Each
``submit`` tokenizes, builds the request's sampler chain and hands the request to the scheduler,
whose thread delivers its events straight to the server's sink (a ``PushBackend``: no server thread
per request); ``generate`` is ``submit`` with a queue to wait on.

Greedy output equals a fresh ``Llama(flash_attn=...).create_chat_completion(temperature=0)`` with the
same attention kernels for the same messages, alone or batched with others: same sampler order, same
prompt chunking, one KV stream per sequence. Flash attention follows llama.cpp's own default (``auto``:
on where the device supports it, the CPU included), as llama-server does; ``Llama()`` defaults to it
off, so ``--flash-attn off`` gives what a default ``Llama()`` gives. On the CPU it makes a decode step
~9 % faster for SmolLM2 (paired, 2 cores).

Prompt-prefix reuse across requests, bit-exact: a freed slot keeps its prompt's KV (and the logits
after its last token) and the next request sharing a prefix with it evaluates only the rest (nothing,
when it is the same prompt). Decoding is batch-invariant here (a sequence's logits
are bit-identical whether its step holds 1 or 4 sequences, measured), and so is a prompt chunk of two
tokens or more, but a token evaluated alone (a generated token, or a 1-token chunk) gives other logits
(max |Δlogit| 0.86 on SmolLM2), so only prompt-chunk KV is kept and no chunk of one token is made that
the whole prompt would not make (``backends.llamacpp_engine``). The same request gets the same answer
whatever ran before it; ``usage.prompt_tokens_details.cached_tokens`` says how much was reused.

Only this module and ``backends.llamacpp_*`` import ``llama_cpp``; its failures become ``BackendError``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
from collections.abc import Iterator
from pathlib import Path

from backends.base import (
    AdapterInfo,
    BackendInfo,
    EventItem,
    EventSink,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
)
from backends.llamacpp_adapters import AdapterSet
from backends.llamacpp_engine import ContextSettings, Scheduler, Sequence
from backends.llamacpp_model import GgufModel, llama_cpp_module
from backends.llamacpp_sampling import SamplerChain
from backends.llamacpp_stream import RequestStream
from backends.select import BackendChoice, EngineOptions
from devserver.errors import BackendError, ContextLengthExceeded

log = logging.getLogger(__name__)

DEFAULT_CTX_SIZE = 4096
MAX_DEFAULT_PARALLEL = 4
KV_BUDGET_TOKENS = 16384  # the default --parallel keeps parallel × ctx within one 16k context's KV


def default_parallel(ctx_size: int) -> int:
    """Slots when ``--parallel`` is not given: 4, fewer for long contexts.

    ``--ctx-size`` is what one request may use, so the KV cache holds ``parallel × ctx_size`` tokens.
    Four slots is where batching pays on a small CPU (measured: 2 streams give no aggregate gain, 4
    give ×1.3, and each stream is already ~3× slower than alone), and every first token arrives
    without waiting behind another request; beyond that, more slots only queue compute. Capping the
    KV at 16k tokens keeps the memory of the default what one 16k context costs (0.4 GB for SmolLM2,
    2 GB for an 8B Llama in f16), so 8k contexts get 2 slots and 16k or more get 1.
    """
    return max(1, min(MAX_DEFAULT_PARALLEL, KV_BUDGET_TOKENS // max(1, ctx_size)))


def load(choice: BackendChoice, options: EngineOptions) -> LlamaCppBackend:
    """Load the GGUF at ``choice.model_path`` and its adapters; raise ``BackendError`` if llama.cpp cannot."""
    lib = llama_cpp_module()
    gpu_layers = choice.n_gpu_layers  # select.py already weighed --n-gpu-layers against the hardware
    model = GgufModel(choice.model_path, gpu_layers)
    try:
        ctx_size = options.ctx_size or DEFAULT_CTX_SIZE
        if options.ctx_size is None and 0 < model.n_ctx_train < ctx_size:
            ctx_size = model.n_ctx_train  # the default must not exceed the training length; a flag is obeyed
        parallel = options.parallel or default_parallel(ctx_size)
        if not 1 <= parallel <= int(lib.llama_max_parallel_sequences()):
            raise BackendError(f"--parallel {parallel} is out of range (1–{lib.llama_max_parallel_sequences()})")
        cpus = os.cpu_count() or 1
        settings = ContextSettings(
            n_ctx_seq=ctx_size,
            parallel=parallel,
            threads=options.threads or max(1, cpus // 2),
            threads_batch=options.threads or cpus,
            prompt_cache_bytes=options.prompt_cache_mib * 2**20,
            flash_attn=options.flash_attn,
        )
        adapters = AdapterSet(model)
        for spec in choice.adapters:
            adapters.load(spec.name, spec.path, source=str(spec.path))
        scheduler = Scheduler(model, adapters, settings)
        _log_context(options, settings, scheduler.n_ctx_seq)
    except BaseException:
        model.close()
        raise
    if gpu_layers == 0:
        device = "cpu"
    elif choice.device != "cpu":
        device = choice.device
    else:
        device = "metal" if sys.platform == "darwin" else "cuda:0"
    info = BackendInfo(
        name="llama.cpp",
        device=device,
        model_file=str(choice.model_path),
        context_size=scheduler.n_ctx_seq,
        max_concurrency=parallel,
        vocab_size=model.n_vocab,
        adapters=adapters.infos(),
        reasons=choice.reasons,
        extra={
            "n_threads": settings.threads,
            "n_threads_batch": settings.threads_batch,
            "n_gpu_layers": gpu_layers,
            "n_ctx_train": model.n_ctx_train,
            "parallel": parallel,
            "kv_cache_tokens": parallel * scheduler.n_ctx_seq,
            "prompt_cache_mib": options.prompt_cache_mib,
            "flash_attn": options.flash_attn,
            "llama_cpp_python": lib.__version__,
        },
    )
    return LlamaCppBackend(model, adapters, scheduler, info)


def _log_context(options: EngineOptions, settings: ContextSettings, n_ctx_seq: int) -> None:
    """Say what the engine made of the flags where it differs from what was asked, so nobody wonders why
    a 16k context serves one request at a time or a 1000-token context holds 1024."""
    slots = f"{settings.parallel} slot{'s' if settings.parallel > 1 else ''} of {n_ctx_seq} tokens"
    why = []
    if n_ctx_seq != settings.n_ctx_seq:
        why.append(f"llama.cpp rounds a context of {settings.n_ctx_seq} up to a multiple of 256")
    if options.parallel is None:
        why.append(f"--parallel not given: at most {MAX_DEFAULT_PARALLEL}, within {KV_BUDGET_TOKENS} KV tokens in all")
    detail = f" ({'; '.join(why)})" if why else ""
    threads = f"{settings.threads} thread{'s' if settings.threads > 1 else ''}"
    log.info("llama.cpp: %s%s, %s, flash attention %s", slots, detail, threads, settings.flash_attn)


class LlamaCppBackend:
    """One loaded model: ``parallel`` requests decode together, more wait for a free slot."""

    def __init__(self, model: GgufModel, adapters: AdapterSet, scheduler: Scheduler, info: BackendInfo) -> None:
        self._model = model
        self._adapters = adapters
        self._scheduler = scheduler
        self._closed = False
        self.info = info
        self._special_tokens = {"bos_token": model.token_text(model.bos), "eos_token": model.token_text(model.eos)}
        self._chat_template = model.metadata("tokenizer.chat_template")

    @property
    def chat_template(self) -> str | None:
        return self._chat_template or None

    @property
    def special_tokens(self) -> dict[str, str]:
        return dict(self._special_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenize(text, add_bos=False))

    def submit(self, request: GenerationRequest, sink: EventSink) -> None:
        """Tokenize the prompt and queue the request on the scheduler, whose thread then delivers its
        events to ``sink`` directly (``backends.base.PushBackend``)."""
        if self._closed:
            raise BackendError("the model has been unloaded")
        if request.adapter is not None and request.adapter not in {a.name for a in self.info.adapters}:
            raise BackendError(f"no adapter named {request.adapter!r} is loaded")
        prompt = self._model.tokenize(request.prompt, add_bos=request.add_special_tokens)
        n_ctx = self._scheduler.n_ctx_seq
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt)} tokens; the context holds {n_ctx}", param="messages"
            )
        budget = n_ctx - len(prompt)
        max_tokens = request.params.max_tokens
        stream = RequestStream(request, len(prompt), budget if max_tokens is None else min(max_tokens, budget), sink)
        sampler = SamplerChain(self._model.lib, self._model.vocab, self._model.n_vocab, request.params)
        try:
            self._scheduler.submit(Sequence(stream, prompt, sampler, request.adapter))
        except BackendError:
            sampler.free()  # the scheduler never saw it, so nothing else will
            raise

    def generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        """``submit`` with a queue to wait on; closing the iterator early cancels the request."""
        sink = _QueueSink()
        self.submit(request, sink)
        finished = False
        try:
            while True:
                for item in sink.get():
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    if isinstance(item, FinishEvent):
                        finished = True
                        yield item
                        return
                    if not request.cancel.is_set():  # nothing more reaches a client that left
                        yield item
        finally:
            if not finished:
                request.cancel.set()  # the slot is freed at the next step

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Load a GGUF LoRA at runtime; requests may name it from the moment this returns."""
        info = self._scheduler.call(lambda: self._adapters.load(name, path))
        self._refresh_adapters()
        return info

    def unload_adapter(self, name: str) -> None:
        """Refuse ``name`` to new requests at once; running ones finish with it, then it is freed."""

        def unload() -> None:
            self._adapters.unload(name)
            if not self._scheduler.adapter_in_use(name):
                self._scheduler.release_adapter(name)

        self._scheduler.call(unload)
        self._refresh_adapters()

    def _refresh_adapters(self) -> None:
        infos = self._scheduler.call(self._adapters.infos)
        self.info = dataclasses.replace(self.info, adapters=infos)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._scheduler.close()
        self._adapters.close()
        self._model.close()


class _QueueSink:
    """An ``EventSink`` for ``generate``: one queue put per scheduler step, whatever it produced."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[EventItem]] = queue.SimpleQueue()

    def started(self) -> None:
        pass

    def deliver(self, items: list[EventItem]) -> None:
        self._queue.put(items)

    def get(self) -> list[EventItem]:
        return self._queue.get()
