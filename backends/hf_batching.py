"""Gathers the transformers backend's concurrent requests into batches, one adapter per batch.

The model runs one batch at a time, on this module's thread. When it is free, the oldest waiting job's
adapter picks the batch (PEFT switches adapters for the whole model) and the waiting jobs with that
adapter join it, oldest first, up to ``max_batch``. Requests that a client sends together reach the
backend a little apart (each server thread tokenizes its own prompt first), so a batch is held back
until its oldest job has waited ``window_s`` or the batch is full; a job that already waited behind a
running batch has used its window up and starts at once.

A batch runs to its end: a job arriving meanwhile waits for the next one instead of joining mid-way,
which would mean splicing a new prompt's KV cache into a running cache of another length.

``lock`` is taken before a batch is taken from the queue and held while it runs, so whoever holds it
(adapter loading and unloading, close) works between batches while new jobs gather.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from devserver.errors import BackendError

WINDOW_S = 0.005


class Job(Protocol):
    adapter: str | None
    submitted_at: float  # time.perf_counter()

    def fail(self, exc: Exception) -> None:
        """End the job with an error (a no-op if it has already ended)."""


J = TypeVar("J", bound=Job)


class Batcher(Generic[J]):
    """A queue of jobs and the thread that hands them, batch by batch, to ``run``."""

    def __init__(
        self, run: Callable[[list[J]], None], lock: threading.Lock, max_batch: int, window_s: float = WINDOW_S
    ) -> None:
        self._run = run
        self._lock = lock
        self.max_batch = max_batch
        self._window_s = window_s
        self._waiting: list[J] = []
        self._wake = threading.Condition()
        self._closing = False
        self._sizes: collections.Counter[int] = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name="hf-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._wake:
            return len(self._waiting)

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size have started, for tests and the curious."""
        with self._wake:
            return dict(self._sizes)

    def submit(self, job: J) -> None:
        with self._wake:
            if self._closing:
                raise BackendError("the model has been unloaded")
            self._waiting.append(job)
            self._wake.notify()

    def withdraw(self, job: J) -> bool:
        """Take back a job that has not started; False when it has (or was never queued)."""
        with self._wake:
            if job in self._waiting:
                self._waiting.remove(job)
                return True
            return False

    def close(self) -> None:
        """Stop the thread after the running batch; jobs still waiting fail. Idempotent."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # the batch's requests fail; the server and later batches go on
                for job in batch:
                    job.fail(exc)
            finally:
                self._lock.release()
        with self._wake:
            left, self._waiting = self._waiting, []
        for job in left:
            job.fail(BackendError("the model has been unloaded"))

    def _next_batch(self) -> list[J] | None:
        """Wait for jobs and their window, then take ``lock`` and a batch; None once closing."""
        while True:
            with self._wake:
                while not self._closing and not self._ready():
                    self._wake.wait(self._wait_s())
                if self._closing:
                    return None
            self._lock.acquire()
            with self._wake:
                adapter = self._waiting[0].adapter if self._waiting else None
                batch = [job for job in self._waiting if job.adapter == adapter][: self.max_batch]
                if batch and not self._closing:
                    for job in batch:
                        self._waiting.remove(job)
                    self._sizes[len(batch)] += 1
                    return batch
            self._lock.release()  # every waiting job was withdrawn meanwhile, or closing

    def _ready(self) -> bool:
        if not self._waiting:
            return False
        oldest = self._waiting[0]
        peers = sum(job.adapter == oldest.adapter for job in self._waiting)
        return peers >= self.max_batch or self._wait_s() <= 0

    def _wait_s(self) -> float | None:
        """Seconds until the oldest job's window closes; None (wait for a notify) when nothing waits."""
        if not self._waiting:
            return None
        return self._waiting[0].submitted_at + self._window_s - time.perf_counter()
