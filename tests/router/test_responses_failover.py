"""The Responses API through `hotspare serve --config` (real subprocess, real local model) in front of a
fake OpenAI upstream speaking the Responses wire format, driven by the official openai SDK: passthrough,
failover before the first byte, mid-stream takeover, and a conversation that continues by
`previous_response_id` on the local model after the upstream that started it went down."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.serve_config import QUICK_BREAKER, serving, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream, key_hash
from tests.sdk_clients import openai_client
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

GPT = "gpt-test"
KEY = "sk-test-client"
UPSTREAM_TEXT = "Hello from the fake upstream."

NEVER_OPENS = QUICK_BREAKER | {"consecutive_failures": 100}  # every test starts with a closed circuit
CONFIG = """
mode = "auto"
[local]
hedge = false

""" + upstream_table("oai", "openai", "{openai}", ["gpt-*"], breaker=NEVER_OPENS)


@pytest.fixture(scope="module")
def hotspare(
    openai_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        CONFIG.format(openai=openai_server.url), tmp_path_factory.mktemp("responses-failover")
    ) as running:
        yield running


def client(server: RunningServer) -> openai.OpenAI:
    return openai_client(server, KEY)


def via_upstream(oai: openai.OpenAI, **kwargs: Any) -> openai.types.responses.Response:
    """`responses.create` until the upstream answers it: after failures, an early-warning advisor
    may send a share of requests past a healthy-again upstream for a while."""
    for _ in range(4):
        raw = oai.responses.with_raw_response.create(max_output_tokens=8, **kwargs)
        if raw.headers["x-hotspare-backend"] == "oai":
            response: openai.types.responses.Response = raw.parse()
            return response
    raise AssertionError("the upstream never answered")


def test_non_streaming_passes_through_and_is_kept(hotspare: RunningServer, openai_fake: FakeUpstream) -> None:
    raw = client(hotspare).responses.with_raw_response.create(model=GPT, input="Say hello")
    response = raw.parse()
    assert raw.headers["x-hotspare-backend"] == "oai"
    assert (response.id, response.output_text) == (openai_fake.response_ids[-1], UPSTREAM_TEXT)
    (attempt,) = openai_fake.attempts()
    assert attempt.path == "/v1/responses"
    assert attempt.body is not None and attempt.body["input"] == "Say hello"
    assert client(hotspare).responses.retrieve(response.id).output_text == UPSTREAM_TEXT


def test_streaming_passes_through_event_for_event(hotspare: RunningServer, openai_fake: FakeUpstream) -> None:
    with client(hotspare).responses.stream(model=GPT, input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == UPSTREAM_TEXT
    assert final.id == openai_fake.response_ids[-1]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert client(hotspare).responses.retrieve(final.id).status == "completed"


def test_a_stream_cut_mid_answer_is_finished_by_the_local_model(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    openai_fake.default = Behavior(cut_after=3)
    with client(hotspare).responses.stream(model=GPT, input="Say hello", max_output_tokens=12) as stream:
        events = list(stream)
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")  # max_output_tokens may end it
    final = last.response
    assert final.output_text.startswith("Hello from the")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage is not None and final.usage.output_tokens >= 3
    # The upstream's own copy is incomplete: the next turn inlines the conversation instead.
    openai_fake.default = Behavior()
    via_upstream(client(hotspare), model=GPT, input="More", previous_response_id=final.id)
    body = openai_fake.attempts()[-1].body
    assert body is not None and "previous_response_id" not in body
    assert [item.get("role") for item in body["input"]] == ["user", "assistant", "user"]


def test_a_conversation_continues_locally_after_its_upstream_went_down(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    oai = client(hotspare)
    question = "What did I ask you before?"
    first = oai.responses.create(model=GPT, input="Say hello, my name is Ada and I like tea.")
    assert first.output_text == UPSTREAM_TEXT
    openai_fake.refuse()
    raw = oai.responses.with_raw_response.create(
        model=GPT, input=question, previous_response_id=first.id, max_output_tokens=8
    )
    second = raw.parse()
    assert raw.headers["x-hotspare-backend"] == "local"
    fresh = oai.responses.create(model="not-routed", input=question, max_output_tokens=8)  # local
    assert second.usage is not None and fresh.usage is not None
    # The earlier user turn and the upstream's answer are in the local model's prompt.
    assert second.usage.input_tokens >= fresh.usage.input_tokens + 15
    # Back up: the upstream never saw the local turn, so it gets the whole conversation inline.
    openai_fake.accept()
    third = via_upstream(oai, model=GPT, input="Thanks", previous_response_id=second.id)
    assert third.output_text == UPSTREAM_TEXT
    body = openai_fake.attempts()[-1].body
    assert body is not None and "previous_response_id" not in body
    texts = [
        item["content"] if isinstance(item["content"], str) else item["content"][0]["text"]
        for item in body["input"]
    ]
    assert texts[:2] == ["Say hello, my name is Ada and I like tea.", UPSTREAM_TEXT]
    assert texts[2:] == [question, second.output_text, "Thanks"]
    # And a turn the upstream made itself is referred to by id again.
    via_upstream(oai, model=GPT, input="Bye", previous_response_id=third.id)
    last = openai_fake.attempts()[-1].body
    assert last is not None and last["previous_response_id"] == third.id and last["input"] == "Bye"


def test_a_built_in_tool_is_passed_through_but_never_given_to_the_local_model(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    tools: list[openai.types.responses.ToolParam] = [{"type": "web_search"}]
    response = via_upstream(client(hotspare), model=GPT, input="news?", tools=tools)
    assert response.output_text == UPSTREAM_TEXT
    openai_fake.default = Behavior(status=500)
    with pytest.raises(openai.InternalServerError, match="web_search"):
        client(hotspare).responses.create(model=GPT, input="news?", tools=tools)


@pytest.mark.parametrize(
    "behavior",
    [Behavior(status=500), Behavior(reset=True), Behavior(first_delay_s=10), Behavior(error_after=0)],
    ids=["500", "reset", "first-token", "error-event"],
)
def test_failure_before_the_first_token_is_answered_locally(
    hotspare: RunningServer, openai_fake: FakeUpstream, behavior: Behavior
) -> None:
    openai_fake.default = behavior
    raw = client(hotspare).responses.with_raw_response.create(
        model=GPT, input="Say hello", max_output_tokens=8
    )
    response = raw.parse()
    assert raw.headers["x-hotspare-backend"] == "local"
    assert response.id.startswith("resp_") and response.id not in openai_fake.response_ids
    assert response.status in ("completed", "incomplete")
    assert response.model == "smollm2-135m-instruct"


# --- requests about a response: input items, retrieve, delete -----------------------------------------


def test_requests_about_an_upstream_response_go_to_that_upstream(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    oai = client(hotspare)
    made = via_upstream(oai, model=GPT, input="Say hello")
    openai_fake.clear()
    listed = oai.responses.input_items.with_raw_response.list(made.id)
    assert listed.headers["x-hotspare-backend"] == "oai"
    (item,) = listed.parse().data
    assert item.to_dict() == {
        "id": "msg_fakein0",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Say hello"}],
    }
    assert oai.responses.retrieve(made.id).output_text == UPSTREAM_TEXT
    oai.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):  # gone upstream, and the store's copy with it
        oai.responses.retrieve(made.id)
    seen = [(a.method, a.path.partition("?")[0]) for a in openai_fake.attempts()]
    assert seen == [
        ("GET", f"/v1/responses/{made.id}/input_items"),
        ("GET", f"/v1/responses/{made.id}"),
        ("DELETE", f"/v1/responses/{made.id}"),
        ("GET", f"/v1/responses/{made.id}"),
    ]
    assert all(a.headers["authorization"] == key_hash(KEY) for a in openai_fake.attempts())


def test_while_its_upstream_is_down_a_kept_response_is_read_from_the_store(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    oai = client(hotspare)
    made = via_upstream(oai, model=GPT, input="Say hello")
    openai_fake.refuse()
    assert oai.responses.retrieve(made.id).output_text == UPSTREAM_TEXT
    (item,) = oai.responses.input_items.list(made.id).data
    assert (item.id, item.to_dict()["content"]) == (
        f"{made.id}_in0",
        [{"type": "input_text", "text": "Say hello"}],
    )
    with pytest.raises(openai.InternalServerError, match="could not be reached to delete it there"):
        oai.responses.delete(made.id)
    openai_fake.accept()  # the upstream still holds it: asked again, it answers
    fetched = oai.responses.with_raw_response.retrieve(made.id)
    assert (fetched.headers["x-hotspare-backend"], fetched.parse().id) == ("oai", made.id)


def test_requests_about_a_local_response_never_reach_the_upstream(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    oai = client(hotspare)
    openai_fake.default = Behavior(status=500)
    raw = oai.responses.with_raw_response.create(model=GPT, input="Say hello", max_output_tokens=8)
    assert raw.headers["x-hotspare-backend"] == "local"
    made = raw.parse()
    openai_fake.default = Behavior()
    openai_fake.clear()
    assert [item.id for item in oai.responses.input_items.list(made.id)] == [f"{made.id}_in0"]
    oai.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.input_items.list(made.id)
    # Not stored here any more: the upstream is asked, and says it never made it.
    assert [(a.method, a.path.partition("?")[0]) for a in openai_fake.attempts()] == [
        ("GET", f"/v1/responses/{made.id}/input_items")
    ]
