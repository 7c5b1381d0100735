"""The Anthropic Messages format: its stop reasons both ways, and its in-band `error` event."""

from __future__ import annotations

from hotspare.core.errors import HotspareError
from hotspare.core.types import ApiFormat, FinishReason
from hotspare.formats.errors import error_reply
from hotspare.formats.sse import encode_event

# Every stop reason Anthropic documents, as the core reason; an unknown one is a failure (the answer
# may have been cut: it is taken over or ends with an error event, never reported as end_turn).
STOP_REASONS = {
    "end_turn": FinishReason.END_TURN,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
    "pause_turn": FinishReason.PAUSED,
}
STOP_NAMES = {
    FinishReason.END_TURN: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.PAUSED: "pause_turn",
}


def stop_reason(reason: FinishReason) -> str:
    return STOP_NAMES[reason]


def error_event(error: HotspareError) -> bytes:
    """The `error` event that ends a stream which broke off after it began (what the Anthropic SDKs
    raise from); its type is formats/errors.py's for `error`."""
    return encode_event(error_reply(error, ApiFormat.ANTHROPIC_MESSAGES).body, event="error")
