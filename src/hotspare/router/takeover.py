"""Mid-stream takeover: continue the answer a failed backend started, from the next backend.

The continuation is the same chat with the text already sent appended as a partial assistant turn;
the local engine (and Anthropic's prefill) continue such a turn instead of starting a new one. The
client sees one answer: its first part from the failed backend, the rest from the one that took over.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from hotspare.core.errors import HotspareError, UpstreamError
from hotspare.core.types import ChatRequest, Finish, Message, Role, StreamEvent, TextDelta, Usage
from hotspare.upstream.stream import StreamParser

log = logging.getLogger("hotspare.router")

NO_CONTINUATION = "the answer broke off mid-stream and no backend could continue it"


@dataclass(frozen=True, slots=True)
class Continuer:
    """A backend that may take over: `open` starts it on a continuation request."""

    name: str
    open: Callable[[ChatRequest], AsyncIterator[StreamEvent]]
    on_done: Callable[[bool | None], None] = lambda verdict: None  # True ok, False failed, None cancelled


def continuation_request(request: ChatRequest, sent_text: str, num_sent_tokens: int) -> ChatRequest:
    """`request` with `sent_text` as a trailing assistant turn and the rest of its token budget."""
    messages = list(request.messages)
    if messages and messages[-1].role is Role.ASSISTANT:  # the client's own prefill, now extended
        messages[-1] = Message(Role.ASSISTANT, messages[-1].content + sent_text)
    else:
        messages.append(Message(Role.ASSISTANT, sent_text))
    max_tokens = request.sampling.max_tokens
    if max_tokens is not None:
        max_tokens = max(1, max_tokens - num_sent_tokens)
    sampling = dataclasses.replace(request.sampling, max_tokens=max_tokens)
    return dataclasses.replace(request, messages=tuple(messages), sampling=sampling, stream=True)


async def continue_events(
    request: ChatRequest,
    sent_text: str,
    num_sent_tokens: int,
    continuers: Sequence[Continuer],
    error: HotspareError,
    takeovers: list[str] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Core events that finish an answer of which `sent_text` was delivered. The final Finish counts
    the delivered tokens too. Each continuer that delivers an event is appended to `takeovers`.
    Raises the last error if no continuer can finish it."""
    for continuer in continuers:
        log.warning("takeover by %s after %d chars (%s)", continuer.name, len(sent_text), error.message)
        continuation = continuation_request(request, sent_text, num_sent_tokens)
        events = continuer.open(continuation)
        verdict: bool | None = None
        try:
            async for event in events:
                if takeovers is not None and takeovers[-1:] != [continuer.name]:
                    takeovers.append(continuer.name)
                if isinstance(event, TextDelta):
                    sent_text += event.text
                    num_sent_tokens += 1
                    yield event
                elif not isinstance(event, Finish):
                    yield event  # a tool call (or a context notice) of the continuation
                else:
                    verdict = True
                    usage = Usage(event.usage.input_tokens, num_sent_tokens, event.usage.cached_tokens)
                    yield dataclasses.replace(event, usage=usage)
                    return
        except HotspareError as exc:
            verdict, error = False, exc
            continue
        finally:
            await _aclose(events)
            continuer.on_done(verdict)
    raise error


async def continue_passthrough(
    parser: StreamParser,
    request: ChatRequest,
    continuers: Sequence[Continuer],
    error: UpstreamError,
    takeovers: list[str] | None = None,
) -> AsyncIterator[bytes]:
    """The rest of a passthrough stream in its own vendor format, rendered by `parser`, ending with
    the vendor's terminating events -- or with its error event if no one can finish the answer."""
    stated = parser.stated_finish()
    if stated is not None:  # the upstream had said why it stopped: the text is complete, only close it
        yield parser.render_finish(dataclasses.replace(stated, usage=Usage(stated.usage.input_tokens, 0)))
        return
    if parser.has_other_content:  # a tool call or thinking block cannot be continued as text
        yield parser.render_error(error, NO_CONTINUATION)
        return
    num_delivered = parser.num_text_events
    try:
        async for event in continue_events(request, parser.text, num_delivered, continuers, error, takeovers):
            if isinstance(event, TextDelta):
                yield parser.render_delta(event.text)
            elif isinstance(event, Finish):
                new = Usage(event.usage.input_tokens, event.usage.output_tokens - num_delivered)
                yield parser.render_finish(Finish(event.reason, new, event.model, event.stop_sequence))
    except HotspareError as last:
        log.error("takeover failed: %s", last.message)
        yield parser.render_error(last if isinstance(last, UpstreamError) else error, NO_CONTINUATION)


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
