"""A chat request's intake: what is checked before it is routed, and what only the local path checks.

Passthrough is transparent. A request that may go to an upstream speaking its own format is checked
only for what routing needs -- a JSON object (api/wire.py: malformed, too deep, unreadable numbers are
refused), a string `model`, a boolean `stream` -- and the access limits (ops/access.py). Everything else
is the provider's to judge: a field it added last week, a value hotspare would not serve.

The local path is liberal but honest. The body is validated as the API's request model (wrong types of
the fields hotspare reads are refused; unknown fields are ignored and reported by the caller), then
checked against what the local engine serves (`n`, stop sequences), then converted. When that fails and
an upstream could still take the request as it is, the request is routed with the failure as its
`local_refusal`: it goes only to those upstreams, never to the local model or another format, and the
client hears the reason if none of them answers. With no such upstream, the failure is the answer (400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from hotspare.api import anthropic, openai
from hotspare.api.wire import MediaPolicy, validate_body
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import ApiFormat, ChatRequest

B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Intake(Generic[B]):
    """A request taken in: `body` and a full `chat` when the local path can serve it; else `body` is
    None, `chat` carries only the routing fields (model, stream, request id) and `local_refusal` why."""

    chat: ChatRequest
    body: B | None
    local_refusal: str | None = None


def take_in(
    payload: dict[str, Any],
    request_id: str,
    convert: Callable[[dict[str, Any]], tuple[B, ChatRequest]],
    can_pass_through: Callable[[str], bool],
) -> Intake[B]:
    """`payload` checked for routing, then converted by `convert` (which raises InvalidRequest for what
    the local path refuses). Raises InvalidRequest when routing fields are wrong, or when conversion
    fails and `can_pass_through(model)` says no upstream takes the request as it is."""
    routing = routing_request(payload, request_id)
    try:
        body, chat = convert(payload)
    except InvalidRequest as exc:
        if not can_pass_through(routing.model):
            raise
        return Intake(routing, None, exc.message)
    return Intake(chat, body)


def routing_request(payload: dict[str, Any], request_id: str) -> ChatRequest:
    """The fields routing reads, as a ChatRequest with no messages. Raises InvalidRequest (in the
    words pydantic would use for the same fault, as the local path does)."""
    model = payload.get("model")
    if not isinstance(model, str):
        problem = "field required" if "model" not in payload else "Input should be a valid string"
        raise InvalidRequest(f"model: {problem}", "model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean", "stream")
    return ChatRequest(model=model, messages=(), stream=bool(stream), request_id=request_id)


Converter = Callable[[dict[str, Any]], tuple[Any, ChatRequest]]


def converter(
    api: ApiFormat,
    request_id: str,
    media: MediaPolicy,
    note_unknown: Callable[[ApiFormat, BaseModel], None] | None = None,
) -> Converter:
    """The local path's conversion of an `api` request body: validated (unknown fields handed to
    `note_unknown`), checked against the local engine's caps, converted. Raises InvalidRequest."""
    if api is ApiFormat.ANTHROPIC_MESSAGES:
        model: type[BaseModel] = anthropic.MessagesRequest
    elif api is ApiFormat.OPENAI_CHAT:
        model = openai.ChatCompletionRequest
    else:
        raise ValueError(f"no chat converter for {api}")

    def convert(payload: dict[str, Any]) -> tuple[Any, ChatRequest]:
        body = validate_body(payload, model)
        if note_unknown is not None:
            note_unknown(api, body)
        if isinstance(body, anthropic.MessagesRequest):
            anthropic.check_local_limits(body)
            return body, anthropic.to_chat_request(body, request_id, media)
        assert isinstance(body, openai.ChatCompletionRequest)
        openai.check_local_limits(body)
        return body, openai.to_chat_request(body, request_id, media)

    return convert
