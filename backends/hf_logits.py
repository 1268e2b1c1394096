"""How one request picks each token in the transformers backend: its penalties and logit bias, its
log-probabilities, then greedy choice or sampling from its own random generator.

Every row of a batch has its own ``RowSampler``, so requests decoded together keep their own settings
and a seeded request draws the same numbers whatever it is batched with. The steps run in
``model.generate``'s order (repetition penalty, then OpenAI's penalties and bias, which transformers
has no flag for, then temperature, top-k, top-p and min-p) with transformers' own processor classes,
the reference implementations. Log-probabilities are taken after penalties and bias and before
temperature and top-p, as vLLM reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.base import SamplingParams


@dataclass(frozen=True)
class Choice:
    """One sampled token; ``logprob`` and ``top`` (token id, log-probability) only when asked for."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class RowSampler:
    """The decoding rule of one request; ``choose`` is called once per generated token, in order."""

    def __init__(self, params: SamplingParams, prompt: list[int], torch: Any, device: Any) -> None:
        self._torch = torch
        self._processors = _processors(params, len(prompt), torch)
        # Penalties look at the prompt and the completion so far; nothing else needs the history.
        self._history = torch.tensor([prompt], device=device) if self._processors else None
        self._top = params.top_logprobs if params.logprobs else None
        self._warpers = _warpers(params) if params.temperature > 0 else None
        self._generator = None
        if self._warpers is not None:
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()  # a fresh, non-deterministic seed
            else:
                self._generator.manual_seed(params.seed)

    def choose(self, logits: Any) -> Choice:
        """The next token from this row's next-token logits (shape ``[1, vocab]``, float32)."""
        torch = self._torch
        scores = logits
        for processor in self._processors:
            scores = processor(self._history, scores)
        logprobs = torch.log_softmax(scores[0], dim=-1) if self._top is not None else None
        if self._warpers is None:
            token = int(scores[0].argmax())
        else:
            for warper in self._warpers:
                scores = warper(self._history, scores)
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self._generator))
        if self._history is not None:
            self._history = torch.cat([self._history, self._history.new_tensor([[token]])], dim=1)
        if logprobs is None:
            return Choice(token)
        top: tuple[tuple[int, float], ...] = ()
        if self._top:
            values, ids = torch.topk(logprobs, self._top)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return Choice(token, float(logprobs[token]), top)


def _processors(params: SamplingParams, prompt_len: int, torch: Any) -> list[Any]:
    from transformers import RepetitionPenaltyLogitsProcessor

    processors: list[Any] = []
    if params.repeat_penalty is not None and params.repeat_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repeat_penalty))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(_Penalties(params.presence_penalty, params.frequency_penalty, prompt_len, torch))
    if params.logit_bias:
        processors.append(_LogitBias(params.logit_bias, torch))
    return processors


def _warpers(params: SamplingParams) -> list[Any]:
    """transformers' sampling warpers, on the same conditions as ``GenerationConfig`` applies them."""
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = []
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(params.min_p))
    return warpers


class _Penalties:
    """OpenAI presence/frequency penalties, over the completion so far (not the prompt)."""

    def __init__(self, presence: float, frequency: float, prompt_len: int, torch: Any) -> None:
        self.presence, self.frequency, self.prompt_len, self.torch = presence, frequency, prompt_len, torch

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = self.torch.zeros_like(scores).scatter_add_(
            1, generated, self.torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _LogitBias:
    def __init__(self, bias: dict[int, float], torch: Any) -> None:
        self.ids = torch.tensor(list(bias.keys()))
        self.values = torch.tensor(list(bias.values()))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.clone()
        scores[:, self.ids.to(scores.device)] += self.values.to(scores.device, scores.dtype)
        return scores
