"""Progress bars for pulls and pushes: one rich bar per blob on a terminal, nothing otherwise.

A ``ProgressFn`` is called from the pull's worker threads with (descriptor, bytes moved); this
turns those calls into bars, adding one the first time a blob is seen. When stderr is not a TTY
(CI, pipes, the background server) there is no progress object at all, so nothing is printed.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from devserver.oci.descriptor import Descriptor

if TYPE_CHECKING:
    from rich.progress import TaskID

__all__ = ["TransferProgress", "transfer_progress"]


class TransferProgress:
    """A context manager and a ``ProgressFn``."""

    def __init__(self, verb: str) -> None:
        # imported here: rich costs ~40 ms to import, and a pull without a terminal draws no bars
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._verb = verb
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=False
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __call__(self, descriptor: Descriptor, moved: int) -> None:
        with self._lock:
            task = self._tasks.get(descriptor.digest)
            if task is None:
                label = f"{self._verb} {descriptor.digest[7:19]}"
                task = self._tasks[descriptor.digest] = self._bars.add_task(label, total=descriptor.size)
        self._bars.advance(task, moved)

    def __enter__(self) -> TransferProgress:
        self._bars.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bars.stop()


def transfer_progress(verb: str) -> TransferProgress | None:
    """Bars when stderr is a terminal, else None (quiet)."""
    return TransferProgress(verb) if sys.stderr.isatty() else None
