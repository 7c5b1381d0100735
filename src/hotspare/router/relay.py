"""Relaying an opened upstream answer to the client: passthrough bytes or core events, taken over
mid-stream by the next backend if it breaks, with the upstream's breaker verdict recorded when the
answer ends (ok, failed, or cancelled when the client left). `continuers_after` lists who may take over,
in chain order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import ChatBackend, ChatRequest, Finish, StreamEvent, TextDelta, ToolCallStart
from hotspare.router.member import Member
from hotspare.router.metrics import RouterMetrics
from hotspare.router.observe import Stage
from hotspare.router.race import Opened
from hotspare.router.replies import RawReply, single
from hotspare.router.takeover import ContinuationMode, Continuer, continue_events, continue_passthrough
from hotspare.upstream.base import ClientCall
from hotspare.upstream.stream import UpstreamStream


@dataclass(frozen=True, slots=True)
class Relay:
    """One upstream answer on its way to the client. `takeovers` gets the name of each backend that
    takes over, in order (it is the reply's own list). `on_failover` is told when the upstream
    breaks mid-stream; `on_answered` gets the whole answer's text when the upstream finished it."""

    member: Member
    call: ClientCall
    continuers: list[Continuer]
    takeovers: list[str]
    on_failover: Callable[[Member, str, Stage], None]
    on_answered: Callable[[ClientCall, str], None]

    async def passthrough(self, opened: Opened, errors: list[str] | None = None) -> AsyncIterator[bytes]:
        """The upstream's own bytes; after a break, the takeover rendered in the same vendor format
        (or its error event, noted in `errors`, see RawReply)."""
        stream = opened.stream
        assert stream is not None
        verdict: bool | None = None
        failure: FailureClass | None = None
        # Events that arrived together leave together (one write, not one each); nothing is held
        # back waiting for more.
        burst = list(opened.prelude)
        try:
            try:
                while True:
                    if burst and not stream.has_pending:
                        yield b"".join(burst)
                        burst.clear()
                    if (item := await stream.next_event()) is None:
                        break
                    burst.append(item[0].raw)
                verdict = True
                self.on_answered(self.call, stream.parser.text)
            except UpstreamError as exc:
                if burst:  # what came before the break was parsed as delivered: deliver it
                    yield b"".join(burst)
                verdict, failure = False, exc.failure
                self.on_failover(self.member, str(exc.failure), Stage.MID_STREAM)
                await stream.aclose()
                request = self.call.request
                async for chunk in continue_passthrough(
                    stream.parser, request, self.continuers, exc, self.takeovers, errors
                ):
                    yield chunk
        finally:
            self.member.record(verdict, failure)
            await stream.aclose()

    async def events(self, opened: Opened) -> AsyncIterator[StreamEvent]:
        """The upstream's answer as core events; after a break, the takeover's events (none once a
        tool call went out: then the break is raised, for the client's API error event)."""
        events = opened.events
        assert events is not None and opened.first is not None
        verdict: bool | None = None
        failure: FailureClass | None = None
        sent_text, num_sent, has_calls = "", 0, False
        try:
            event: StreamEvent | None = opened.first
            while event is not None:
                yield event
                if isinstance(event, TextDelta):
                    sent_text += event.text
                    num_sent += 1
                has_calls = has_calls or isinstance(event, ToolCallStart)
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    event = None
            verdict = True
            self.on_answered(self.call, sent_text)
        except UpstreamError as exc:
            verdict, failure = False, exc.failure
            if has_calls:  # a tool call cannot be continued as text: the client gets its error event
                raise
            self.on_failover(self.member, str(exc.failure), Stage.MID_STREAM)
            request = self.call.request
            async for event in continue_events(
                request, sent_text, num_sent, self.continuers, exc, self.takeovers
            ):
                yield event
        finally:
            self.member.record(verdict, failure)
            await events.aclose()  # type: ignore[attr-defined]


_STREAM_ONLY_HEADERS = frozenset({"content-type", "cache-control", "x-accel-buffering"})
"""Upstream headers that describe the event stream, not the answer assembled from it: the answer
says it is JSON, and may be cached like any other (an SSE response says no-cache so that proxies do
not hold it back). The rest (request ids, rate-limit headers) stay."""


async def buffered_reply(member: Member, stream: UpstreamStream) -> RawReply:
    """A non-streaming client's answer from an internal stream, as the vendor's JSON. Nothing
    reached the client yet, so a failure is an ordinary UpstreamError (retry or fail over)."""
    finish: Finish | None = None
    try:
        while (item := await stream.next_event()) is not None:
            finish = next((e for e in item[1] if isinstance(e, Finish)), finish)
    finally:
        await stream.aclose()
    if finish is None or stream.parser.has_other_content:
        raise member.upstream.error(FailureClass.MALFORMED, "the stream held more than a text answer")
    member.record(True)
    headers = tuple((k, v) for k, v in stream.headers if k.lower() not in _STREAM_ONLY_HEADERS)
    body = stream.parser.render_message(stream.parser.text, finish)
    return RawReply(200, (("content-type", "application/json"), *headers), single(body), member.upstream.name)


def continuers_after(
    rest: Sequence[Member], call: ClientCall, local: ChatBackend | None, metrics: RouterMetrics
) -> list[Continuer]:
    """Who may take over a broken answer, in chain order: the later upstreams that can continue
    it (their mode) and may be sent this client's request (its key), then the local model."""
    if call.local_refusal is not None:  # continuations are converted requests: none can serve it
        return []
    out: list[Continuer] = []
    for m in rest:
        mode = ContinuationMode(m.config.continuation_mode)
        if mode is ContinuationMode.NONE or not m.upstream.accepts(call):
            continue
        opener = _counted(metrics, m.upstream.name, m.opener(call))
        out.append(Continuer(m.upstream.name, opener, m.record, mode, m.config.max_continuation_tokens))
    if local is not None:
        out.append(Continuer(local.name, _counted(metrics, local.name, local.stream)))
    return out


def _counted(
    metrics: RouterMetrics, name: str, open_: Callable[[ChatRequest], AsyncIterator[StreamEvent]]
) -> Callable[[ChatRequest], AsyncIterator[StreamEvent]]:
    """`open_`, counted as a takeover served by `name` each time it is called."""

    def counted(request: ChatRequest) -> AsyncIterator[StreamEvent]:
        metrics.served(name, "takeover")
        return open_(request)

    return counted
