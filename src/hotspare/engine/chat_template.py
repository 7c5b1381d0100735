"""Rendering a chat into the model's prompt text with its own Jinja chat template (from the GGUF).

A trailing assistant message is continued, not closed: the prompt ends with the generation prompt
and that message's text, so the model picks up where it stopped (Anthropic's assistant prefill, and
the router's mid-stream takeover, which sends the text already streamed from a failed upstream).
Models without a template (base models) get a plain transcript format.
"""

from __future__ import annotations

import datetime
from typing import Any

import jinja2
import jinja2.sandbox

from hotspare.core.errors import InvalidRequest
from hotspare.core.types import Message, Role

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n"
    "{% elif m.role == 'assistant' %}Assistant: {{ m.content }}\n"
    "{% else %}Tool result: {{ m.content }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The prompt format of completion-only models: a plain transcript ending in "Assistant:"."""


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the conversation: {message}")


def _now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _now
        self.source = source or PLAIN_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: tuple[Message, ...], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt for `messages`, ready for generation (see the module docstring). `tools`
        (OpenAI-style function objects) go to templates that render tools themselves."""
        prefill = ""
        if messages and messages[-1].role is Role.ASSISTANT:
            prefill = messages[-1].content
            messages = messages[:-1]
        text = self._render(messages, add_generation_prompt=True, tools=tools)
        return text + prefill

    def _render(
        self,
        messages: tuple[Message, ...],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        extra = {"tools": tools} if tools else {}
        try:
            return self._template.render(
                messages=[self._as_dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template failed: {exc}") from exc

    @staticmethod
    def _as_dict(message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if message.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
        return out
