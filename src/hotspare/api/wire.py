"""What both wire formats share: the strict pydantic base, text-or-parts content, and body parsing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from hotspare.api.errors import invalid_body
from hotspare.core.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class WireModel(BaseModel):
    """Base of every request model: unknown fields are refused (as the providers do), and values are
    taken as JSON typed them (no "5" for 5, no true for 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def text_as_parts(value: Any) -> Any:
    """Before validation: a plain string of content becomes one text part; a list passes through."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if isinstance(value, list):
        return value
    raise PydanticCustomError("content_type", "Input should be a string or a list of content parts")


def parse_body(raw: bytes, model: type[M]) -> M:
    """Validate a raw request body as `model`; raises InvalidRequest naming what is wrong."""
    return validate_body(parse_object(raw), model)


PARSED_BODY_SCOPE = "hotspare.parsed_body"
"""Where a middleware that already parsed a request's body (the access guard counts its messages)
leaves `(raw bytes, parsed object)` in the ASGI scope, so the route does not parse it again."""


def scope_object(scope: Mapping[str, Any], raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object (see parse_object), reusing a parse of the same bytes left in `scope`."""
    parsed = scope.get(PARSED_BODY_SCOPE)
    if parsed is not None and parsed[0] == raw:
        data: dict[str, Any] = parsed[1]
        return data
    return parse_object(raw)


def parse_object(raw: bytes) -> dict[str, Any]:
    """A raw request body as a JSON object; raises InvalidRequest naming what is wrong."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequest(f"the request body is not valid JSON{where}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {_json_kind(data)}")
    return data


def validate_body(data: dict[str, Any], model: type[M]) -> M:
    """`data` (a parsed body, not modified) validated as `model`; raises InvalidRequest."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc, data) from exc


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


class MediaPolicy(StrEnum):
    """What the local model (which reads text only) does with images, audio and documents."""

    REJECT = "reject"  # refuse the request with a 400 that says so
    PLACEHOLDER = "placeholder"  # replace each with a short text placeholder; a response header says so


MEDIA_HEADER = "x-hotspare-media-omitted"
"""Set when media were replaced by placeholders: the kinds replaced and how many, `image=2, document=1`."""


def media_placeholder(kind: str) -> str:
    return f"[{kind} omitted: the local model reads text only]"


def media_header(kinds: list[str]) -> dict[str, str]:
    if not kinds:
        return {}
    counts = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
    return {MEDIA_HEADER: ", ".join(f"{kind}={n}" for kind, n in counts.items())}
