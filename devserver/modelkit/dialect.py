"""The older Kitfile dialect that tutorials show, read into a kit 1.0.0 Kitfile with one warning.

kit rejects these Kitfiles outright (strict YAML, ``manifestVersion: 1.0.0`` only). Users copy them
from blog posts anyway, so kit-dev reads them, says once what kit would reject and what it did
instead, and from then on works with a Kitfile kit itself would accept:

* ``manifestVersion: v1alpha1`` (any value but ``1.0.0``) → read as 1.0.0;
* ``model:`` as a list → the first entry is the model, further entries are ``model.parts``;
* top-level ``modelParts:`` → an entry whose ``path`` is a ModelKit reference becomes ``model.path``
  (that ModelKit is pulled and its model is the base model; the list's models become parts on top),
  other entries become ``model.parts``;
* top-level ``metadata:`` → kept as ModelKit metadata (a manifest annotation when packed) and shown
  by ``inspect`` and ``/v1/models``;
* keys a kit struct does not have (``framework``/``version``/``format``/``size`` on parts, datasets,
  code and docs; ``samples``; ``name`` on code and docs; ``package.repository``) → dropped.

The rewrite works on the YAML node tree, so the strict decoder then reads string fields with their
literal text exactly as it does for a 1.0.0 Kitfile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from devserver.errors import KitfileError
from devserver.modelkit._yaml import StrictDecoder
from devserver.modelkit.kitfile import (
    Code,
    DataSet,
    Docs,
    Kitfile,
    Model,
    ModelPart,
    Package,
    Prompt,
    is_modelkit_reference,
    load_with,
)

__all__ = ["LoadedKitfile", "is_older_dialect", "load_any_kitfile", "parse_any_kitfile", "read_dialect"]

_STR = "tag:yaml.org,2002:str"
_SECTIONS: dict[str, type[BaseModel]] = {"code": Code, "datasets": DataSet, "docs": Docs, "prompts": Prompt}


@dataclass
class LoadedKitfile:
    """A Kitfile as read: the 1.0.0 Kitfile, any older-dialect ``metadata``, and what was changed."""

    kitfile: Kitfile
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """The one warning to print, or None for a Kitfile kit itself accepts."""
        if not self.notes and not self.dropped:
            return None
        parts = [*self.notes]
        if self.dropped:
            parts.append(f"dropped keys kit does not know: {', '.join(self.dropped)}")
        return "Kitfile uses an older dialect that kit rejects; kit-dev read it as manifestVersion 1.0.0: " + "; ".join(
            parts
        )


def _key(node: MappingNode, name: str) -> Node | None:
    return next((v for k, v in node.value if k.value == name), None)


def _scalar(value: str) -> ScalarNode:
    return ScalarNode(_STR, value)


def is_older_dialect(root: Node | None) -> bool:
    """An older-dialect Kitfile: another manifestVersion, a model list, or top-level modelParts/metadata."""
    if not isinstance(root, MappingNode):
        return False
    version = _key(root, "manifestVersion")
    if isinstance(version, ScalarNode) and version.value not in ("1.0.0", ""):
        return True
    return (
        isinstance(_key(root, "model"), SequenceNode)
        or _key(root, "modelParts") is not None
        or _key(root, "metadata") is not None
    )


def parse_any_kitfile(text: str, *, validate: bool = True) -> LoadedKitfile:
    """A 1.0.0 Kitfile strictly, as kit reads it; an older-dialect one rewritten, with its warning."""
    root = compose(text)
    if isinstance(root, MappingNode) and is_older_dialect(root):
        loaded = read_dialect(root)
    else:
        decoded = StrictDecoder().decode_node(root, Kitfile)
        assert isinstance(decoded, Kitfile)
        loaded = LoadedKitfile(decoded)
    if validate:
        loaded.kitfile.validate_kit_rules()
    return loaded


def load_any_kitfile(path: Path) -> LoadedKitfile:
    """Read the Kitfile at ``path`` in either dialect; errors name the file."""
    return load_with(path, parse_any_kitfile)


def compose(text: str) -> Node | None:
    try:
        return YAML(typ="safe", pure=True).compose(text)
    except YAMLError as exc:
        raise KitfileError(f"invalid Kitfile YAML: {' '.join(str(exc).split())}") from exc


def read_dialect(root: MappingNode) -> LoadedKitfile:
    """Rewrite an older-dialect node tree to 1.0.0, decode it strictly, and describe what changed."""
    out = LoadedKitfile(Kitfile())
    entries: list[tuple[Node, Node]] = []
    model_items: list[MappingNode] = []
    base_reference: str | None = None
    part_items: list[MappingNode] = []
    for key, value in root.value:
        name = str(key.value)
        if name == "manifestVersion":
            out.notes.append(f"manifestVersion {value.value} is read as 1.0.0")
            entries.append((key, _scalar("1.0.0")))
        elif name == "metadata":
            out.metadata = StrictDecoder().plain(value)
            out.notes.append("top-level metadata is kept as ModelKit metadata (shown by inspect and /v1/models)")
        elif name == "modelParts":
            for item in _mappings(value):
                path = _key(item, "path")
                if isinstance(path, ScalarNode) and is_modelkit_reference(str(path.value)) and base_reference is None:
                    base_reference = str(path.value)
                    out.notes.append(
                        f"modelParts entry {_label(item)} names ModelKit {base_reference}: it is pulled and its model "
                        "is the base model (model.path)"
                    )
                else:
                    part_items.append(item)
                    out.notes.append(f"modelParts entry {_label(item)} is a model part (model.parts)")
        elif name == "model" and isinstance(value, SequenceNode):
            model_items = _mappings(value)
        elif name == "package":
            entries.append((key, _prune(value, Package, "package", out.dropped)))
        elif name in _SECTIONS:
            pruned = [_prune(i, _SECTIONS[name], f"{name}[{_label(i)}]", out.dropped) for i in _mappings(value)]
            entries.append((key, SequenceNode("tag:yaml.org,2002:seq", pruned)))
        else:
            entries.append((key, value))
    model = _model_node(model_items, base_reference, part_items, out)
    if model is not None:
        entries.append((_scalar("model"), model))
    decoded = StrictDecoder().decode_node(MappingNode("tag:yaml.org,2002:map", entries), Kitfile)
    assert isinstance(decoded, Kitfile)
    out.kitfile = decoded
    return out


def _model_node(
    items: list[MappingNode], base: str | None, parts: list[MappingNode], out: LoadedKitfile
) -> MappingNode | None:
    if not items and base is None and not parts:
        return None
    if base is not None:
        head: MappingNode | None = None
        extra = items
        if items:
            out.notes.append("model is a list: its entries are model parts on top of the base model")
            # The list's model keeps its descriptive fields on the merged model (child metadata wins).
            head = _prune(items[0], Model, f"model[{_label(items[0])}]", out.dropped, keep_path=False)
    else:
        head = _prune(items[0], Model, f"model[{_label(items[0])}]", out.dropped) if items else None
        extra = items[1:]
        if items:
            out.notes.append(
                "model is a list: the first entry is the model" + (", the rest are model parts" if extra else "")
            )
    node = head if head is not None else MappingNode("tag:yaml.org,2002:map", [])
    values = [(k, v) for k, v in node.value if k.value not in ("path", "parts")]
    path = base if base is not None else next((str(v.value) for k, v in node.value if k.value == "path"), None)
    if path is not None:
        values.append((_scalar("path"), _scalar(path)))
    # A list model that became a part already had its descriptive keys kept on the model above.
    quiet: list[str] = []
    part_nodes = [_prune(i, ModelPart, "", quiet) for i in extra if base is not None]
    part_nodes += [_prune(i, ModelPart, f"model part {_label(i)}", out.dropped) for i in extra if base is None]
    part_nodes += [_prune(i, ModelPart, f"model part {_label(i)}", out.dropped) for i in parts]
    if part_nodes:
        values.append((_scalar("parts"), SequenceNode("tag:yaml.org,2002:seq", part_nodes)))
    return MappingNode("tag:yaml.org,2002:map", values)


def _mappings(node: Node) -> list[MappingNode]:
    if isinstance(node, MappingNode):
        return [node]
    if isinstance(node, SequenceNode):
        return [n for n in node.value if isinstance(n, MappingNode)]
    return []


def _label(node: MappingNode) -> str:
    for name in ("name", "path"):
        value = _key(node, name)
        if isinstance(value, ScalarNode) and value.value:
            return str(value.value)
    return "?"


def _prune(
    node: Node, model: type[BaseModel], where: str, dropped: list[str], *, keep_path: bool = True
) -> MappingNode:
    """Keep only the keys ``model`` has (as YAML names); record the others as dropped."""
    if not isinstance(node, MappingNode):
        return MappingNode("tag:yaml.org,2002:map", [])
    allowed = {(info.alias or name) for name, info in model.model_fields.items()} - {"digest", "diffId"}
    if not keep_path:
        allowed.discard("path")
    kept = []
    for key, value in node.value:
        if key.value in allowed:
            kept.append((key, value))
        elif key.value != "path":
            dropped.append(f"{where}.{key.value}")
    return MappingNode("tag:yaml.org,2002:map", kept)
