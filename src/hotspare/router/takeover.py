"""Mid-stream takeover: continue the answer a failed backend started, from the next backend.

The client sees one answer: its first part from the failed backend, the rest from the one that took
over. Backends differ in how (and whether) they can do that, so each continuer has a mode:

* PREFILL: the same chat with the text already sent appended as a partial assistant turn, which it
  continues. The local engine always can; Anthropic's older models could (the default for
  `kind = "anthropic"`), its current ones refuse with a 400 -- a refusal, not the client's fault and
  not the upstream's: the next continuer is tried.
* RESTART (the default for `kind = "openai"`): OpenAI and most compatible servers ignore a trailing
  assistant turn and answer from the start, so they are never sent one. They get the original request
  and their answer is checked against the text already sent: if it begins with exactly that text
  (a deterministic or cached answer, or failoverbench S08/S14), the rest of it is streamed; if it
  diverges, or ends first, nothing of it reaches the client and the next continuer is tried. A glued
  or restarted answer is never delivered.
* NONE: never takes over.

If no continuer can finish, the last real failure is raised (the API layer sends its generic error
event) -- never a continuer's own 4xx, which would read as the client's fault.

Bounds: an upstream continuation carries a max_tokens: the client's remaining budget, at most the
upstream's `max_continuation_tokens` (default 4096; an agent's 32k-64k budget, or an OpenAI request
with none, would otherwise run for minutes). If that bound ends it, its Finish says `length`: cut
answers are reported as cut. The local engine applies its own answer budget and repetition stop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from hotspare.core.errors import HotspareError, UpstreamError
from hotspare.core.types import ChatRequest, Finish, Message, Role, StreamEvent, TextDelta, Usage
from hotspare.upstream.stream import StreamParser

log = logging.getLogger("hotspare.router")

NO_CONTINUATION = "the answer broke off mid-stream and no backend could continue it"


class ContinuationMode(StrEnum):
    PREFILL = "prefill"
    RESTART = "restart"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Continuer:
    """A backend that may take over: `open` starts it on a continuation request. `max_new_tokens`
    bounds what it may add (None: the backend bounds itself, as the local engine does)."""

    name: str
    open: Callable[[ChatRequest], AsyncIterator[StreamEvent]]
    on_done: Callable[[bool | None], None] = lambda verdict: None  # True ok, False failed, None no verdict
    mode: ContinuationMode = ContinuationMode.PREFILL
    max_new_tokens: int | None = None


def continuation_request(
    request: ChatRequest, sent_text: str, num_sent_tokens: int, max_new_tokens: int | None = None
) -> ChatRequest:
    """`request` with `sent_text` as a trailing assistant turn and the rest of its token budget
    (at most `max_new_tokens` when given)."""
    messages = list(request.messages)
    if messages and messages[-1].role is Role.ASSISTANT:  # the client's own prefill, now extended
        messages[-1] = Message(Role.ASSISTANT, messages[-1].content + sent_text)
    else:
        messages.append(Message(Role.ASSISTANT, sent_text))
    max_tokens = request.sampling.max_tokens
    if max_tokens is not None:
        max_tokens = max(1, max_tokens - num_sent_tokens)
    if max_new_tokens is not None:
        max_tokens = min(max_tokens or max_new_tokens, max_new_tokens)
    sampling = dataclasses.replace(request.sampling, max_tokens=max_tokens)
    return dataclasses.replace(request, messages=tuple(messages), sampling=sampling, stream=True)


def restart_request(request: ChatRequest, num_sent_tokens: int, max_new_tokens: int | None) -> ChatRequest:
    """`request` again, streaming, with room for the text already sent plus at most `max_new_tokens`."""
    max_tokens = request.sampling.max_tokens
    if max_new_tokens is not None:
        bound = num_sent_tokens + max_new_tokens
        max_tokens = min(max_tokens or bound, bound)
    sampling = dataclasses.replace(request.sampling, max_tokens=max_tokens)
    return dataclasses.replace(request, sampling=sampling, stream=True)


async def _past_delivered(events: AsyncIterator[StreamEvent], sent_text: str) -> AsyncIterator[StreamEvent]:
    """A restarted answer without its first `sent_text` characters, which must match what the client
    already has; ends early (with nothing of the mismatch yielded) if it diverges or stops short."""
    seen = ""
    async for event in events:
        if len(seen) >= len(sent_text):
            yield event
            continue
        if not isinstance(event, TextDelta):
            log.warning("restarted answer ended or changed course within the %d chars sent", len(sent_text))
            return
        seen += event.text
        if not (sent_text.startswith(seen) or seen.startswith(sent_text)):
            log.warning("restarted answer diverges from the %d chars sent: not used", len(sent_text))
            return
        if len(seen) > len(sent_text):
            yield TextDelta(seen[len(sent_text) :])


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
        if continuer.mode is ContinuationMode.NONE:
            continue
        log.warning("takeover by %s after %d chars (%s)", continuer.name, len(sent_text), error.message)
        if continuer.mode is ContinuationMode.RESTART:
            opened = continuer.open(restart_request(request, num_sent_tokens, continuer.max_new_tokens))
            events = _past_delivered(opened, sent_text)
        else:
            opened = events = continuer.open(
                continuation_request(request, sent_text, num_sent_tokens, continuer.max_new_tokens)
            )
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
            verdict = True  # a restart that diverged: the upstream is fine, its answer is not ours
        except UpstreamError as exc:
            if exc.is_client_fault:  # a refusal to continue (Anthropic's prefill 400): not a failure
                log.warning("%s cannot continue this answer: %s", continuer.name, exc.message)
                continue
            verdict, error = False, exc
            continue
        except HotspareError as exc:
            verdict, error = False, exc
            continue
        finally:
            if events is not opened:
                await _aclose(events)
            await _aclose(opened)
            continuer.on_done(verdict)
    raise error


async def continue_passthrough(
    parser: StreamParser,
    request: ChatRequest,
    continuers: Sequence[Continuer],
    error: UpstreamError,
    takeovers: list[str] | None = None,
    errors: list[str] | None = None,
) -> AsyncIterator[bytes]:
    """The rest of a passthrough stream in its own vendor format, rendered by `parser`, ending with
    the vendor's terminating events -- or with its error event if no one can finish the answer (its
    message then appended to `errors`)."""
    stated = parser.stated_finish()
    if stated is not None:  # the upstream had said why it stopped: the text is complete, only close it
        yield parser.render_finish(dataclasses.replace(stated, usage=Usage(stated.usage.input_tokens, 0)))
        return
    if not parser.is_continuable:  # a tool call, a thinking block, n > 1 choices: not one text to continue
        yield _error_event(parser, error, errors)
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
        yield _error_event(parser, last if isinstance(last, UpstreamError) else error, errors)


def _error_event(parser: StreamParser, error: UpstreamError, errors: list[str] | None) -> bytes:
    if errors is not None:
        errors.append(error.message)
    return parser.render_error(error, NO_CONTINUATION)


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
