"""Agent clients on the real server and the real embedded model, through the official SDKs: tool round
trips (whole and streamed), forced tool choice, JSON output that validates, and everything else agent
clients send. Answers are kept to a few tokens; the grammar makes the calls well-formed whatever the
small model thinks.

A request without a seed is sampled with the engine's seed plus its request id, so which tokens a
test gets depends on how many requests the shared server answered before it (and, through the
thread count, on the machine's load): a grammar-constrained answer whose finish reason a test checks
gets GRAMMAR_MAX_TOKENS, never a budget that a typical answer happens to fit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.serving import RunningServer, start_server, stop_server

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
OPENAI_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": CITY_SCHEMA,
        },
    }
]
ANTHROPIC_TOOLS: Any = [
    {"name": "get_weather", "description": "The weather in a city.", "input_schema": CITY_SCHEMA}
]
QUESTION = "What is the weather in Paris?"
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GRAMMAR_MAX_TOKENS = 128
"""More tokens than the longest text these tools' and schemas' grammars allow: a call to get_weather
is at most 119 bytes (its ten optional whitespace runs full), a PERSON_SCHEMA answer at most 120 (a
name of twelve \\u escapes, a 16-digit age), and the grammar never admits an empty token. Typical
calls take 30-42 tokens: at temperature 1 this model spells `<tool_call>` and the names in pieces and
adds whitespace; 1 sampled call in 100 needed more than 40, the budget that made these tests flaky."""


@pytest.fixture
def oai(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(server: RunningServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def fitting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with `fit` and `placeholder` policies and a small context, so fitting is quick."""
    workdir: Path = tmp_path_factory.mktemp("fitting")
    config = workdir / "hotspare.toml"
    config.write_text(
        '[local]\ncontext_tokens = 1024\ncontext_policy = "fit"\n[api]\nmedia = "placeholder"\n'
    )
    running = start_server(workdir, "--config", str(config))
    yield running
    stop_server(running)


# --- OpenAI --------------------------------------------------------------------------------------


def test_openai_tool_round_trip(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    first = oai.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=OPENAI_TOOLS,
        tool_choice="required",
        max_tokens=GRAMMAR_MAX_TOKENS,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), CITY_SCHEMA)
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    final = oai.chat.completions.create(
        model="gpt-4o", messages=messages, tools=OPENAI_TOOLS, max_tokens=8, temperature=0
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content


def test_openai_streamed_tool_round_trip(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=OPENAI_TOOLS,
        tool_choice=named,
        max_tokens=GRAMMAR_MAX_TOKENS,
        stream=True,
    )
    pieces, starts, reasons = [], [], []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or ():
                if delta.id is not None:
                    starts.append((delta.index, delta.id, delta.function and delta.function.name))
                pieces.append(delta.function.arguments if delta.function and delta.function.arguments else "")
    assert len(starts) == 1 and starts[0][0] == 0 and starts[0][2] == "get_weather"
    assert len([p for p in pieces if p]) > 1  # the arguments came in fragments
    jsonschema.validate(json.loads("".join(pieces)), CITY_SCHEMA)
    assert reasons[-1] == "tool_calls"
    call_id = starts[0][1]
    messages += [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "".join(pieces)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"},
    ]
    text = ""
    for chunk in oai.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=8, stream=True):
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text


def test_openai_json_schema_output_validates(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
        max_tokens=GRAMMAR_MAX_TOKENS,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON_SCHEMA)


def test_openai_json_object_output_parses(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "A JSON object with a greeting."}],
        response_format={"type": "json_object"},
        max_tokens=30,
        temperature=0,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: still the start of an object
        assert (reply.choices[0].message.content or "").lstrip().startswith("{")


def test_openai_fields_agents_send_are_accepted(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        user="someone",
        logprobs=True,
        top_logprobs=2,
        n=2,
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        tools=OPENAI_TOOLS,
        tool_choice="none",
        parallel_tool_calls=False,
        seed=1,
        max_tokens=3,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content and c.message.tool_calls is None for c in reply.choices)
    assert reply.choices[0].logprobs is None  # asked for, not available from the local model


# --- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_tool_round_trip(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    first = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=GRAMMAR_MAX_TOKENS,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, CITY_SCHEMA)
    for is_error in (False, True):
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny", "is_error": is_error}
        history: Any = [
            *messages,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ]
        final = claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=8,
            messages=history,
            tools=ANTHROPIC_TOOLS,
        )
        assert final.stop_reason in ("end_turn", "max_tokens") and final.content[0].type == "text"


def test_anthropic_sdk_tool_loop_sends_response_content_back(claude: anthropic.Anthropic) -> None:
    """anthropic 2.16's ToolUseBlock carries `toolset_name` (set when a stream or a newer server fills
    it): the standard loop sends it back. The local model used to answer 400 `...toolset_name: unknown
    field`; now unknown fields are ignored."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=GRAMMAR_MAX_TOKENS,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    content = [
        block.model_copy(update={"toolset_name": None, "caller": None}) if block.type == "tool_use" else block
        for block in first.content
    ]
    (use,) = [block for block in content if isinstance(block, anthropic.types.ToolUseBlock)]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}
    final = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=8,
        messages=[
            *messages,
            {"role": "assistant", "content": content},
            {"role": "user", "content": [result]},
        ],
        tools=ANTHROPIC_TOOLS,
    )
    assert final.stop_reason in ("end_turn", "max_tokens") and final.content[0].type == "text"


def test_openai_sdk_tool_loop_sends_the_message_back(oai: openai.OpenAI) -> None:
    """The SDK's own message object, every field set (`annotations`, `audio`, `refusal`), goes back."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    first = oai.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=OPENAI_TOOLS,
        tool_choice="required",
        max_tokens=GRAMMAR_MAX_TOKENS,
    )
    message = first.choices[0].message.model_copy(update={"annotations": [], "audio": None})
    (call,) = message.tool_calls or []
    final = oai.chat.completions.create(
        model="gpt-4o",
        messages=[*messages, message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}],
        tools=OPENAI_TOOLS,
        max_tokens=8,
    )
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.content


def test_anthropic_streamed_tool_use(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=GRAMMAR_MAX_TOKENS,
        messages=[{"role": "user", "content": QUESTION}],
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None)) for event in stream]
        message = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    assert message.stop_reason == "tool_use"
    (use,) = message.content
    assert use.type == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, CITY_SCHEMA)


def test_anthropic_json_output_validates(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=GRAMMAR_MAX_TOKENS,
        messages=[{"role": "user", "content": "Describe a person."}],
        output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}},
    )
    assert reply.stop_reason == "end_turn" and reply.content[0].type == "text"
    jsonschema.validate(json.loads(reply.content[0].text), PERSON_SCHEMA)


def test_what_claude_code_sends_is_accepted(server: RunningServer) -> None:
    """The shape of Claude Code's requests (see docs/agents.md), small: every field it sends."""
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": 4,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "system", "content": "Agent types: none."},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Hello."},
                ],
            },
            {"role": "user", "content": "Again"},
        ],
        "tools": [{**ANTHROPIC_TOOLS[0], "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": '{"device_id":"d","session_id":"s"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "service_tier": "auto",
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,effort-2025-11-24",
        "x-api-key": "x",
        "x-app": "cli",
    }
    reply = httpx.post(f"{server.base_url}/v1/messages?beta=true", json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    assert "event: message_stop" in reply.text


# --- policies ------------------------------------------------------------------------------------

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def test_images_are_refused_by_default(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="image content is not supported"):
        messages: Any = [{"role": "user", "content": [IMAGE, {"type": "text", "text": "?"}]}]
        claude.messages.create(model="m", max_tokens=2, messages=messages)


def test_placeholder_policy_answers_and_says_so(fitting_server: RunningServer) -> None:
    body = {
        "model": "m",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "?"}]}],
    }
    reply = httpx.post(f"{fitting_server.base_url}/v1/messages", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-hotspare-media-omitted"] == "image=1"


def test_fit_policy_shortens_and_says_so(fitting_server: RunningServer) -> None:
    old_turns: Any = []
    for number in range(12):
        old_turns += [
            {"role": "user", "content": f"Question {number}: " + "tell me more " * 30},
            {"role": "assistant", "content": "Answer: " + "more words " * 30},
        ]
    body = {
        "model": "m",
        "max_tokens": 4,
        "system": "You are helpful. " * 40,
        "messages": [*old_turns, {"role": "user", "content": "Say hello"}],
        "tools": ANTHROPIC_TOOLS,
    }
    reply = httpx.post(f"{fitting_server.base_url}/v1/messages", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    before, after = reply.headers["x-hotspare-context-fit"].removesuffix(" tokens").split("->")
    assert int(before) > 1024 >= int(after) + 4
    assert reply.json()["usage"]["input_tokens"] + reply.json()["usage"]["cache_read_input_tokens"] == int(
        after
    )
