"""Tiny builders for router tests: client calls in either format, upstream configs, a fake local backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hotspare.config import Settings
from hotspare.core.errors import HotspareError
from hotspare.core.types import (
    ApiFormat,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    Usage,
)
from hotspare.engine.attention import AttentionChoice
from hotspare.router.config import RouterConfig
from hotspare.upstream.base import ClientCall
from hotspare.upstream.config import UpstreamConfig
from tests.fakes.local_backend import QuietLifecycle
from tests.fakes.upstreams import FakeUpstream

CLIENT_KEY = "sk-client-key-1"


def make_call(
    api_format: ApiFormat,
    *,
    stream: bool = True,
    model: str = "m",
    max_tokens: int = 16,
    include_usage: bool = True,
    key: str = CLIENT_KEY,
    content: str = "Say hello",
) -> ClientCall:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    }
    if api_format is ApiFormat.OPENAI_CHAT and stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    headers: tuple[tuple[str, str], ...]
    if api_format is ApiFormat.ANTHROPIC_MESSAGES:
        headers = (
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-api-key", key),
        )
    else:
        headers = (("content-type", "application/json"), ("authorization", f"Bearer {key}"))
    request = ChatRequest(
        model, (Message(Role.USER, content),), SamplingParams(max_tokens=max_tokens), stream=stream
    )
    return ClientCall(api_format, json.dumps(body).encode(), headers, request)


def upstream_config(fake: FakeUpstream, name: str | None = None, **overrides: Any) -> UpstreamConfig:
    timeouts = {"connect_s": 1.0, "first_token_s": 2.0, "idle_s": 1.0, "total_s": 10.0}
    timeouts.update(overrides.pop("timeouts", {}))
    return UpstreamConfig.model_validate(
        {
            "name": name or fake.kind,
            "kind": fake.kind,
            "base_url": fake.url,
            "timeouts": timeouts,
            **overrides,
        }
    )


class FakeLocal:
    """A ChatBackend answering every request with `text`, one word per delta; records its requests.

    `fail` makes it raise before the first event; `first_delay_s` delays its first event."""

    name = "local"

    def __init__(self, text: str = "local answer here", model: str = "local-model") -> None:
        self.text = text
        self.model = model
        self.requests: list[ChatRequest] = []
        self.fail: HotspareError | None = None
        self.started = 0
        self.closed = 0
        self.delta_delay_s = 0.0  # a pause before each delta after the first (a slow local model)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        self.started += 1
        try:
            if self.fail is not None:
                raise self.fail
            words = self.text.split(" ")
            for i, word in enumerate(words):
                if i and self.delta_delay_s:
                    await asyncio.sleep(self.delta_delay_s)
                yield TextDelta(word if i == 0 else " " + word)
            yield Finish(FinishReason.END_TURN, Usage(7, len(words)), self.model)
        finally:
            self.closed += 1

    async def count_tokens(self, request: ChatRequest) -> int:
        return 7


def router_config(data: dict[str, Any]) -> RouterConfig:
    """The router's part of settings written as `data` (the TOML shape, validated as a file is)."""
    return Settings.model_validate(data).router_config()


class FakeLocalBackend(QuietLifecycle, FakeLocal):
    """`FakeLocal` as a whole `LocalBackend` (engine/protocol.py): ready, never died, no counters;
    its `warm` does nothing (subclasses record what it is handed)."""

    can_warm = True
    is_ready = True
    failure: str | None = None
    num_restarts = 0
    num_poison_requests = 0
    attention: AttentionChoice | None = None
    weights_note = ""

    @property
    def model_name(self) -> str:
        return self.model
