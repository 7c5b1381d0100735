"""GET /v1/responses/{id}/input_items and DELETE /v1/responses/{id} for responses hotspare made itself
(answered from its store), driven by the official openai SDK. Responses an upstream made are forwarded
to it: see tests/router/test_responses_failover.py."""

from __future__ import annotations

import openai
import pytest
from starlette.testclient import TestClient

TURN_INPUT: list[openai.types.responses.ResponseInputItemParam] = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "again"},
]


def test_input_items_list_the_request_items_newest_first_with_ids(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4o", input=TURN_INPUT)
    page = oai.responses.input_items.list(created.id)
    listed = [item.to_dict() for item in page.data]
    assert [item["id"] for item in listed] == [f"{created.id}_in{i}" for i in (3, 2, 1, 0)]
    assert listed[0] == {
        "id": f"{created.id}_in3",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "again"}],
    }
    assert listed[1]["content"] == [{"type": "output_text", "text": "hello"}]
    assert listed[2]["content"] == [{"type": "input_text", "text": "hi"}]
    assert (page.first_id, page.last_id, page.has_more) == (f"{created.id}_in3", f"{created.id}_in0", False)


def test_input_items_pages_in_either_order(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4o", input=TURN_INPUT)
    first = oai.responses.input_items.list(created.id, order="asc", limit=3)
    assert [item.id for item in first.data] == [f"{created.id}_in{i}" for i in (0, 1, 2)]
    assert first.has_more is True
    every = [item.id for item in oai.responses.input_items.list(created.id, order="asc", limit=3)]
    assert every == [f"{created.id}_in{i}" for i in range(4)]  # the SDK followed `after` to page 2


def test_a_plain_string_input_is_one_user_message(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4o", input="hi")
    (item,) = oai.responses.input_items.list(created.id).data
    assert item.to_dict() == {
        "id": f"{created.id}_in0",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: expected an integer from 1 to 100, got '0'"),
        ("limit=x", "limit: expected an integer from 1 to 100, got 'x'"),
        ("order=up", "order: expected 'asc' or 'desc', got 'up'"),
        ("after=nope", "after: no item with id 'nope' in this list"),
    ],
)
def test_bad_list_parameters_are_400_naming_them(
    oai: openai.OpenAI, http: TestClient, query: str, message: str
) -> None:
    created = oai.responses.create(model="gpt-4o", input="hi")
    reply = http.get(f"/v1/responses/{created.id}/input_items?{query}")
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == message


def test_unknown_ids_are_404_in_the_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="resp_nope") as listed:
        oai.responses.input_items.list("resp_nope")
    assert listed.value.body == {
        "message": "No response found with id 'resp_nope'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete("resp_nope")


def test_the_sdk_deletes_a_stored_response_and_its_items(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4o", input="hi")
    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.input_items.list(created.id)


def test_a_key_cannot_read_delete_or_continue_another_keys_response(
    oai: openai.OpenAI, http: TestClient
) -> None:
    ada = oai.with_options(api_key="sk-ada-key-0000001")
    bob = oai.with_options(api_key="sk-bob-key-0000002")
    created = ada.responses.create(model="gpt-4o", input="my secret is 42")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError, match=created.id):
        bob.responses.create(model="gpt-4o", input="what is my secret?", previous_response_id=created.id)
    assert ada.responses.retrieve(created.id).id == created.id  # still there for its owner
    follow_up = ada.responses.create(model="gpt-4o", input="and?", previous_response_id=created.id)
    assert ada.responses.retrieve(follow_up.id).previous_response_id == created.id
