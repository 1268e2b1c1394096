"""The per-model worker: a bounded queue in front of the backend and the thread(s) that run it.

Blocking ``backend.generate`` calls never touch the event loop: each runs in a worker thread and
hands its events to the request's ``asyncio.Queue`` with ``loop.call_soon_threadsafe``, so ``/health``
and ``/metrics`` answer while a long generation runs. There are as many threads as the backend says it
can serve at once (``BackendInfo.max_concurrency``); requests beyond that wait in the queue, and a
full queue is refused at once (``QueueFull`` → 429) instead of piling up. Cancellation is the
request's ``cancel`` event: a queued request whose client left is dropped before it starts, a running
one is stopped by the backend within one token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from backends.base import Backend, FinishEvent, GenerationEvent, GenerationRequest
from devserver.errors import BackendError, InvalidRequest, QueueFull, ServerNotReady

log = logging.getLogger(__name__)

_Item = GenerationEvent | BaseException


@dataclass(eq=False)  # identity: jobs live in a set
class Job:
    """One queued generation and the asyncio side of its event stream."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    on_start: Callable[[float], None] | None = None  # called in the worker thread with perf_counter()
    _items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)

    def cancel(self) -> None:
        self.request.cancel.set()

    def put(self, item: _Item) -> None:
        """Called from a worker thread; if the loop is gone there is no one to tell, so stop."""
        try:
            self.loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:
            self.cancel()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """The backend's events in order, ending with its ``FinishEvent``; its exception re-raised."""
        while True:
            item = await self._items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, FinishEvent):
                return


class ModelWorker:
    """Runs one backend's generations from a bounded queue."""

    def __init__(self, backend: Backend, queue_size: int) -> None:
        self._backend = backend
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, queue_size))
        self._threads = [
            threading.Thread(target=self._run, name=f"kitdev-worker-{i}", daemon=True)
            for i in range(max(1, backend.info.max_concurrency))
        ]
        self._running: set[Job] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, request: GenerationRequest, on_start: Callable[[float], None] | None = None) -> Job:
        """Queue ``request``; raise ``QueueFull`` at once when no slot is free. Call on the event loop."""
        if self._closed:
            raise ServerNotReady("the server is shutting down")
        job = Job(request, asyncio.get_running_loop(), on_start)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"the model's queue is full ({self._queue.maxsize} waiting)", hint="retry after a moment"
            ) from None
        return job

    def submit_all(
        self, requests: list[GenerationRequest], on_start: Callable[[float], None] | None = None
    ) -> list[Job]:
        """Queue every one of ``requests`` (the ``n`` choices of one request) or none of them.

        Only the event loop adds to the queue, so the room checked here is still there when the
        jobs are put (worker threads only take from it).
        """
        if len(requests) > self._queue.maxsize:
            raise InvalidRequest(
                f"{len(requests)} generations exceed the queue size ({self._queue.maxsize})", param="n"
            )
        if self._queue.maxsize - self._queue.qsize() < len(requests):
            raise QueueFull(f"the model's queue is full ({self._queue.maxsize} waiting)", hint="retry after a moment")
        return [self.submit(request, on_start) for request in requests]

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.request.cancel.is_set():
                job.put(FinishEvent("cancelled", 0, 0))  # its client left while it waited
                continue
            with self._lock:
                self._running.add(job)
            try:
                self._generate(job)
            finally:
                with self._lock:
                    self._running.discard(job)

    def _generate(self, job: Job) -> None:
        if job.on_start is not None:
            job.on_start(time.perf_counter())
        finished = False
        try:
            for event in self._backend.generate(job.request):
                job.put(event)
                finished = isinstance(event, FinishEvent)
        except BaseException as exc:  # every failure belongs to its one request, not to the worker
            job.put(exc)
            return
        if not finished:
            job.put(BackendError("the backend ended without finishing the request"))

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything queued and running, stop the threads; idempotent."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.put(FinishEvent("cancelled", 0, 0))
        with self._lock:
            for job in self._running:
                job.cancel()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
