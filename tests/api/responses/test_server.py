"""`POST /v1/responses` on the real local model (the shared `hotspare serve`), with the openai SDK:
streaming and not, a forced function call, and json_schema output."""

from __future__ import annotations

import json

import openai
import pytest

from tests.sdk_clients import openai_client
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)


def client(server: RunningServer) -> openai.OpenAI:
    return openai_client(server, "x", timeout_s=120)


def test_create_and_stream_on_the_local_model(server: RunningServer) -> None:
    oai = client(server)
    response = oai.responses.create(model="gpt-4o", input="Say hello.", max_output_tokens=8)
    assert response.model == "smollm2-135m-instruct"
    assert response.status in ("completed", "incomplete") and response.output_text
    with oai.responses.stream(model="gpt-4o", input="Say hello.", max_output_tokens=8) as stream:
        events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert oai.responses.retrieve(response.id).output_text == response.output_text


def test_a_forced_function_call_on_the_local_model(server: RunningServer) -> None:
    tool: openai.types.responses.FunctionToolParam = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }
    response = client(server).responses.create(
        model="gpt-4o",
        input="What is the weather in Oslo?",
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        temperature=0,  # sampled, a city name can run past 48 tokens, cutting the arguments (seen once)
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)


def test_json_schema_output_on_the_local_model(server: RunningServer) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client(server).responses.create(
        model="gpt-4o",
        input="What is 2 + 2? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}},
        max_output_tokens=32,
    )
    assert isinstance(json.loads(response.output_text)["answer"], int)
