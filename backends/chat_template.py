"""Render chat messages into a prompt with the model's own Jinja chat template.

The environment matches what Hugging Face ``apply_chat_template`` and llama-cpp-python's
``Jinja2ChatFormatter`` provide (sandboxed, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, the
``{% generation %}`` tag, a non-ASCII-escaping ``tojson``, ``raise_exception``, ``strftime_now``), so
the same messages give byte-for-byte the prompt those libraries give. That equality is what makes
kit-dev's greedy output equal to in-process llama-cpp-python's. The template is compiled once, at
load, so a template that does not parse fails the load instead of the first request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from devserver.errors import BackendError, InvalidRequest


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for Hugging Face's ``{% generation %}`` tag (marks assistant text for training)."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares this as a class attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class TemplateError(InvalidRequest):
    """The template refused these messages (``raise_exception`` in the template, or a render error)."""

    code = "chat_template_error"


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message, param="messages")


class ChatTemplate:
    """A compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise BackendError(f"the chat template does not parse: {exc.message} (line {exc.lineno})") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.has_system_slot = self._probe_system_slot()
        self.needs_alternation = self._probe_alternation()
        self.renders_tools = "tools" in source
        self.renders_tool_calls = "tool_calls" in source

    def _probe_system_slot(self) -> bool:
        """Whether a system message reaches the prompt: templates without a slot either refuse it
        (``raise_exception``) or drop it silently; both need it folded into the first user turn."""
        marker = "\x1fkitdev-system\x1f"
        try:
            prompt = self.render([{"role": "system", "content": marker}, {"role": "user", "content": "hi"}])
        except InvalidRequest:
            return False
        return marker in prompt

    def _probe_alternation(self) -> bool:
        """Whether the template refuses two user turns in a row (Mistral- and Gemma-style templates)."""
        try:
            self.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        except InvalidRequest:
            return True
        return False

    @classmethod
    def for_backend(cls, source: str, special_tokens: Mapping[str, str]) -> ChatTemplate:
        return cls(
            source,
            bos_token=special_tokens.get("bos_token", ""),
            eos_token=special_tokens.get("eos_token", ""),
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt for ``messages``; a template error is the client's (400), never a 500."""
        variables: dict[str, Any] = {
            "tools": None,
            "tool_choice": None,
            "functions": None,
            "function_call": None,
            **kwargs,
        }
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise_exception,
                strftime_now=_strftime_now,
                **variables,
            )
        except TemplateError:
            raise
        # The template is foreign code run on client data: whatever it raises on these messages is
        # translated here, at the boundary, into the client's error.
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise TemplateError(f"the chat template failed on these messages: {exc}", param="messages") from exc
