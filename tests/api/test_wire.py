"""Parsing a request body once: the access guard's parse (it counts messages) is reused by the route
only for the very same bytes."""

from __future__ import annotations

import json

import pytest

from hotspare.api.wire import PARSED_BODY_SCOPE, scope_object
from hotspare.core.errors import InvalidRequest


def test_a_parse_left_in_the_scope_is_reused_for_the_same_bytes_only() -> None:
    raw = b'{"model": "m", "messages": []}'
    data = json.loads(raw)
    scope = {PARSED_BODY_SCOPE: (bytes(raw), data)}  # equal bytes, another object (as Starlette joins)
    assert scope_object(scope, raw) is data
    other = b'{"model": "n", "messages": []}'
    assert scope_object(scope, other) == {"model": "n", "messages": []}
    assert scope_object({}, raw) == data and scope_object({}, raw) is not data
    with pytest.raises(InvalidRequest):
        scope_object({}, b"[1]")
