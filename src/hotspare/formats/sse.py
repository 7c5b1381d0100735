"""Server-sent event framing, as every client format uses it (the `event:` line is Anthropic's and the
Responses API's; OpenAI Chat Completions sends `data:` lines only)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def encode_event(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    """One SSE event: an optional `event:` line and one `data:` line of compact JSON (or raw text)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def encode_comment(text: str) -> bytes:
    """An SSE comment line: clients ignore it, connections see traffic."""
    return f": {text}\n\n".encode()
