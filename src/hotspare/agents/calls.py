"""Reading the model's output stream back as text and tool calls (the syntax.py form).

`ToolCallParser` is fed the answer's text as it is generated and returns core events: `TextDelta`
for text, and per call one `ToolCallStart` (once its name is known) then `ToolCallDelta`s with the
arguments as they are generated. Text that could be the start of `<tool_call>` is held back until it
cannot be. Whitespace between and after calls is dropped.

A call cut short (max_tokens) keeps what was generated: its start and partial arguments, as the
providers do. Output that starts like a call but is not one is given back as text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from enum import Enum, auto

from hotspare.agents.syntax import CALL_CLOSE, CALL_OPEN
from hotspare.core.types import StreamEvent, TextDelta, ToolCallDelta, ToolCallStart

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)', re.DOTALL)
_MAX_HEAD_CHARS = 512  # a call's head longer than this is not a call


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class _State(Enum):
    TEXT = auto()
    HEAD = auto()  # after <tool_call>, before the arguments
    ARGUMENTS = auto()
    TAIL = auto()  # after the arguments, up to </tool_call>


class ToolCallParser:
    """See the module docstring. One per answer; `push` each piece of text, then `close`."""

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        self._new_id = new_id
        self._state = _State.TEXT
        self._buffer = ""
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._after_call = False
        self.num_calls = 0

    def push(self, text: str) -> list[StreamEvent]:
        self._buffer += text
        events: list[StreamEvent] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            {
                _State.TEXT: self._text,
                _State.HEAD: self._head,
                _State.ARGUMENTS: self._arguments,
                _State.TAIL: self._tail,
            }[self._state](events)
            if (self._state, len(self._buffer)) == before:
                break  # waiting for more text
        return events

    def close(self) -> list[StreamEvent]:
        """The answer ended: release held-back text. A call left open stays as far as it got."""
        held, self._buffer = self._buffer, ""
        events: list[StreamEvent] = []
        if self._state is _State.TEXT:
            self._emit_text(held, events)
        elif self._state is _State.HEAD:
            events.append(TextDelta(CALL_OPEN + held))
        return events

    def _text(self, events: list[StreamEvent]) -> None:
        at = self._buffer.find(CALL_OPEN)
        if at >= 0:
            self._emit_text(self._buffer[:at], events)
            self._buffer = self._buffer[at + len(CALL_OPEN) :]
            self._state = _State.HEAD
            return
        keep = _partial_suffix(self._buffer, CALL_OPEN)
        self._emit_text(self._buffer[: len(self._buffer) - keep], events)
        self._buffer = self._buffer[len(self._buffer) - keep :]

    def _emit_text(self, text: str, events: list[StreamEvent]) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            events.append(TextDelta(text))

    def _head(self, events: list[StreamEvent]) -> None:
        match = _HEAD.match(self._buffer)
        if match is None:
            if len(self._buffer) > _MAX_HEAD_CHARS or not _could_be_head(self._buffer):
                events.append(TextDelta(CALL_OPEN + self._buffer))
                self._buffer, self._state = "", _State.TEXT
            return
        name = json.loads(f'"{match.group(1)}"')
        events.append(ToolCallStart(self.num_calls, self._new_id(), name))
        self.num_calls += 1
        self._buffer = self._buffer[match.end() :]
        self._depth, self._in_string, self._escaped = 0, False, False
        self._state = _State.ARGUMENTS

    def _arguments(self, events: list[StreamEvent]) -> None:
        end = self._scan(self._buffer)
        piece = self._buffer if end is None else self._buffer[:end]
        if piece:
            events.append(ToolCallDelta(self.num_calls - 1, piece))
        self._buffer = "" if end is None else self._buffer[end:]
        if end is not None:
            self._state = _State.TAIL

    def _scan(self, text: str) -> int | None:
        """Track JSON nesting through `text`; the index just past the arguments' end, or None."""
        for index, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return index + 1
        return None

    def _tail(self, events: list[StreamEvent]) -> None:
        at = self._buffer.find(CALL_CLOSE)
        if at >= 0:
            self._buffer = self._buffer[at + len(CALL_CLOSE) :]
            self._state, self._after_call = _State.TEXT, True


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _could_be_head(text: str) -> bool:
    """Whether `text` may still grow into a call's head (a JSON object opening with "name")."""
    stripped = text.lstrip()
    return not stripped or stripped[0] == "{"
