"""Tool calling: the wire types, the JSON schema that forces a call, and turning generated text into calls.

Three ways a call comes out of a model:

* ``tool_choice`` names a function: decoding is constrained to that function's ``parameters``
  schema, so every generated character is argument text and streams as an argument fragment.
* ``tool_choice: "required"``: decoding is constrained to ``{"name": <one of the tools>,
  "arguments": <its parameters>}``; the object is parsed when complete.
* ``tool_choice: "auto"``: the model writes free text in its template's tool syntax, Hermes-style
  ``<tool_call>{"name": …, "arguments": …}</tool_call>`` (ChatML templates); text outside the tags
  streams as content, each tagged block becomes a call when its closing tag arrives.

An ``Extractor`` takes a choice's text pieces and yields ``Content`` and ``CallDelta`` items, the
first delta of a call carrying its id and name, later ones only argument fragments — exactly the
shape OpenAI streams. Non-streamed responses are the same items joined.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


# --- constraint ------------------------------------------------------------------------------------


def _parameters(tool: ChatCompletionTool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object"}


def call_schema(tools: list[ChatCompletionTool], named: str | None) -> dict[str, Any]:
    """The JSON schema a constrained decode follows: the named tool's arguments, or one whole call."""
    if named is not None:
        return next(_parameters(t) for t in tools if t.function.name == named)
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def hermes_system_prompt(tools: list[ChatCompletionTool]) -> str:
    """Hermes' tool instructions, for templates that do not render ``tools`` themselves."""
    listed = "\n".join(json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False) for t in tools)
    return (
        "You are a function calling AI model. You may call one or more functions to assist with the user "
        f"query. Here are the available tools: <tools>\n{listed}\n</tools>\nFor each function call return a "
        f"JSON object with the function name and arguments within {OPEN}{CLOSE} tags:\n{OPEN}\n"
        f'{{"name": <function-name>, "arguments": <args-json-object>}}\n{CLOSE}'
    )


def hermes_text(calls: list[ToolCall]) -> str:
    """An assistant turn's calls written back in Hermes syntax (history for templates without tools)."""
    blocks = []
    for call in calls:
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = call.function.arguments
        payload = json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)
        blocks.append(f"{OPEN}\n{payload}\n{CLOSE}")
    return "\n".join(blocks)


# --- extraction ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallDelta:
    index: int
    arguments: str
    id: str | None = None  # set on a call's first delta only, with its name
    name: str | None = None


Item = Content | CallDelta


class Extractor:
    """Free text passes through as content (no tools, or ``tool_choice: "none"``)."""

    def __init__(self) -> None:
        self.calls = 0

    def feed(self, text: str) -> Iterator[Item]:
        if text:
            yield Content(text)

    def finish(self) -> Iterator[Item]:
        yield from ()

    def _call(self, name: str, arguments: str) -> Iterator[Item]:
        index, self.calls = self.calls, self.calls + 1
        yield CallDelta(index, arguments, id=f"call_{uuid.uuid4().hex[:24]}", name=name)


class NamedExtractor(Extractor):
    """Every character is argument text of the one named call."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def feed(self, text: str) -> Iterator[Item]:
        if self.calls == 0:
            yield from self._call(self._name, text)
        elif text:
            yield CallDelta(0, text)

    def finish(self) -> Iterator[Item]:
        if self.calls == 0:
            yield from self._call(self._name, "{}")


class RequiredExtractor(Extractor):
    """The text is one ``{"name", "arguments"}`` object; it becomes a call once complete."""

    def __init__(self) -> None:
        super().__init__()
        self._text = ""

    def feed(self, text: str) -> Iterator[Item]:
        self._text += text
        yield from ()

    def finish(self) -> Iterator[Item]:
        parsed = _parse_call(self._text)
        if parsed is None:
            if self._text:
                yield Content(self._text)  # cut off (max_tokens): show what there is rather than lose it
            return
        yield from self._call(*parsed)


class HermesExtractor(Extractor):
    """Content until ``<tool_call>``; each ``<tool_call>…</tool_call>`` block becomes a call.

    Text that could still grow into the open tag is held back, so no client ever sees half a tag;
    a block that does not parse as a call is given back as content, tags and all.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""  # outside a block: text held back because it may start the open tag
        self._block: str | None = None  # inside a block: the text after its open tag

    def feed(self, text: str) -> Iterator[Item]:
        while text:
            if self._block is None:
                buffer, self._pending = self._pending + text, ""
                start = buffer.find(OPEN)
                if start == -1:
                    keep = _partial_suffix(buffer, OPEN)
                    self._pending = buffer[len(buffer) - keep :]
                    if len(buffer) > keep:
                        yield Content(buffer[: len(buffer) - keep])
                    return
                if start:
                    yield Content(buffer[:start])
                self._block, text = "", buffer[start + len(OPEN) :]
                continue
            self._block += text
            end = self._block.find(CLOSE)
            if end == -1:
                return
            block, text = self._block[:end], self._block[end + len(CLOSE) :]
            self._block = None
            yield from self._emit(block)

    def finish(self) -> Iterator[Item]:
        if self._pending:
            yield Content(self._pending)
            self._pending = ""
        if self._block is not None:
            block, self._block = self._block, None
            yield from self._emit(block)

    def _emit(self, block: str) -> Iterator[Item]:
        parsed = _parse_call(block)
        if parsed is None:
            yield Content(f"{OPEN}{block}{CLOSE}")
        else:
            yield from self._call(*parsed)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def _parse_call(text: str) -> tuple[str, str] | None:
    """``{"name": str, "arguments": object}`` → (name, arguments as JSON text); None if it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return value["name"], arguments
    return value["name"], json.dumps(arguments, ensure_ascii=False)
