"""GGUF models through llama-cpp-python.

``load`` builds a ``llama_cpp.Llama`` (model, context, tokenizer, KV cache) and ``generate`` drives it
token by token with a llama.cpp sampler chain built per request. The loop is ours rather than
``Llama.create_completion`` because that one re-detokenizes the whole completion on every token
(O(n²)), applies ``logit_bias`` through a numpy processor it flags as "probably broken", and cannot
be cancelled between tokens. The sampler chain is llama-cpp-python's own order (logit bias, penalties,
then greedy, or top-k → top-p → min-p → temperature → dist) and the prompt is evaluated the same way,
so greedy output equals a fresh ``Llama.create_chat_completion(temperature=0)`` for the same messages.

Only this module imports ``llama_cpp``; its errors are translated into ``BackendError`` here.
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from backends.base import (
    BackendInfo,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    Timings,
    TokenEvent,
)
from backends.select import BackendChoice, EngineOptions
from backends.stopping import StopMatcher
from devserver.errors import BackendError, ContextLengthExceeded

DEFAULT_CTX_SIZE = 4096
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size default


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendError("llama-cpp-python is not installed", hint="pip install 'kit-dev[llama]'") from exc
    return llama_cpp


def load(choice: BackendChoice, options: EngineOptions) -> LlamaCppBackend:
    """Load the GGUF at ``choice.model_path``; raise ``BackendError`` if llama.cpp cannot."""
    llama_cpp = _llama_cpp()
    gpu_layers = options.n_gpu_layers
    if gpu_layers is None:
        gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    cpus = os.cpu_count() or 1
    threads = options.threads or max(1, cpus // 2)
    threads_batch = options.threads or cpus
    ctx_size = options.ctx_size or DEFAULT_CTX_SIZE

    def build(n_ctx: int) -> Any:
        try:
            return llama_cpp.Llama(
                model_path=str(choice.model_path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads_batch,
                n_gpu_layers=gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(f"llama.cpp could not load {choice.model_path.name}: {exc}") from exc

    llm = build(ctx_size)
    n_ctx_train = llama_cpp.llama_model_n_ctx_train(llm.model)
    if options.ctx_size is None and 0 < n_ctx_train < ctx_size:
        # The default must not exceed what the model was trained for; an explicit flag is obeyed.
        llm.close()
        llm = build(n_ctx_train)
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
        context_size=llm.n_ctx(),
        max_concurrency=1,
        reasons=choice.reasons,
        extra={
            "n_threads": threads,
            "n_threads_batch": threads_batch,
            "n_gpu_layers": gpu_layers,
            "n_ctx_train": n_ctx_train,
            "llama_cpp_python": llama_cpp.__version__,
        },
    )
    return LlamaCppBackend(llm, info)


class LlamaCppBackend:
    """One loaded model and its single llama.cpp context; one generation at a time."""

    def __init__(self, llm: Any, info: BackendInfo) -> None:
        self._llama_cpp = _llama_cpp()
        self._llm = llm
        self._vocab = self._llama_cpp.llama_model_get_vocab(llm.model)
        self._lock = threading.Lock()  # the context and its KV cache serve one sequence at a time
        self._closed = False
        self.info = info
        self._special_tokens = {
            "bos_token": self._token_text(llm.token_bos()),
            "eos_token": self._token_text(llm.token_eos()),
        }

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama_cpp.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    @property
    def chat_template(self) -> str | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        return str(template) if template else None

    @property
    def special_tokens(self) -> dict[str, str]:
        return dict(self._special_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_bos=False))

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        with self._lock:
            if self._closed:
                raise BackendError("the model has been unloaded")
            yield from self._generate(request)

    def _generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        start = time.perf_counter()
        params = request.params
        prompt = self._tokenize(request.prompt, add_bos=request.add_special_tokens)
        n_ctx = self._llm.n_ctx()
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt)} tokens; the context holds {n_ctx}", param="messages"
            )
        budget = n_ctx - len(prompt)
        max_tokens = budget if params.max_tokens is None else min(params.max_tokens, budget)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        matcher = StopMatcher(params.stop)
        reason: FinishReason = "length"
        produced = 0
        first_token_at: float | None = None
        pending: list[int] = []
        with _SamplerChain(self._llama_cpp, self._llm.n_vocab(), params) as sampler:
            self._prefill(prompt)
            while produced < max_tokens:
                if request.cancel.is_set():
                    reason = "cancelled"
                    break
                token = sampler.sample(self._llm.ctx)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                produced += 1
                pending.append(token)
                text = matcher.feed(decoder.decode(self._llm.detokenize([token])))
                if text:
                    yield TokenEvent(text=text, token_ids=tuple(pending))
                    pending.clear()
                if matcher.stopped:
                    reason = "stop"
                    break
                if produced < max_tokens:
                    self._eval([token])
        if reason != "cancelled" and not matcher.stopped:
            # Bytes of a character cut off by max_tokens are dropped, as llama-cpp-python does.
            tail = matcher.flush()
            if tail:
                yield TokenEvent(text=tail, token_ids=tuple(pending))
        end = time.perf_counter()
        prefill_end = first_token_at or end
        yield FinishEvent(
            reason=reason,
            prompt_tokens=len(prompt),
            completion_tokens=produced,
            timings=Timings(prefill_s=prefill_end - start, decode_s=end - prefill_end),
        )

    def _prefill(self, prompt: Sequence[int]) -> None:
        """Evaluate the whole prompt from an empty KV cache, every time.

        Reusing the cached prefix (llama-cpp-python's and llama-server's default) would save prefill
        time in multi-turn chats, but llama.cpp's CPU kernels differ by batch size, so a prompt whose
        tail is evaluated alone gives slightly different logits and, now and then, a different greedy
        answer to the same request. A dev server must answer the same request the same way.
        """
        self._llm.reset()
        self._eval(prompt)

    def _eval(self, tokens: Sequence[int]) -> None:
        try:
            self._llm.eval(tokens)
        except RuntimeError as exc:
            raise BackendError(f"llama.cpp failed to decode: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._llm.close()


class _SamplerChain:
    """A per-request llama.cpp sampler chain, freed on exit (llama-cpp-python's chain order)."""

    def __init__(self, llama_cpp: Any, n_vocab: int, params: SamplingParams) -> None:
        self._lib = llama_cpp
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        add = self._add
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for slot, (token, bias) in enumerate(params.logit_bias.items()):
                biases[slot].token = token
                biases[slot].bias = bias
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        add(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                1.0 if params.repeat_penalty is None else params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
        if params.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k or 0))  # k <= 0 is a no-op
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(params.min_p or 0.0, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
            add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it from here

    def sample(self, ctx: Any) -> int:
        """Sample from the last evaluated position (this also feeds the token to the penalties)."""
        return int(self._lib.llama_sampler_sample(self._chain, ctx, -1))

    def __enter__(self) -> _SamplerChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lib.llama_sampler_free(self._chain)
