"""Strict YAML decoding of a Kitfile, the way kit's yaml.v3 decoder with ``KnownFields(true)`` does it.

We decode from ruamel's node tree rather than from loaded Python objects because only the nodes keep
what kit relies on: the literal text of a scalar (``version: 1.10`` is the string "1.10" in a string
field) and the line of every key (unknown keys are reported as ``line N: field X not found in type
artifact.T``). Free-form ``parameters`` are resolved with YAML 1.2 rules, so ``yes`` stays a string.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from devserver.errors import KitfileError

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SHORT_TAGS = {
    "tag:yaml.org,2002:str": "!!str",
    "tag:yaml.org,2002:int": "!!int",
    "tag:yaml.org,2002:float": "!!float",
    "tag:yaml.org,2002:bool": "!!bool",
    "tag:yaml.org,2002:null": "!!null",
    "tag:yaml.org,2002:map": "!!map",
    "tag:yaml.org,2002:seq": "!!seq",
    "tag:yaml.org,2002:timestamp": "!!timestamp",
}


def _tag(node: Node) -> str:
    return str(getattr(node.tag, "value", node.tag))


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 0  # 0: a node the dialect reader made


def _describe(node: Node) -> str:
    short = _SHORT_TAGS.get(_tag(node), _tag(node))
    if isinstance(node, ScalarNode):
        return f"{short} `{node.value}`"
    return short


class StrictDecoder:
    """Decodes one YAML document into pydantic models, collecting every error with its line."""

    def __init__(self) -> None:
        self._yaml = YAML(typ="safe", pure=True)  # ruamel's default YAML version is 1.2
        self.errors: list[str] = []

    def decode(self, text: str, model: type[BaseModel]) -> BaseModel:
        """Decode ``text`` into ``model``; raise KitfileError listing every problem, as yaml.v3 does."""
        try:
            root = self._yaml.compose(text)
        except YAMLError as exc:
            raise KitfileError(f"invalid Kitfile YAML: {' '.join(str(exc).split())}") from exc
        return self.decode_node(root, model)

    def decode_node(self, root: Node | None, model: type[BaseModel]) -> BaseModel:
        """Decode an already composed node tree (the older-dialect reader rewrites one first)."""
        if root is None:  # yaml.v3 decodes an empty document into the zero value
            return model.model_validate({})
        result = self._struct(root, model)
        if self.errors:
            raise KitfileError("yaml: unmarshal errors: " + "; ".join(self.errors))
        return result if result is not None else model.model_validate({})

    def _fail(self, node: Node, target: str) -> None:
        self.errors.append(f"line {_line(node)}: cannot unmarshal {_describe(node)} into {target}")

    def _struct(self, node: Node, model: type[BaseModel]) -> Any:
        go_name = f"artifact.{getattr(model, 'go_name', model.__name__)}"
        if isinstance(node, ScalarNode) and _tag(node) == _NULL:
            return None
        if not isinstance(node, MappingNode):
            self._fail(node, go_name)
            return None
        by_key = {(info.alias or name): name for name, info in model.model_fields.items()}
        yaml_only = getattr(model, "yaml_excluded", frozenset())
        values: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                self.errors.append(f'line {_line(key_node)}: mapping key "{key}" already defined at line {seen[key]}')
                continue
            seen[key] = _line(key_node)
            name = by_key.get(key)
            if name is None or key in yaml_only:
                self.errors.append(f"line {_line(key_node)}: field {key} not found in type {go_name}")
                continue
            value = self._value(value_node, model.model_fields[name].annotation)
            if value is not None:
                values[name] = value
        return model.model_validate(values)

    def _value(self, node: Node, annotation: Any) -> Any:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return self._value(node, inner[0])
        if annotation is str:
            return self._string(node)
        if origin is list:
            return self._list(node, args[0])
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self._struct(node, annotation)
        return self.plain(node)

    def _string(self, node: Node) -> str | None:
        if not isinstance(node, ScalarNode):
            self._fail(node, "string")
            return None
        if _tag(node) == _NULL:
            return None
        return str(node.value)  # the literal text, as yaml.v3 stores any scalar into a string field

    def _list(self, node: Node, item: Any) -> list[Any] | None:
        if isinstance(node, ScalarNode) and _tag(node) == _NULL:
            return None
        if not isinstance(node, SequenceNode):
            self._fail(node, "[]" + getattr(item, "__name__", "string"))
            return None
        items = [self._value(child, item) for child in node.value]
        return [i if i is not None else ("" if item is str else item.model_validate({})) for i in items]

    def plain(self, node: Node) -> Any:
        """A free-form value as JSON-compatible Python data (YAML 1.2 resolution)."""
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or _tag(key_node) != _STR:
                    self.errors.append(f"line {_line(key_node)}: parameters keys must be strings")
                    continue
                out[key_node.value] = self.plain(value_node)
            return out
        if isinstance(node, SequenceNode):
            return [self.plain(child) for child in node.value]
        if _tag(node) == _TIMESTAMP:
            return str(node.value)  # yaml.v3 keeps timestamp-looking text as a string in an ``any``
        value = self._yaml.constructor.construct_object(node, deep=True)
        if isinstance(value, float) and not math.isfinite(value):
            self.errors.append(f"line {_line(node)}: {node.value} cannot be represented in JSON")
        return value
