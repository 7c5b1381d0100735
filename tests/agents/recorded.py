"""Recorded agent requests, as the engine sees them (core types), for tests and scripts/measure_noise.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hotspare.core.types import ChatRequest, Message, Role, SamplingParams, ToolSpec

CLAUDE_CODE_TURN_2 = Path(__file__).parent / "data" / "claude_code_turn2.json"
"""Claude Code 2.1.332's second `-p` turn (`--continue`) as it reached hotspare: [user, system,
assistant, user], 12 tools, recorded by scripts/bench_agent_outage.py --dump."""


def claude_code_turns() -> tuple[ChatRequest, ChatRequest]:
    """(turn 1 with the upstream's answer, as the router hands it to the warm-up; turn 2)."""
    body = json.loads(CLAUDE_CODE_TURN_2.read_text())

    def text(content: object) -> str:
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)  # type: ignore[attr-defined]

    messages = [Message(Role.SYSTEM, "\n".join(b["text"] for b in body["system"]))]
    messages += [Message(Role(m["role"]), text(m["content"])) for m in body["messages"]]
    tools = tuple(ToolSpec(t["name"], t.get("description", ""), t["input_schema"]) for t in body["tools"])
    turn2 = ChatRequest(
        body["model"], tuple(messages), SamplingParams(max_tokens=body["max_tokens"]), tools=tools
    )
    return dataclasses.replace(turn2, messages=turn2.messages[:-1]), turn2
