"""OpenAI `n` > 1 on the real server and the real embedded model, through the official SDK (issue 17
point 1): the prompt is rendered and sent to the engine once for all n choices -- counted where an
operator sees it, /metrics -- every choice comes back complete with its index, streamed (interleaved)
and not, and a client that goes away leaves nothing running on the engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

USER: Any = [{"role": "user", "content": "Name a colour."}]
PREPARED = "hotspare_engine_prompts_prepared_total"
TOKENIZED = "hotspare_engine_prompts_total"


@pytest.fixture
def oai(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0) as client:
        yield client


def scrape(server: RunningServer) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def settled(server: RunningServer) -> dict[str, float]:
    """/metrics once the engine sample (taken every second) has caught up: two samples 1.2 s apart
    that agree on the counters read here, and nothing running."""
    keys = (PREPARED, TOKENIZED, "hotspare_engine_running_sequences", "hotspare_engine_queue_depth")
    last = scrape(server)
    for _ in range(30):
        time.sleep(1.2)
        now = scrape(server)
        if all(now.get(k) == last.get(k) for k in keys) and now.get(keys[2]) == 0 == now.get(keys[3]):
            return now
        last = now
    raise AssertionError(f"the engine counters did not settle: {[last.get(k) for k in keys]}")


def sent_once(before: dict[str, float], after: dict[str, float]) -> bool:
    return (after[PREPARED] - before[PREPARED], after[TOKENIZED] - before[TOKENIZED]) == (1, 1)


def test_n_choices_whole_render_and_send_the_prompt_once(server: RunningServer, oai: openai.OpenAI) -> None:
    """Before: 4 renders, 4 prompts written to the engine pipe and tokenized there."""
    before = settled(server)
    reply = oai.chat.completions.create(model="gpt-4o", messages=USER, n=4, max_tokens=6)
    assert sent_once(before, settled(server))
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.message.content and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 4 * 6 and reply.usage.completion_tokens >= 4
    one = oai.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=1)
    assert one.usage is not None and reply.usage.prompt_tokens == one.usage.prompt_tokens  # counted once


def test_n_choices_streamed_come_interleaved_each_complete(server: RunningServer, oai: openai.OpenAI) -> None:
    before = settled(server)
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        n=4,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {i: "" for i in range(4)}
    finished: dict[int, str] = {}
    order: list[int] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            assert c.index not in finished  # nothing after a choice's finish_reason
            order.append(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason is not None:
                finished[c.index] = c.finish_reason
    assert sent_once(before, settled(server))
    assert set(finished) == {0, 1, 2, 3} and all(texts.values())
    assert order != sorted(order)  # interleaved, not one choice after the other
    assert usage is not None and 4 <= usage.completion_tokens <= 4 * 8


def test_a_client_leaving_cancels_every_choice_on_the_engine(server: RunningServer) -> None:
    generated = "hotspare_engine_generated_tokens_total"
    before = settled(server)
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        "n": 4,
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                break  # some text came: leave
    after = settled(server)  # nothing running or waiting on the engine
    assert after["hotspare_engine_running_sequences"] == 0 == after["hotspare_engine_queue_depth"]
    assert after[generated] - before[generated] < 4 * 300  # every choice stopped long before max_tokens
