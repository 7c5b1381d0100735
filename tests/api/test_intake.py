"""api/intake.py: what routing checks, and when a request the local path refuses still goes upstream."""

from __future__ import annotations

from typing import Any

import pytest

from hotspare.api.intake import Intake, take_in
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import ChatRequest, Message, Role

CHAT = ChatRequest(model="m", messages=(Message(Role.USER, "hi"),), request_id="r1")


def converts(payload: dict[str, Any]) -> tuple[str, ChatRequest]:
    return "body", CHAT


def refuses(payload: dict[str, Any]) -> tuple[str, ChatRequest]:
    raise InvalidRequest("stop: 5 stop sequences; the local model accepts at most 4", "stop")


def test_a_request_the_local_path_takes_is_converted() -> None:
    assert take_in({"model": "m"}, "r1", converts, lambda model: True) == Intake(CHAT, "body")


def test_a_refused_request_goes_upstream_with_the_reason() -> None:
    intake = take_in({"model": "gpt-x", "stream": True}, "r1", refuses, lambda model: model == "gpt-x")
    assert intake == Intake(
        ChatRequest(model="gpt-x", messages=(), stream=True, request_id="r1"),
        None,
        "stop: 5 stop sequences; the local model accepts at most 4",
    )


def test_a_refused_request_no_upstream_takes_is_the_answer() -> None:
    with pytest.raises(InvalidRequest, match="at most 4"):
        take_in({"model": "m"}, "r1", refuses, lambda model: False)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "model: field required"),
        ({"model": None}, "model: Input should be a valid string"),
        ({"model": ["m"]}, "model: Input should be a valid string"),
        ({"model": "m", "stream": "true"}, "stream: Input should be a valid boolean"),
        ({"model": "m", "stream": 1}, "stream: Input should be a valid boolean"),
    ],
)
def test_routing_fields_are_checked_even_for_passthrough(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        take_in(payload, "r1", converts, lambda model: True)
    assert caught.value.message == message
