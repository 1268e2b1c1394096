"""Stop strings for streamed text: cut at the first stop string, hold back what could still become one.

Every backend feeds its decoded text through a ``StopMatcher`` so that no client ever sees any part
of a stop string, even when the stop string arrives split across several tokens (``"<|e"``, ``"nd|>"``).
Text is released as soon as it can no longer be the start of a stop string, so the hold-back is at
most ``len(longest stop) - 1`` characters and streaming latency is unaffected for ordinary text.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Incremental stop-string search over a stream of text pieces.

    ``feed`` returns the text that is safe to emit now; once a stop string is seen ``stopped`` is
    true, the text from the stop string on is dropped, and later calls return ``""``. ``flush``
    returns the held-back tail when the stream ends without a stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    @property
    def holding(self) -> bool:
        """True while some text is held back because it may start a stop string."""
        return bool(self._held)

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        # Only the held tail plus the new text can contain a stop string: everything emitted earlier
        # was proven not to be the start of one (the held tail is the longest possible start).
        buffer = self._held + text
        cut = min((i for s in self._stops if (i := buffer.find(s)) != -1), default=-1)
        if cut != -1:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:k]):
                    best = k
                    break
        return best
