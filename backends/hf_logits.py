"""Logits processors for the transformers backend: what OpenAI requests need and transformers has no
flag for (presence/frequency penalties, logit bias), and the recorder that yields logprobs.

They run in ``model.generate``'s thread, before transformers' own warpers (temperature, top-p…).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from backends.base import SamplingParams, TopLogprob


def processors(params: SamplingParams, prompt_len: int, torch: Any) -> list[Any]:
    """OpenAI's penalties and logit bias, which transformers has no flag for (they run before warpers)."""
    processors: list[Any] = []
    if params.presence_penalty or params.frequency_penalty:
        processors.append(_Penalties(params.presence_penalty, params.frequency_penalty, prompt_len, torch))
    if params.logit_bias:
        processors.append(_LogitBias(params.logit_bias, torch))
    return processors


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


class ScoreRecorder:
    """The last logits processor: records each step's log-probabilities (after penalties and bias,
    before temperature and top-p, as vLLM reports them) for the consumer to look the sampled token up.

    Steps are handed over through a queue in order, one per sampled token, so memory stays at the
    few steps the consumer lags behind.
    """

    def __init__(self, top: int, torch: Any) -> None:
        self._top, self._torch = top, torch
        self._steps: queue.Queue[Any] = queue.Queue()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._steps.put(self._torch.log_softmax(scores[0].float(), dim=-1).cpu())
        return scores

    def take(self, token: int, text: Callable[[int], str]) -> tuple[float, tuple[TopLogprob, ...]] | None:
        try:
            row = self._steps.get_nowait()
        except queue.Empty:
            return None
        top: tuple[TopLogprob, ...] = ()
        if self._top:
            values, ids = self._torch.topk(row, self._top)
            top = tuple(
                TopLogprob(t, float(v), list(t.encode()))
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
                if (t := text(i))
            )
        return float(row[token]), top
