"""POST/GET/DELETE /v1/responses in front of a scripted backend, driven by the official openai SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from hotspare.api.responses.routes import store_of
from hotspare.core.errors import BackendUnavailable
from hotspare.core.types import (
    FinishReason,
    JsonOutput,
    Message,
    Role,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
)
from tests.api.fakes import MODEL, FakeBackend, answer, finish

STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_create_answers_with_text_usage_and_the_model_that_answered(
    oai: openai.OpenAI, backend: FakeBackend
) -> None:
    response = oai.responses.create(
        model="gpt-4o", input="hi", instructions="be brief", max_output_tokens=16, temperature=0.5, top_p=0.9
    )
    assert response.id.startswith("resp_")
    assert (response.status, response.model, response.output_text) == ("completed", MODEL, "Hello world")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        7,
        2,
        9,
    )
    assert (response.instructions, response.max_output_tokens, response.temperature) == ("be brief", 16, 0.5)
    (request,) = backend.requests
    assert request.messages == (Message(Role.SYSTEM, "be brief"), Message(Role.USER, "hi"))
    assert (request.sampling.max_tokens, request.sampling.temperature, request.sampling.top_p) == (
        16,
        0.5,
        0.9,
    )


def test_stream_sends_the_full_event_sequence_numbered_from_zero(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-4o", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.type for event in events] == STREAM_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(STREAM_EVENTS)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello world"
    assert final.output_text == "Hello world"
    assert final.status == "completed"


def test_max_output_tokens_reached_is_an_incomplete_response(
    oai: openai.OpenAI, backend: FakeBackend
) -> None:
    backend.events = answer("Hel", end=finish(FinishReason.LENGTH, output_tokens=1))
    response = oai.responses.create(model="gpt-4o", input="hi", max_output_tokens=1)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    with oai.responses.stream(model="gpt-4o", input="hi", max_output_tokens=1) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


def test_input_items_become_messages_with_tool_calls_and_results(
    oai: openai.OpenAI, backend: FakeBackend
) -> None:
    oai.responses.create(
        model="gpt-4o",
        input=[
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "It rains.", "annotations": []}],
            },
        ],
        tools=[
            {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": False},
            {
                "type": "namespace",
                "name": "ns",
                "description": "",
                "tools": [{"type": "function", "name": "f"}],
            },
        ],
    )
    (request,) = backend.requests
    assert request.messages == (
        Message(Role.SYSTEM, "rules"),
        Message(Role.USER, "weather?"),
        Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "weather", '{"city":"Oslo"}'),)),
        Message(Role.TOOL, "rain", tool_call_id="c1"),
        Message(Role.ASSISTANT, "It rains."),
    )
    assert [tool.name for tool in request.tools] == ["weather", "f"]


def test_previous_response_id_puts_the_earlier_turns_before_the_new_input(
    oai: openai.OpenAI, backend: FakeBackend
) -> None:
    first = oai.responses.create(model="gpt-4o", input="My name is Ada.", instructions="old rules")
    second = oai.responses.create(model="gpt-4o", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    oai.responses.create(model="gpt-4o", input="And again?", previous_response_id=second.id)
    assert backend.requests[2].messages == (  # instructions are not carried over, as at OpenAI
        Message(Role.USER, "My name is Ada."),
        Message(Role.ASSISTANT, "Hello world"),
        Message(Role.USER, "What is my name?"),
        Message(Role.ASSISTANT, "Hello world"),
        Message(Role.USER, "And again?"),
    )


def test_a_stored_response_can_be_fetched_and_deleted(oai: openai.OpenAI, http: TestClient) -> None:
    created = oai.responses.create(model="gpt-4o", input="hi", metadata={"k": "v"})
    fetched = oai.responses.retrieve(created.id)
    assert (fetched.id, fetched.output_text, fetched.metadata) == (created.id, "Hello world", {"k": "v"})
    assert http.delete(f"/v1/responses/{created.id}").json() == {
        "id": created.id,
        "object": "response",
        "deleted": True,
    }
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)


def test_a_streamed_response_is_stored_too(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-4o", input="hi") as stream:
        final = stream.get_final_response()
    assert oai.responses.retrieve(final.id).output_text == "Hello world"


def test_store_false_keeps_nothing(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4o", input="hi", store=False)
    assert created.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)


def test_an_unknown_previous_response_is_404(oai: openai.OpenAI, backend: FakeBackend) -> None:
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        oai.responses.create(model="gpt-4o", input="hi", previous_response_id="resp_nope")
    assert backend.requests == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"tools": [{"type": "web_search"}]}, "'web_search'"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "'file_search'"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice web_search"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input_image",
        ),
    ],
)
def test_what_the_local_model_cannot_do_is_refused_naming_it(
    http: TestClient, backend: FakeBackend, extra: dict[str, Any], named: str
) -> None:
    body = {"model": "gpt-4o", "input": "hi", **extra}
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert named in error["message"]
    assert "local model" in error["message"]
    assert backend.requests == []


def test_unknown_fields_are_ignored(http: TestClient) -> None:
    reply = http.post("/v1/responses", json={"model": "m", "input": "hi", "a_field_from_next_week": 1})
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": [{"type": "telepathy"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(
    http: TestClient, body: dict[str, Any], param: str
) -> None:
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param


def test_a_failure_mid_stream_ends_with_error_and_response_failed(
    http: TestClient, backend: FakeBackend
) -> None:
    backend.events = [TextDelta("Hel")]  # ends without a Finish
    reply = http.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-3:] == ["response.output_text.delta", "error", "response.failed"]
    error, failed = events[-2], events[-1]
    assert error["error"]["type"] == "server_error" and error["message"] == error["error"]["message"]
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["output"][0]["content"][0]["text"] == "Hel"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_the_sdk_raises_on_a_failed_stream(oai: openai.OpenAI, backend: FakeBackend) -> None:
    backend.events = [TextDelta("Hel")]
    with pytest.raises(openai.APIError), oai.responses.stream(model="m", input="hi") as stream:
        list(stream)


def test_a_refusal_before_the_first_token_is_an_http_error(oai: openai.OpenAI, backend: FakeBackend) -> None:
    backend.error = BackendUnavailable("restarting")
    with pytest.raises(openai.InternalServerError, match="restarting"):
        oai.responses.create(model="m", input="hi", stream=True)


WEATHER: openai.types.responses.FunctionToolParam = {
    "type": "function",
    "name": "weather",
    "parameters": {"type": "object"},
    "strict": True,
}
CALLS: list[StreamEvent] = [
    TextDelta("Let me check."),
    ToolCallStart(0, "call_1", "weather"),
    ToolCallDelta(0, '{"city":'),
    ToolCallDelta(0, '"Oslo"}'),
    finish(FinishReason.TOOL_CALLS),
]


def test_tool_choice_and_json_schema_reach_the_core_request(oai: openai.OpenAI, backend: FakeBackend) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
    }
    oai.responses.create(
        model="m",
        input="hi",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False,
    )
    oai.responses.create(
        model="m", input="hi", text={"format": {"type": "json_schema", "name": "x", "schema": schema}}
    )
    oai.responses.create(
        model="m", input="hi", tool_choice="required", text={"format": {"type": "json_object"}}
    )
    first, second, third = backend.requests
    assert (first.tool_choice, first.parallel_tool_calls) == (
        ToolChoice(ToolChoiceMode.NAMED, "weather"),
        False,
    )
    assert second.json_output == JsonOutput(schema)
    assert (third.tool_choice, third.json_output) == (ToolChoice(ToolChoiceMode.REQUIRED), JsonOutput())


def test_tool_calls_become_function_call_items(oai: openai.OpenAI, backend: FakeBackend) -> None:
    backend.events = CALLS
    response = oai.responses.create(model="m", input="weather?", tools=[WEATHER])
    message, call = response.output
    assert message.type == "message" and response.output_text == "Let me check."
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "weather",
        '{"city":"Oslo"}',
        "completed",
    )


def test_streamed_tool_calls_send_argument_deltas(oai: openai.OpenAI, backend: FakeBackend) -> None:
    backend.events = CALLS
    with oai.responses.stream(model="m", input="weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    call = final.output[1]
    assert call.type == "function_call" and call.arguments == '{"city":"Oslo"}'


def _fill_the_store(http: TestClient) -> None:
    """The store's database can grow no more: every write fails as on a full disk (SQLITE_FULL)."""
    store = store_of(http.app)  # type: ignore[arg-type]
    assert store is not None
    store._db.execute("PRAGMA max_page_count = 1")


def test_a_failed_store_write_never_breaks_a_finished_answer(oai: openai.OpenAI, http: TestClient) -> None:
    _fill_the_store(http)
    created = oai.responses.create(model="gpt-4o", input="x" * 20_000)
    assert (created.status, created.output_text) == ("completed", "Hello world")
    with oai.responses.stream(model="gpt-4o", input="y" * 20_000) as stream:
        events = [event.type for event in stream]
    assert events[-1] == "response.completed"
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    assert "hotspare_response_store_errors_total 2.0" in http.get("/metrics").text
