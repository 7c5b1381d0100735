"""Passthrough is transparent: `hotspare serve` (a real subprocess, upstream-only, so no model loads)
in front of the fake providers forwards what the client sent -- an invented field, a value the local
model would not serve, the SDK's own objects sent back in a tool loop -- byte for byte, and checks
only what routing needs (JSON, model, stream) and the access limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.serve_config import serving, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.sdk_clients import anthropic_client, openai_client
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

CONFIG = (
    """
mode = "upstream-only"
[early_warning]
enabled = false

"""
    + upstream_table("anth", "anthropic", "{anthropic}", ["claude-*"])
    + upstream_table("oai", "openai", "{openai}", ["gpt-*"])
)
KEY = "sk-test-client-key-0001"
JSON = {"content-type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def hotspare(
    anthropic_server: FakeUpstream, openai_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = CONFIG.format(anthropic=anthropic_server.url, openai=openai_server.url)
    with serving(config, tmp_path_factory.mktemp("passthrough")) as running:
        yield running


# Odd spacing and key order on purpose: a re-serialized body would not match.
ANTHROPIC_RAW = (
    b'{ "model":"claude-x", "stream":true,"max_tokens":16, "invented_field": {"x": [1, 2.50]},\n'
    b' "messages":[{"role":"user","content":"hi"},{"role":"system","content":"be brief",'
    b' "output_config":{"effort":"low"}}], "temperature": 1.5, "stop_sequences": ['
    + b", ".join(b'"s%d"' % i for i in range(70))
    + b"]}"
)
OPENAI_RAW = (
    b'{"messages":[{"role":"user","content":"hi","invented":true}],"model":"gpt-x","stream":true,'
    b'  "n":200, "stop":["a","b","c","d","e"], "invented_field":null}'
)


@pytest.mark.parametrize(
    ("path", "raw", "fake_name"),
    [("/v1/messages", ANTHROPIC_RAW, "anthropic"), ("/v1/chat/completions", OPENAI_RAW, "openai")],
)
def test_a_request_with_invented_fields_is_forwarded_byte_for_byte(
    hotspare: RunningServer,
    anthropic_fake: FakeUpstream,
    openai_fake: FakeUpstream,
    path: str,
    raw: bytes,
    fake_name: str,
) -> None:
    """Claude Code's `messages[1].output_config` got a 400 from hotspare in passthrough; so did values
    over the local caps (n, stop sequences, Anthropic's temperature range). The provider decides."""
    fake = anthropic_fake if fake_name == "anthropic" else openai_fake
    response = httpx.post(hotspare.base_url + path, content=raw, headers=JSON, timeout=30)
    assert response.status_code == 200, response.text
    (sent,) = fake.attempts()
    assert sent.raw_body == raw


def test_the_anthropic_sdk_tool_loop_through_an_upstream(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(deltas=("Checking.",), tool_call=("get_weather", '{"city": "Oslo"}')))
    client = anthropic_client(hotspare, KEY)
    tools: list[anthropic.types.ToolParam] = [
        {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}
    ]
    question: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Weather in Oslo?"}]
    with client.messages.stream(model="claude-x", max_tokens=64, tools=tools, messages=question) as stream:
        first = stream.get_final_message()
    use = next(block for block in first.content if isinstance(block, anthropic.types.ToolUseBlock))
    content = [
        block.model_copy(update={"toolset_name": None}) if block is use else block for block in first.content
    ]
    result: anthropic.types.ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": use.id,
        "content": "Sunny",
    }
    second = client.messages.create(
        model="claude-x",
        max_tokens=64,
        tools=tools,
        messages=[
            *question,
            {"role": "assistant", "content": content},
            {"role": "user", "content": [result]},
        ],
    )
    assert second.content[0].type == "text"
    sent = anthropic_fake.attempts()[-1].body
    assert sent is not None
    assert sent["messages"][1]["content"][-1]["toolset_name"] is None


def test_the_openai_sdk_tool_loop_through_an_upstream(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    openai_fake.script(Behavior(deltas=(), tool_call=("get_weather", '{"city": "Oslo"}')))
    client = openai_client(hotspare, KEY)
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    with client.chat.completions.stream(model="gpt-x", tools=tools, messages=messages) as stream:
        first = stream.get_final_completion()
    message = first.choices[0].message
    (call,) = message.tool_calls or ()
    echoed = message.model_copy(update={"annotations": []})
    second = client.chat.completions.create(
        model="gpt-x",
        tools=tools,
        messages=[*messages, echoed, {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}],
    )
    assert second.choices[0].message.content is not None
    sent = openai_fake.attempts()[-1].body
    assert sent is not None and sent["messages"][1]["annotations"] == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": 5, "messages": []}', "model: Input should be a valid string"),
        (
            b'{"model": "claude-x", "stream": "yes", "messages": []}',
            "stream: Input should be a valid boolean",
        ),
        (b'{"model": "claude-x", ', "the request body is not valid JSON (line 1, column 23)"),
    ],
)
def test_what_routing_reads_is_still_checked(
    hotspare: RunningServer, anthropic_fake: FakeUpstream, raw: bytes, message: str
) -> None:
    response = httpx.post(hotspare.base_url + "/v1/messages", content=raw, headers=JSON, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error", "message": message}
    assert anthropic_fake.attempts() == []


def test_a_request_the_local_model_refuses_says_why_when_no_upstream_answers(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(*[Behavior(status=529)] * 8)
    body = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    body["stop_sequences"] = [f"s{i}" for i in range(70)]
    response = httpx.post(
        hotspare.base_url + "/v1/messages", content=json.dumps(body), headers=JSON, timeout=30
    )
    assert response.status_code in (502, 503, 529), response.text
    assert response.json()["type"] == "error"
