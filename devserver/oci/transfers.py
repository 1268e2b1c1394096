"""The blob downloads of one pull, ``concurrency`` at a time, ended together as soon as one fails.

Not a plain ``with ThreadPoolExecutor()`` block: its exit waits for every transfer it was given, so
a corrupt blob (or a Ctrl-C) would be reported only once all the others had finished downloading,
minutes later for a ModelKit of several 10 GB layers, for a pull that has already failed. Here a
failure is raised as it happens, and leaving the ``with`` block on any error stops the rest: those
not started are cancelled, those running stop at their next chunk and keep their partial file in
``ingest/``, to be resumed as after any interruption. Nothing unverified is ever visible: a blob is
published only by ``RegistryClient.fetch_blob``, after its size and digest check out.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from devserver.errors import CacheError
from devserver.oci.descriptor import Descriptor
from devserver.oci.reference import Reference
from devserver.oci.registry import ProgressFn, RegistryClient
from devserver.oci.store import LocalStore

__all__ = ["BlobTransfers", "format_bytes"]


class _Stopped(Exception):
    """Raised in a worker whose pull has already failed; never seen by callers."""


def format_bytes(size: int) -> str:
    """kit's FormatBytes: binary units, one decimal, rounded down (``1.0 KiB``, ``500 B``)."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{int(value * 10) / 10:.1f} {units[0]}"


class BlobTransfers:
    """Blobs fetched ``concurrency`` at a time into ``store``, counted for the pull's statistics.

    ``start`` checks the cache and the free space and queues what is missing; ``wait`` returns once
    everything started is in, or raises the first failure. Use as a context manager: leaving it
    waits for a clean finish, or stops everything on an error.
    """

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        store: LocalStore,
        progress: ProgressFn | None,
        concurrency: int,
    ) -> None:
        self.client, self.reference, self.store, self.progress = client, reference, store, progress
        self.fetched: list[str] = []
        self.fetched_bytes = 0
        self.hits = 0
        self._pool = ThreadPoolExecutor(max_workers=max(concurrency, 1), thread_name_prefix="pull")
        self._futures: dict[str, Future[None]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # workers update the statistics

    def __enter__(self) -> BlobTransfers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def start(self, descriptors: Iterable[Descriptor]) -> None:
        """Queue the blobs not in the store yet (a cached blob is re-hashed, and queued if corrupt).

        Refuses, before queueing any, blobs that cannot fit on the disk. A blob started by an
        earlier call counts as a cache hit, as it would have been found in the store.
        """
        unique = list({d.digest: d for d in descriptors}.values())
        new = [d for d in unique if d.digest not in self._futures]
        missing = [d for d in new if not self._cached(d)]
        self.hits += len(unique) - len(missing)
        self._check_space(missing)
        for descriptor in missing:
            self._futures[descriptor.digest] = self._pool.submit(self._one, descriptor)

    def wait(self) -> None:
        """Block until every blob started is in the store, or raise as soon as one transfer fails.

        Of several failures, the first started is raised; leaving the ``with`` block stops the rest.
        """
        futures = list(self._futures.values())
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in futures:
            if future in done:
                future.result()  # raises the transfer's error, if it had one

    def _cached(self, descriptor: Descriptor) -> bool:
        """Present and intact; a corrupt cached blob is deleted here so it is fetched again."""
        return self.store.has_blob(descriptor.digest) and self.store.verify_blob(descriptor.digest, descriptor.size)

    def _one(self, descriptor: Descriptor) -> None:
        if self._stop.is_set():
            raise _Stopped
        if self.client.fetch_blob(self.reference.repository, descriptor, self.store, progress=self._moved):
            with self._lock:
                self.fetched.append(descriptor.digest)
                self.fetched_bytes += descriptor.size
        else:
            with self._lock:
                self.hits += 1

    def _moved(self, descriptor: Descriptor, count: int) -> None:
        """The progress callback of every transfer: where a failed pull stops the others."""
        if self._stop.is_set():
            raise _Stopped
        if self.progress is not None:
            self.progress(descriptor, count)

    def _check_space(self, missing: list[Descriptor]) -> None:
        partial = 0
        for d in missing:
            ingest = self.store.root / "ingest" / d.digest.removeprefix("sha256:")
            partial += ingest.stat().st_size if ingest.is_file() else 0
        needed = sum(d.size for d in missing) - partial
        free = shutil.disk_usage(self.store.root).free
        if needed > free:
            raise CacheError(
                f"not enough disk space to pull {self.reference}: it needs {format_bytes(needed)} "
                f"({needed} bytes) more in {self.store.root}, which has {format_bytes(free)} ({free} bytes) free",
                hint="free some space (`kit-dev prune`, `kit-dev rm REF`) or use --cache-dir on a larger disk",
            )
