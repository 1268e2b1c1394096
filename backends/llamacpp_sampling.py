"""Per-request sampling on llama.cpp: the sampler chain, grammars, and log-probabilities.

Each request owns its chain so that stateful samplers (penalty history, RNG, grammar state) never mix
between the sequences of one batch. The chain order is llama-cpp-python's (logit bias, penalties,
grammar, then greedy, or top-k → top-p → min-p → temperature → dist) so that greedy output equals
``Llama.create_chat_completion(temperature=0)`` and seeded output equals what it gives for the seed.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import numpy as np

from backends.base import SamplingParams, TopLogprob
from devserver.errors import InvalidRequest

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size default
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


def grammar_text(params: SamplingParams) -> str | None:
    """The GBNF that constrains this request: ``grammar`` as given, or ``json_schema`` converted."""
    if params.grammar is not None:
        return params.grammar
    if params.json_schema is None:
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(params.json_schema)))
    except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError for what it cannot map
        message = f"the JSON schema cannot be turned into a grammar: {exc}"
        raise InvalidRequest(message, param="response_format") from exc


class SamplerChain:
    """A llama.cpp sampler chain built for one request; ``free`` it when the request ends."""

    def __init__(self, lib: Any, vocab: Any, n_vocab: int, params: SamplingParams) -> None:
        self._lib = lib
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = lib.llama_sampler_chain_init(chain_params)
        try:
            self._build(vocab, n_vocab, params)
        except BaseException:
            self.free()
            raise

    def _build(self, vocab: Any, n_vocab: int, params: SamplingParams) -> None:
        lib, add = self._lib, self._add
        if params.logit_bias:
            biases = (lib.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token = token
                biases[i].bias = bias
            add(lib.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        repeat = 1.0 if params.repeat_penalty is None else params.repeat_penalty
        if repeat != 1.0 or params.frequency_penalty or params.presence_penalty:
            # Neutral penalties change nothing, so they are left out of the per-token work.
            add(lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, repeat, params.frequency_penalty,
                                                 params.presence_penalty))  # fmt: skip
        grammar = grammar_text(params)
        if grammar is not None:
            sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not sampler:
                raise InvalidRequest("the grammar does not parse as GBNF with a 'root' rule", param="grammar")
            add(sampler)
        if params.temperature == 0:
            add(lib.llama_sampler_init_greedy())
            return
        add(lib.llama_sampler_init_top_k(params.top_k or 0))  # k <= 0 is a no-op
        add(lib.llama_sampler_init_top_p(params.top_p, 1))
        add(lib.llama_sampler_init_min_p(params.min_p or 0.0, 1))
        add(lib.llama_sampler_init_temp(params.temperature))
        seed = lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(lib.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it from here

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch position ``index`` (this also feeds penalties and grammar)."""
        return int(self._lib.llama_sampler_sample(self._chain, ctx, index))

    def sample_logits(self, logits: np.ndarray) -> int:
        """Sample from logits kept from an earlier decode, exactly as ``sample`` does from the
        context's (``llama_sampler_sample``: every token as a candidate, unsorted, apply, accept)."""
        lib = self._lib
        candidates = np.zeros(len(logits), dtype=TOKEN_DATA)
        candidates["id"] = np.arange(len(logits), dtype=np.int32)
        candidates["logit"] = logits
        array = lib.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        lib.llama_sampler_apply(self._chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the sampler chain selected no token")
        token = int(array.data[array.selected].id)
        lib.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None


def batch_logits(lib: Any, ctx: Any, index: int, n_vocab: int) -> np.ndarray:
    """The logits of batch position ``index`` in the last decode, as a view (valid until the next)."""
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(n_vocab,))


def token_logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of raw logits: the token's and the ``top_n`` best.

    Raw means before penalties, bias and grammar, as OpenAI reports them. Only requests that ask
    for log-probabilities pay for this (one pass over the vocabulary in numpy).
    """
    peak = float(logits.max())
    log_total = peak + math.log(float(np.exp(logits - peak).sum()))
    chosen = float(logits[token]) - log_total
    if top_n <= 0:
        return chosen, []
    best = np.argpartition(logits, -top_n)[-top_n:]
    best = best[np.argsort(-logits[best], kind="stable")]
    return chosen, [(int(t), float(logits[t]) - log_total) for t in best]


def top_logprob(piece: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(token=piece.decode("utf-8", "replace"), logprob=logprob, bytes=list(piece))
