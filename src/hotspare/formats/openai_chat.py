"""The OpenAI Chat Completions format: its finish reasons both ways, and its in-band error chunk."""

from __future__ import annotations

from hotspare.core.errors import HotspareError
from hotspare.core.types import ApiFormat, FinishReason
from hotspare.formats.errors import error_reply
from hotspare.formats.sse import encode_event

# Every finish reason OpenAI documents, as the core reason. Any other (vLLM's "abort", a server's
# own) is a failure: the answer may be cut, so it is taken over or ends with an error event.
FINISH_REASONS = {
    "stop": FinishReason.END_TURN,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}
FINISH_NAMES = {
    FinishReason.END_TURN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.PAUSED: "length",  # Anthropic's pause_turn: the turn is unfinished, as a cut-off one
}


def finish_reason(reason: FinishReason) -> str:
    return FINISH_NAMES[reason]


def error_event(error: HotspareError) -> bytes:
    """The `{"error": ...}` chunk that ends a stream which broke off after it began (the openai SDK
    raises APIError on it; no `[DONE]` follows); its shape is formats/errors.py's for `error`."""
    return encode_event(error_reply(error, ApiFormat.OPENAI_CHAT).body)
