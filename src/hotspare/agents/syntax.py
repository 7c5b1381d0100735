"""How the local model writes tool calls: the Hermes / Qwen convention, one JSON object per call.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The grammar (grammar.py) forces exactly this shape, the parser (calls.py) reads it back, and the
fallback prompt (prompt.py) teaches it; so the three never disagree.
"""

from __future__ import annotations

import json

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESULT_OPEN = "<tool_response>"
RESULT_CLOSE = "</tool_response>"


def format_call(name: str, arguments: str) -> str:
    """A call as the model would have written it (for tool calls in the history)."""
    try:
        args: object = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        args = arguments  # kept verbatim: the history is the client's, not ours to fix
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def format_result(content: str, is_error: bool) -> str:
    text = f"Error: {content}" if is_error else content
    return f"{RESULT_OPEN}\n{text}\n{RESULT_CLOSE}"
