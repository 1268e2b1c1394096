"""One batch of transformers requests decoded together: left padding, attention mask, KV cache, one
forward pass per step for every row still running.

Prompts are left-padded to the longest, the attention mask hides the padding, and position ids count
only real tokens (``cumsum(mask) - 1``), so each row sees exactly the positions and keys it would see
alone; padding changes only the shapes of the matrix products, not what a row attends to. Shapes do
change float32 summation order, so a row's logits differ from its solo logits in the last bits
(measured on SmolLM2, CPU: up to 1.1e-4, from the batch size alone 4e-5 and from the padding alone
4e-5, while a solo run repeats bit for bit). Greedy output is therefore the same batched or alone
unless two candidates' logits are closer than that (the smallest top-2 gap in the tests' prompts is
0.028), and log-probabilities agree to about 1e-4. Each step
every row picks its token with its own ``RowSampler`` (``backends.hf_logits``) and hands it to its
consumer at once. A row that ends (end of sequence, ``max_tokens``, cancelled, or its consumer needs
no more: a stop string matched, the client left) is cut out of the batch and the KV cache before the
next step, so it costs nothing afterwards.

The consumer side (text, stop strings, events) lives in ``backends.hf``; a ``Row`` is what passes
between the two threads.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from backends.base import SamplingParams
from backends.hf_logits import Choice, RowSampler


@dataclass(frozen=True)
class Ended:
    """The last item a row's consumer receives; ``error`` is a message safe to show the client."""

    error: str | None = None


@dataclass(eq=False)
class Row:
    """One request between its consumer thread and the batch it is decoded in.

    The decoding thread puts a ``Choice`` per token into ``out`` and then one ``Ended``; the consumer
    sets ``halt`` when it needs no more tokens.
    """

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    adapter: str | None
    cancel: threading.Event
    halt: threading.Event = field(default_factory=threading.Event)
    out: queue.SimpleQueue[Choice | Ended] = field(default_factory=queue.SimpleQueue)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # when its batch began
    produced: int = 0  # tokens handed on, end-of-sequence excluded
    ended: bool = False

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or self.halt.is_set()

    def end(self, error: str | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.out.put(Ended(error))

    def fail(self, exc: Exception) -> None:
        self.end(f"generation failed: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class BatchDecoder:
    """Decodes batches of rows on one device; holds nothing between batches."""

    def __init__(self, torch: Any, device: Any, eos_ids: frozenset[int], pad_id: int) -> None:
        self._torch = torch
        self._device = device
        self._eos_ids = eos_ids
        self._pad_id = pad_id

    def run(self, model: Any, rows: list[Row]) -> None:
        """Decode ``rows`` until every one has ended (each gets its ``Ended``); raises what the model
        raises, leaving the rows that have not ended for the caller to fail."""
        from transformers import DynamicCache

        torch = self._torch
        started = time.perf_counter()
        live: list[Row] = []
        samplers: list[RowSampler] = []
        for row in rows:
            row.started_at = started
            if row.stopped:
                row.end()
                continue
            try:
                samplers.append(RowSampler(row.params, row.prompt, torch, self._device))
            except Exception as exc:  # this request's settings: it alone fails
                row.fail(exc)
                continue
            live.append(row)
        if not live:
            return
        input_ids, mask = self._left_padded([row.prompt for row in live])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # padding gets 0; the mask hides it anyway
        cache = DynamicCache(config=model.config)  # filled in place by every forward
        cache_argument = _cache_argument(model)
        with torch.inference_mode():
            while True:
                output = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_argument: cache},
                )
                logits = output.logits[:, -1, :].float()
                keep: list[int] = []
                tokens: list[int] = []
                for i, (row, sampler) in enumerate(zip(live, samplers, strict=True)):
                    token = self._step(row, sampler, logits[i : i + 1])
                    if token is not None:
                        keep.append(i)
                        tokens.append(token)
                if not keep:
                    return
                if len(keep) < len(live):
                    index = torch.tensor(keep, device=self._device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    live = [live[i] for i in keep]
                    samplers = [samplers[i] for i in keep]
                input_ids = torch.tensor(tokens, device=self._device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                positions = positions[:, -1:] + 1

    def _step(self, row: Row, sampler: RowSampler, logits: Any) -> int | None:
        """Hand on ``row``'s next token; return it if the row goes on, None once it has ended."""
        if row.stopped:  # checked before sampling: a cancelled row costs no sampling
            row.end()
            return None
        try:
            choice = sampler.choose(logits)
        except Exception as exc:  # this request's settings (a logit bias outside the vocabulary): it alone fails
            row.fail(exc)
            return None
        row.out.put(choice)
        if choice.token in self._eos_ids:
            row.end()
            return None
        row.produced += 1
        if row.produced >= row.max_tokens:
            row.end()
            return None
        return choice.token

    def _left_padded(self, prompts: list[list[int]]) -> tuple[Any, Any]:
        torch = self._torch
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        return input_ids.to(self._device), mask.to(self._device)


def _cache_argument(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (5.x releases before it lack the new name,
    later ones warn on the old): the name this model's forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel passes it on
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
