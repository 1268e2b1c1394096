"""kit's unpack filter grammar, ``<types>[:<ids>]``, and unpacking a ModelKit into a user's directory.

``<types>`` is a comma list of ``kitfile, model, datasets, code, docs, prompts, mcpservers``;
``<ids>`` a comma list matched exactly against an entry's name or path (code and docs: path only).
``model`` selects the model and its parts, each matched on its own. Several filters are OR-ed; no
filter means everything. The error texts are kit's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from devserver.errors import ModelKitError, UsageError
from devserver.modelkit.kitfile import Kitfile
from devserver.modelkit.layers import MatchedLayer

__all__ = ["Filter", "check_existing_kitfile", "kitfile_yaml", "parse_filters", "select_layers", "wants_kitfile"]

FILTER_TYPES = ("kitfile", "model", "datasets", "code", "docs", "prompts", "mcpservers")
_KIND_TO_TYPE = {
    "model": "model",
    "modelpart": "model",
    "dataset": "datasets",
    "code": "code",
    "docs": "docs",
    "prompt": "prompts",
    "mcpserver": "mcpservers",
}
_PATH_ONLY = frozenset({"code", "docs"})


@dataclass(frozen=True)
class Filter:
    types: frozenset[str]
    ids: frozenset[str]

    def matches_kind(self, filter_type: str) -> bool:
        return filter_type in self.types

    def matches(self, layer: MatchedLayer) -> bool:
        kind = _KIND_TO_TYPE[layer.kind]
        if kind not in self.types:
            return False
        if not self.ids:
            return True
        names = {layer.path} if kind in _PATH_ONLY else {layer.name, layer.path}
        return bool(names & self.ids)


def parse_filters(texts: Sequence[str]) -> list[Filter]:
    """Parse ``--filter`` values as kit does."""
    filters = []
    for text in texts:
        if text.count(":") > 1:
            raise UsageError("invalid filter: should be in format <type1>,<type2>[:<filter1>,<filter2>]")
        types_text, _, ids_text = text.partition(":")
        types = [t.strip() for t in types_text.split(",") if t.strip()]
        for t in types:
            if t not in FILTER_TYPES:
                raise UsageError(f"invalid filter type {t} (must be one of {', '.join(FILTER_TYPES)})")
        if not types:
            raise UsageError("invalid filter: should be in format <type1>,<type2>[:<filter1>,<filter2>]")
        ids = frozenset(i.strip() for i in ids_text.split(",") if i.strip())
        filters.append(Filter(frozenset(types), ids))
    return filters


def select_layers(layers: Sequence[MatchedLayer], filters: Sequence[Filter]) -> list[MatchedLayer]:
    if not filters:
        return list(layers)
    return [layer for layer in layers if any(f.matches(layer) for f in filters)]


def wants_kitfile(filters: Sequence[Filter]) -> bool:
    return not filters or any("kitfile" in f.types for f in filters)


def kitfile_yaml(kitfile: Kitfile) -> str:
    """The Kitfile as YAML (2-space indent, no digests), the way ``kit unpack`` writes it."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("digest", "diffId")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump(strip(kitfile.go_fields()), out)
    return out.getvalue()


def check_existing_kitfile(path: Path, text: str, overwrite: bool) -> None:
    """kit refuses to replace a different Kitfile without ``--overwrite``."""
    if path.exists() and not overwrite and path.read_text(encoding="utf-8") != text:
        raise ModelKitError("Kitfile exists and does not match model's Kitfile", hint="pass --overwrite to replace it")
