"""OpenAI chat messages → the message list a model's own chat template can render.

Templates are foreign code with their own assumptions, probed once at load (``ChatTemplate``): some
have no system slot, some refuse two turns of one role in a row, most know nothing of tools. Instead
of failing such requests, the messages are reshaped the way the model was trained to read them:
``developer`` is ``system``; a system message for a template without a slot is folded into the
first user turn; consecutive turns of one role are joined where the template insists on
alternation; tool calls and tool results are written in Hermes syntax for templates that do not
render them, and the Hermes tool instructions are added for ``tool_choice: "auto"``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

from backends.chat_template import ChatTemplate
from devserver.errors import InvalidRequest
from devserver.server.protocol import ChatCompletionRequest, ChatMessage
from devserver.server.tools import (
    OPEN,
    Extractor,
    HermesExtractor,
    NamedExtractor,
    NamedToolChoice,
    RequiredExtractor,
    call_schema,
    hermes_system_prompt,
    hermes_text,
)

ToolMode = Literal["none", "auto", "required", "named"]


def tool_mode(request: ChatCompletionRequest) -> ToolMode:
    """``required`` with a single tool is that tool named: a smaller grammar, arguments streamed live."""
    if not request.calls_tools:
        return "none"
    if isinstance(request.tool_choice, NamedToolChoice):
        return "named"
    if request.tool_choice == "required":
        return "named" if len(request.tools or ()) == 1 else "required"
    return "auto"


def _named(request: ChatCompletionRequest) -> str:
    if isinstance(request.tool_choice, NamedToolChoice):
        return request.tool_choice.function.name
    return (request.tools or [])[0].function.name


def check_tool_syntax(request: ChatCompletionRequest, template: ChatTemplate) -> None:
    """``auto`` needs a tool syntax we can parse: Hermes, ours or the template's own."""
    if tool_mode(request) == "auto" and template.renders_tools and OPEN not in template.source:
        raise InvalidRequest(
            "tool_choice 'auto' needs a chat template with Hermes-style <tool_call> syntax; this model's "
            "template uses another one (use tool_choice 'required' or a named function)",
            param="tool_choice",
        )


def constraint(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema decoding must follow: a forced tool call, ``response_format``, or none."""
    mode = tool_mode(request)
    if mode in ("named", "required"):
        return call_schema(request.tools or [], _named(request) if mode == "named" else None)
    return request.response_schema()


def extractor(request: ChatCompletionRequest) -> Extractor:
    """A fresh parser of one choice's text into content and tool calls."""
    mode = tool_mode(request)
    if mode == "named":
        return NamedExtractor(_named(request))
    if mode == "required":
        return RequiredExtractor()
    return HermesExtractor() if mode == "auto" else Extractor()


def template_messages(request: ChatCompletionRequest, template: ChatTemplate) -> list[dict[str, Any]]:
    """The request's messages as ``template`` can render them (see the module docstring)."""
    messages = [_message(m, template) for m in request.messages]
    if tool_mode(request) == "auto" and not template.renders_tools:
        preamble = hermes_system_prompt(request.tools or [])
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{preamble}\n\n{messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": preamble})
    if not template.has_system_slot:
        messages = _fold_system(messages)
    if template.needs_alternation:
        messages = _join_runs(messages)
    return messages


def template_tools(request: ChatCompletionRequest, template: ChatTemplate) -> list[dict[str, Any]] | None:
    """The ``tools`` variable for templates that render tools themselves."""
    if not template.renders_tools or tool_mode(request) == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in request.tools or []]


def _message(message: ChatMessage, template: ChatTemplate) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": message.text}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        if template.renders_tool_calls:
            out["tool_calls"] = [_template_call(c.model_dump()) for c in message.tool_calls]
        else:
            out["content"] = "\n".join(p for p in (message.text, hermes_text(message.tool_calls)) if p)
    if role == "tool":
        if template.renders_tools:
            if message.tool_call_id is not None:
                out["tool_call_id"] = message.tool_call_id
        else:
            out = {"role": "user", "content": f"<tool_response>\n{message.text}\n</tool_response>"}
    return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """Templates (Hugging Face convention) expect ``arguments`` as an object, not JSON text."""
    function = dict(call["function"])
    with contextlib.suppress(ValueError):
        function["arguments"] = json.loads(function["arguments"])
    return {**call, "function": function}


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    rest = [m for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def _join_runs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    joined: list[dict[str, Any]] = []
    for message in messages:
        if joined and joined[-1]["role"] == message["role"] and "tool_calls" not in message:
            joined[-1] = {**joined[-1], "content": f"{joined[-1]['content']}\n\n{message['content']}"}
        else:
            joined.append(dict(message))
    return joined
