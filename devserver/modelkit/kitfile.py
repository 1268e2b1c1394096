"""The Kitfile (``manifestVersion: 1.0.0``) as pydantic models, read and written as kit does.

Reading a Kitfile is strict like kit's (unknown keys fail with their line); writing the config blob
reproduces ``json.Marshal(KitFile)`` byte for byte so our config digests equal kit's. Field order in
each model is the Go struct's order, which is the JSON order; ``digest``/``diffId`` (kit's embedded
``LayerInfo``) come last and never appear in YAML.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devserver.errors import KitfileError, ReferenceError_
from devserver.modelkit import _gojson, mediatypes
from devserver.oci.reference import parse_reference

__all__ = [
    "KITFILE_NAMES",
    "Code",
    "DataSet",
    "Docs",
    "Entry",
    "Kitfile",
    "LayerEntry",
    "McpServer",
    "Model",
    "ModelPart",
    "Package",
    "Prompt",
    "find_kitfile",
    "load_kitfile",
    "parse_kitfile",
]

T = TypeVar("T")

KITFILE_NAMES = ("Kitfile", "kitfile", ".kitfile")
_PART_TYPE = re.compile(r"^[\w][\w.-]*$")
_LAYER_INFO = ("digest", "diff_id")


class _KitModel(BaseModel):
    """Base for every Kitfile struct; ``go_name`` is the Go type that kit's error messages name."""

    model_config = ConfigDict(populate_by_name=True, validate_assignment=True)
    go_name: ClassVar[str]
    always_emit: ClassVar[frozenset[str]] = frozenset()
    yaml_excluded: ClassVar[frozenset[str]] = frozenset()

    def go_fields(self) -> dict[str, Any]:
        """Fields as ``json.Marshal`` emits them: struct order, ``omitempty`` applied, LayerInfo last."""
        names = [n for n in type(self).model_fields if n not in _LAYER_INFO]
        names += [n for n in _LAYER_INFO if n in type(self).model_fields]
        out: dict[str, Any] = {}
        for name in names:
            info = type(self).model_fields[name]
            key = info.alias or name
            value = getattr(self, name)
            if key in self.always_emit:
                out[key] = _to_go(value)
            elif value is None or (name != "parameters" and value in ("", [])):
                continue
            else:
                out[key] = _to_go(value)
        return out


def _to_go(value: Any) -> Any:
    if isinstance(value, _KitModel):
        return value.go_fields()
    if isinstance(value, list):
        return [_to_go(v) for v in value]
    return _gojson.as_go_map(value)


class Package(_KitModel):
    go_name: ClassVar[str] = "Package"
    name: str = ""
    version: str = ""
    description: str = ""
    license: str = ""
    authors: list[str] = []


class LayerEntry(_KitModel):
    """An entry that becomes one layer; kit stores the layer's digests on it in the config."""

    yaml_excluded: ClassVar[frozenset[str]] = frozenset({"digest", "diffId"})
    digest: str = ""
    diff_id: str = Field("", alias="diffId")


class ModelPart(LayerEntry):
    go_name: ClassVar[str] = "ModelPart"
    name: str = ""
    path: str = ""
    license: str = ""
    type: str = ""


class Model(LayerEntry):
    go_name: ClassVar[str] = "Model"
    name: str = ""
    path: str = ""
    license: str = ""
    framework: str = ""
    format: str = ""
    version: str = ""
    description: str = ""
    parts: list[ModelPart] = []
    parameters: Any = None


class Code(LayerEntry):
    go_name: ClassVar[str] = "Code"
    path: str = ""
    description: str = ""
    license: str = ""


class DataSet(LayerEntry):
    go_name: ClassVar[str] = "DataSet"
    name: str = ""
    path: str = ""
    description: str = ""
    license: str = ""
    parameters: Any = None


class Docs(LayerEntry):
    go_name: ClassVar[str] = "Docs"
    always_emit: ClassVar[frozenset[str]] = frozenset({"path"})
    path: str = ""
    description: str = ""


class Prompt(LayerEntry):
    go_name: ClassVar[str] = "Prompt"
    name: str = ""
    path: str = ""
    description: str = ""


class McpServer(LayerEntry):
    go_name: ClassVar[str] = "McpServer"
    name: str = ""
    path: str = ""
    description: str = ""


@dataclass(frozen=True)
class Entry:
    """One layer-backed Kitfile entry in kit's layer order, with the media-type base it packs as."""

    kind: str  # "model", "modelpart", "code", "dataset", "docs", "prompt", "mcpserver"
    base: str  # the <base> of its layer media type
    name: str
    path: str
    item: LayerEntry


class Kitfile(_KitModel):
    """A whole Kitfile; ``package`` is always present, like kit's non-pointer struct."""

    go_name: ClassVar[str] = "KitFile"
    always_emit: ClassVar[frozenset[str]] = frozenset({"manifestVersion", "package"})
    manifest_version: str = Field("", alias="manifestVersion")
    package: Package = Field(default_factory=Package)
    model: Model | None = None
    code: list[Code] = []
    datasets: list[DataSet] = []
    docs: list[Docs] = []
    prompts: list[Prompt] = []
    mcp_servers: list[McpServer] = Field([], alias="mcpServers")

    def entries(self) -> Iterator[Entry]:
        """Every layer-backed entry in kit's manifest layer order (a ModelKit reference is no layer)."""
        model = self.model
        if model is not None:
            if model.path and not is_modelkit_reference(model.path):
                yield Entry("model", mediatypes.BASE_MODEL, model.name, model.path, model)
            for part in model.parts:
                yield Entry("modelpart", mediatypes.BASE_MODELPART, part.name, part.path, part)
        for code in self.code:
            yield Entry("code", mediatypes.BASE_CODE, "", code.path, code)
        for dataset in self.datasets:
            yield Entry("dataset", mediatypes.BASE_DATASET, dataset.name, dataset.path, dataset)
        for doc in self.docs:
            yield Entry("docs", mediatypes.BASE_DOCS, "", doc.path, doc)
        for prompt in self.prompts:
            yield Entry("prompt", mediatypes.BASE_CODE, prompt.name, prompt.path, prompt)
        for server in self.mcp_servers:
            yield Entry("mcpserver", mediatypes.BASE_MCPB, server.name, server.path, server)

    def to_config_json(self) -> bytes:
        """The config blob exactly as kit writes it (``json.Marshal(KitFile)``)."""
        try:
            return _gojson.go_marshal(self.go_fields())
        except ValueError as exc:
            raise KitfileError(f"the Kitfile cannot be written as JSON: {exc}") from exc

    @classmethod
    def from_config_json(cls, data: bytes) -> Kitfile:
        """Read a config blob; like Go's ``json.Unmarshal`` it ignores keys it does not know."""
        try:
            return cls.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            raise KitfileError(f"the ModelKit config is not a valid Kitfile: {exc}") from exc

    def validate_kit_rules(self) -> None:
        """kit's Kitfile validation: relative, distinct paths and well-formed part types."""
        problems: list[str] = []
        seen: dict[str, str] = {}
        for label, path in self._labelled_paths():
            if posixpath.isabs(path) or Path(path).is_absolute():
                problems.append(f"{label}: absolute paths are not supported in a Kitfile ({path})")
            clean = posixpath.normpath(path) if path else "."
            if clean in seen:
                problems.append(f"{seen[clean]} and {label} use the same path {clean}")
            else:
                seen[clean] = label
        if self.model is not None:
            for part in self.model.parts:
                if part.type and not _PART_TYPE.match(part.type):
                    problems.append(
                        f"modelpart {part.name or part.path} has invalid type "
                        "(must be alphanumeric with dots, dashes, and underscores)"
                    )
                elif len(part.type) > 64:
                    problems.append(f"modelpart {part.name or part.path} type is too long")
        if problems:
            raise KitfileError("invalid Kitfile: " + "; ".join(problems))

    def _labelled_paths(self) -> Iterator[tuple[str, str]]:
        if self.model is not None and not is_modelkit_reference(self.model.path):
            yield f"model {self.model.name}".rstrip(), self.model.path
        for entry in self.entries():
            if entry.kind != "model":
                yield f"{entry.kind} {entry.name or entry.path}", entry.path


def is_modelkit_reference(path: str) -> bool:
    """kit treats a ``model.path`` that parses as a reference (has ``:`` or ``@``) as a parent kit."""
    if ":" not in path and "@" not in path:
        return False
    try:
        parse_reference(path)
    except ReferenceError_:
        return False
    return True


def parse_kitfile(text: str, *, validate: bool = True) -> Kitfile:
    """Decode Kitfile YAML text strictly and (unless ``validate`` is false) apply kit's rules."""
    # Imported here: ruamel.yaml costs ~25 ms to import, and a pull reads the Kitfile from JSON only.
    from devserver.modelkit._yaml import StrictDecoder

    kitfile = StrictDecoder().decode(text, Kitfile)
    assert isinstance(kitfile, Kitfile)
    if validate:
        kitfile.validate_kit_rules()
    return kitfile


def load_with(path: Path, parse: Callable[[str], T]) -> T:
    """Read the Kitfile at ``path`` and ``parse`` its text; every error names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KitfileError(f"cannot read Kitfile {path}: {exc.strerror or exc}") from exc
    try:
        return parse(text)
    except KitfileError as exc:
        raise KitfileError(f"{path}: {exc.message}", hint=exc.hint) from exc


def load_kitfile(path: Path) -> Kitfile:
    """Read, decode and validate the Kitfile at ``path``."""
    return load_with(path, parse_kitfile)


def find_kitfile(directory: Path) -> Path:
    """The Kitfile in ``directory`` under kit's default names, in kit's order."""
    for name in KITFILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KitfileError(f"no Kitfile found in {directory} (looked for {', '.join(KITFILE_NAMES)})")
