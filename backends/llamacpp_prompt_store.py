"""Prompts' KV kept in host memory after their slot moved on, so a prompt seen before starts warm.

A slot keeps only its last prompt; with more distinct prompts than slots (a notebook re-running its
cells, a benchmark cycling through questions, several system prompts) each would be evaluated afresh.
Before a slot's prompt is cut, its sequence state (the KV bytes, ``llama_state_seq_get_data``, about a
millisecond for a chat prompt) goes here; a later request whose prompt shares a longer prefix with an
entry than with any slot gets it copied back into its slot. The bytes are the ones llama.cpp computed,
so reuse stays bit-exact; so are the logits after the prompt's last token, kept with it where the
slot had them, so that the same prompt again needs no evaluation at all. Entries are evicted least
recently used first, to a byte budget, as llama-server's ``--cache-ram``.
"""

from __future__ import annotations

import collections
import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_TOKENS = 8  # shorter prompts cost less to evaluate again than to keep


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix, by binary search over slice comparisons (done in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class _Entry:
    state: Any  # the sequence state bytes (a ctypes array)
    logits: np.ndarray | None

    @property
    def size(self) -> int:
        return len(self.state) + (self.logits.nbytes if self.logits is not None else 0)


class PromptStore:
    """Saved sequence states keyed by (adapter, prompt tokens); used only on the scheduler thread."""

    def __init__(self, lib: Any, ctx: Any, capacity_bytes: int) -> None:
        self._lib = lib
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._entries: collections.OrderedDict[tuple[str | None, tuple[int, ...]], _Entry] = collections.OrderedDict()

    def save(self, slot: int, adapter: str | None, tokens: list[int], logits: np.ndarray | None = None) -> None:
        """Keep the state of ``slot``, which holds exactly ``tokens`` (computed under ``adapter``), and
        the logits after the last of them if known."""
        key = (adapter, tuple(tokens))
        if key in self._entries:
            self._entries.move_to_end(key)
            entry = self._entries[key]
            if entry.logits is None and logits is not None and entry.size + logits.nbytes <= self.capacity_bytes:
                entry.logits = logits
                self.size_bytes += logits.nbytes
                self._evict()
            return
        if len(tokens) < MIN_TOKENS:
            return
        size = int(self._lib.llama_state_seq_get_size(self._ctx, slot))
        if size > self.capacity_bytes:
            return
        buffer = (ctypes.c_uint8 * size)()
        if self._lib.llama_state_seq_get_data(self._ctx, buffer, size, slot) != size:
            return
        entry = _Entry(buffer, logits)
        if entry.size > self.capacity_bytes:
            entry.logits = None  # the KV is what saves most of the work
        self._entries[key] = entry
        self.size_bytes += entry.size
        self._evict()

    def _evict(self) -> None:
        while self.size_bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= evicted.size

    def best(
        self, adapter: str | None, prompt: list[int], better_than: int
    ) -> tuple[int, list[int], np.ndarray | None] | None:
        """The entry sharing the longest prefix with ``prompt`` if longer than ``better_than``: how
        much it shares, its tokens and its logits."""
        found: tuple[int, tuple[str | None, tuple[int, ...]]] | None = None
        wanted = tuple(prompt)  # a tuple's slice never equals a list's
        for key in self._entries:
            if key[0] != adapter:
                continue
            common = common_prefix_length(key[1], wanted)
            if common > (found[0] if found else better_than):
                found = (common, key)
        if found is None:
            return None
        self._entries.move_to_end(found[1])
        return found[0], list(found[1][1]), self._entries[found[1]].logits

    def restore(self, slot: int, adapter: str | None, tokens: list[int]) -> bool:
        """Copy the state saved for ``tokens`` into ``slot`` (replacing what it held)."""
        buffer = self._entries[(adapter, tuple(tokens))].state
        self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        return bool(self._lib.llama_state_seq_set_data(self._ctx, buffer, len(buffer), slot) == len(buffer))

    def forget(self, adapter: str) -> None:
        """Drop what was computed under an adapter that is being unloaded."""
        for key in [k for k in self._entries if k[0] == adapter]:
            self.size_bytes -= self._entries.pop(key).size
