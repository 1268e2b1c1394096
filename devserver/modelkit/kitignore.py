"""``.kitignore`` with ``.dockerignore`` semantics, as kit applies it through moby's patternmatcher.

Patterns are anchored at the context root; ``*`` and ``?`` stay within one path segment, ``**``
spans any number of segments, ``!`` re-includes, and a path is ignored when it or any parent
directory matches (``MatchesOrParentMatches``). kit always ignores its own Kitfile names and
``.kitignore``, and excludes from a layer whatever belongs to another, nested Kitfile entry.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from devserver.modelkit.kitfile import KITFILE_NAMES

__all__ = ["IGNORE_FILE", "IgnoreRules", "read_ignore_patterns"]

IGNORE_FILE = ".kitignore"


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool


def _clean(path: str) -> str:
    return posixpath.normpath(path.strip()) if path.strip() else "."


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out.append(".*" if i + 1 >= len(pattern) else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise ValueError(f"syntax error in pattern {pattern!r}")
            out.append(pattern[i : end + 1])
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def read_ignore_patterns(context_dir: Path) -> list[str]:
    """Patterns from ``.kitignore`` as moby's ignorefile.ReadAll reads them (comments and blanks dropped)."""
    path = context_dir / IGNORE_FILE
    if not path.is_file():
        return []
    patterns = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append(("!" if invert else "") + line)
    return patterns


def _within(path: str, directory: str) -> bool:
    return directory == "." or path == directory or path.startswith(directory + "/")


class IgnoreRules:
    """kit's ``ignore.Paths``: the .kitignore patterns plus the paths of every Kitfile layer."""

    def __init__(self, patterns: list[str], layer_paths: list[str]) -> None:
        all_patterns = [*patterns, *KITFILE_NAMES, IGNORE_FILE]
        self._patterns = []
        for pattern in all_patterns:
            exclusion = pattern.startswith("!")
            body = _clean(pattern[1:] if exclusion else pattern)
            self._patterns.append(_Pattern(_compile(body), exclusion))
        self._layers = [_clean(p) for p in layer_paths]

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self._patterns)

    def matches(self, path: str, layer_path: str) -> bool:
        """Whether ``path`` stays out of the layer at ``layer_path``."""
        path, layer_path = _clean(path), _clean(layer_path)
        if self._ignore_file_matches(path):
            return True
        for layer in self._layers:
            if _within(layer_path, layer):
                continue  # the layer itself, or a parent of it
            if _within(path, layer):
                return True  # belongs to another layer nested inside this one
        return False

    def _ignore_file_matches(self, path: str) -> bool:
        parent = posixpath.dirname(path) or "."
        parents = parent.split("/")
        matched = False
        for pattern in self._patterns:
            if pattern.exclusion != matched:
                continue
            match = bool(pattern.regex.match(path))
            if not match and parent != ".":
                match = any(pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if match:
                matched = not pattern.exclusion
        return matched
