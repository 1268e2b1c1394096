"""The per-model worker: a bounded queue in front of the backend, and its events' way to the event loop.

Blocking work never touches the event loop, so ``/health`` and ``/metrics`` answer while a long
generation runs. A plain backend's ``generate`` runs on one of the worker's threads, as many as the
backend serves at once (``BackendInfo.max_concurrency``). A ``PushBackend`` (llama.cpp's scheduler)
queues requests on its own engine thread: the worker hands each one over from a thread of its own
(``submit`` tokenizes) and the engine thread delivers the events to the job itself, with no server
thread relaying every token. Either way the events reach the loop through one ``Mailbox``.

At most ``max_concurrency + queue_size`` requests are in flight; beyond that a request is refused at
once (``QueueFull`` → 429) instead of piling up. Cancellation is the request's ``cancel`` event: a
queued request whose client left is dropped before it starts, a running one is stopped by the backend
within one token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from backends.base import Backend, EventItem, FinishEvent, GenerationEvent, GenerationRequest, PushBackend
from devserver.errors import BackendError, InvalidRequest, QueueFull, ServerNotReady

log = logging.getLogger(__name__)


class Mailbox:
    """Carries events from backend threads to the event loop, waking the loop once per batch.

    ``loop.call_soon_threadsafe`` writes to the loop's wake-up socket on every call. A scheduler step
    that produced a token for four requests posts four times; only the post that finds the box empty
    wakes the loop, which then hands all four on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Job, list[EventItem]]] = []

    def post(self, job: Job, items: list[EventItem]) -> None:
        with self._lock:
            wake = not self._pending
            self._pending.append((job, items))
        if not wake:
            return
        try:
            self.loop.call_soon_threadsafe(self._hand_on)
        except RuntimeError:  # the loop is closed: nobody is left to read, so stop generating
            with self._lock:
                pending, self._pending = self._pending, []
            for stranded, _ in pending:
                stranded.cancel()

    def _hand_on(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for job, items in pending:
            job.receive(items)


@dataclass(eq=False)  # identity: jobs live in a set
class Job:
    """One queued generation: the backend's ``EventSink`` on one side, an async iterator on the other."""

    request: GenerationRequest
    mailbox: Mailbox
    on_start: Callable[[float], None] | None = None  # called in a backend or worker thread with perf_counter()
    on_end: Callable[[Job], None] | None = None  # called on the loop once the last event is in
    running: bool = False
    _items: asyncio.Queue[EventItem] = field(default_factory=asyncio.Queue)

    def cancel(self) -> None:
        self.request.cancel.set()

    def started(self) -> None:
        self.running = True
        if self.on_start is not None:
            self.on_start(time.perf_counter())

    def deliver(self, items: list[EventItem]) -> None:
        self.mailbox.post(self, items)

    def put(self, item: EventItem) -> None:
        self.deliver([item])

    def receive(self, items: list[EventItem]) -> None:
        """On the loop: queue the items for ``events``."""
        for item in items:
            self._items.put_nowait(item)
            if isinstance(item, FinishEvent | BaseException) and self.on_end is not None:
                self.on_end(self)

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
    """Runs one backend's generations, at most ``max_concurrency + queue_size`` in flight."""

    def __init__(self, backend: Backend, queue_size: int) -> None:
        self._backend = backend
        slots = max(1, backend.info.max_concurrency)
        self._capacity = slots + max(1, queue_size)
        self._queue_size = max(1, queue_size)
        self._jobs: set[Job] = set()  # submitted, last event not yet on the loop; changed on the loop only
        self._mailbox: Mailbox | None = None
        self._closed = False
        self._push = backend if isinstance(backend, PushBackend) else None
        # A push backend's requests are handed over from one thread; the others' run on ``slots`` threads.
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="kitdev-submit") if self._push is not None else None
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"kitdev-worker-{i}", daemon=True)
            for i in range(0 if self._push is not None else slots)
        ]

    @property
    def running(self) -> int:
        return sum(1 for job in list(self._jobs) if job.running)

    @property
    def waiting(self) -> int:
        return len(self._jobs) - self.running

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, request: GenerationRequest, on_start: Callable[[float], None] | None = None) -> Job:
        """Queue ``request``; raise ``QueueFull`` at once when no room is left. Call on the event loop."""
        return self.submit_all([request], on_start)[0]

    def submit_all(
        self, requests: list[GenerationRequest], on_start: Callable[[float], None] | None = None
    ) -> list[Job]:
        """Queue every one of ``requests`` (the ``n`` choices of one request) or none of them."""
        if self._closed:
            raise ServerNotReady("the server is shutting down")
        if len(requests) > self._queue_size:
            raise InvalidRequest(f"{len(requests)} generations exceed the queue size ({self._queue_size})", param="n")
        if len(self._jobs) + len(requests) > self._capacity:
            raise QueueFull(f"the model's queue is full ({self.waiting} waiting)", hint="retry after a moment")
        mailbox = self._mailbox_for(asyncio.get_running_loop())
        jobs = [Job(request, mailbox, on_start, self._jobs.discard) for request in requests]
        for job in jobs:
            self._jobs.add(job)
            if self._starter is not None:
                self._starter.submit(self._hand_over, job)
            else:
                self._queue.put(job)
        return jobs

    def _mailbox_for(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop)
        return self._mailbox

    def _hand_over(self, job: Job) -> None:
        """On the submit thread: give ``job`` to the push backend, or end it with why it was refused."""
        assert self._push is not None
        if job.request.cancel.is_set():
            job.put(FinishEvent("cancelled", 0, 0))  # its client left before it was handed over
            return
        try:
            self._push.submit(job.request, job)
        except BaseException as exc:  # every failure belongs to its one request
            job.put(exc)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.request.cancel.is_set():
                job.put(FinishEvent("cancelled", 0, 0))  # its client left while it waited
                continue
            self._generate(job)

    def _generate(self, job: Job) -> None:
        job.started()
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
        """Cancel everything queued and running, stop the threads; idempotent. A push backend ends its
        requests (as cancelled) when it is closed next."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs):
            job.cancel()
        if self._starter is not None:
            self._starter.shutdown(wait=True, cancel_futures=False)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
