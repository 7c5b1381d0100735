"""Core answers -> OpenAI Chat Completions: a whole `chat.completion` (one choice per answer), or
`chat.completion.chunk`s over SSE ending in `data: [DONE]`; tool calls as `message.tool_calls` /
`delta.tool_calls` with `finish_reason: tool_calls`. The request side is api/openai.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from hotspare.api.answer import Answer, AnswerEvent, paced_answer
from hotspare.api.errors import client_error
from hotspare.api.sse import Heartbeat, close_stream
from hotspare.core.types import Finish, FinishReason, StreamEvent, TextDelta, ToolCallStart, Usage
from hotspare.formats.openai_chat import error_event, finish_reason
from hotspare.formats.sse import encode_comment, encode_event


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_body(answers: list[Answer], completion_id: str, created: int) -> dict[str, Any]:
    """A whole `chat.completion` for answers that have finished (one choice each; usage summed)."""
    usage = Usage(
        answers[0].finish.usage.input_tokens,
        sum(a.finish.usage.output_tokens for a in answers),
        answers[0].finish.usage.cached_tokens,
    )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": answers[0].finish.model,
        "choices": [_choice(index, answer) for index, answer in enumerate(answers)],
        "usage": usage_body(usage),
        "system_fingerprint": None,
    }


def _choice(index: int, answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool_calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.tool_calls
        ]
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(answer.finish.reason),
    }


class ChunkStream:
    """Renders one answer's events as `chat.completion.chunk` SSE events.

    `model` names the model in the chunks before the answer finishes; the closing chunks name the one
    the `Finish` reports.
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage_body(usage) if usage is not None else None
        return encode_event(body)

    def delta(self, delta: dict[str, Any], reason: FinishReason | None = None, choice: int = 0) -> bytes:
        finish = finish_reason(reason) if reason is not None else None
        return self.chunk([{"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def event(self, event: AnswerEvent, choice: int = 0) -> bytes:
        """The chunk of one answer event: text content, or a tool call's start or argument piece."""
        if isinstance(event, TextDelta):
            return self.delta({"content": event.text}, choice=choice)
        call: dict[str, Any] = {"index": event.index}
        if isinstance(event, ToolCallStart):
            call |= {"id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
        else:
            call["function"] = {"arguments": event.arguments}
        return self.delta({"tool_calls": [call]}, choice=choice)

    def finish(self, finish: Finish) -> list[bytes]:
        return [*self.finish_choice(finish), *self.close(finish.usage)]

    def finish_choice(self, finish: Finish, choice: int = 0) -> list[bytes]:
        self.model = finish.model
        return [self.delta({}, finish.reason, choice)]

    def close(self, usage: Usage) -> list[bytes]:
        """The usage chunk (if asked for) and `[DONE]`, after every choice has finished."""
        closing = [self.chunk([], usage)] if self.include_usage else []
        return [*closing, encode_event("[DONE]")]


async def stream_chunks(
    events: AsyncIterator[StreamEvent],
    chunks: ChunkStream,
    heartbeat_s: float,
    more_choices: Sequence[AsyncIterator[StreamEvent]] = (),
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer: choice 0 from `events` and (n > 1) choice i from
    `more_choices[i - 1]`, their chunks interleaved as they come, each with its `index` (as OpenAI
    streams n choices; the engine generates them side by side). The usage chunk counts the prompt
    once (choice 0's) and the output of every choice. An error after the stream began becomes an
    in-band `{"error": ...}` event (what the OpenAI SDKs raise from). Closing this closes them all."""
    choices = [events, *more_choices]
    finishes: dict[int, Finish] = {}
    try:
        streams = [_choice_chunks(c, chunks, heartbeat_s, i) for i, c in enumerate(choices)]
        async for choice, chunk in _interleaved(streams, heartbeat_s):
            if isinstance(chunk, Finish):
                finishes[choice] = chunk
            else:
                yield chunk
    except Exception as exc:  # the stream has begun: the error goes in-band, in the API's shape
        yield error_event(client_error(exc))
        return
    finally:
        for stream in choices:
            await close_stream(stream)  # idempotent: those read to the end are closed already
    assert len(finishes) == len(choices)  # paced_answer raises if a choice ends without its Finish
    output_tokens = sum(finish.usage.output_tokens for finish in finishes.values())
    for chunk in chunks.close(dataclasses.replace(finishes[0].usage, output_tokens=output_tokens)):
        yield chunk


async def _interleaved(
    streams: list[AsyncIterator[bytes | Finish]], heartbeat_s: float
) -> AsyncIterator[tuple[int, bytes | Finish]]:
    """Every item of `streams` with its stream's index, as they come (in index order when several
    are ready). Each stream sends its own keep-alives; only one is passed on per `heartbeat_s`.
    Closes every stream however it ends."""
    reads = {asyncio.ensure_future(anext(stream)): i for i, stream in enumerate(streams)}
    last_sent = -heartbeat_s
    try:
        while reads:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in sorted(done, key=reads.__getitem__):
                index = reads.pop(read)
                try:
                    item = read.result()
                except StopAsyncIteration:
                    continue
                reads[asyncio.ensure_future(anext(streams[index]))] = index
                now = time.monotonic()
                if item == KEEP_ALIVE and now - last_sent < heartbeat_s:
                    continue
                last_sent = now
                yield index, item
    finally:
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        for stream in streams:
            await close_stream(stream)


KEEP_ALIVE = encode_comment("keep-alive")


async def _choice_chunks(
    events: AsyncIterator[StreamEvent], chunks: ChunkStream, heartbeat_s: float, choice: int
) -> AsyncIterator[bytes | Finish]:
    """One choice's chunks, then its Finish (not rendered: the caller closes the stream)."""
    yield chunks.delta({"role": "assistant", "content": ""}, choice=choice)
    async with aclosing(paced_answer(events, heartbeat_s)) as paced:
        async for event in paced:
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, Finish):
                for chunk in chunks.finish_choice(event, choice):
                    yield chunk
                yield event
            else:
                yield chunks.event(event, choice)
