"""What both wire formats share: the pydantic base, text-or-parts content, and body parsing.

Parsing is bounded: a body nested deeper than MAX_JSON_DEPTH, one Python's json cannot parse without
running out of stack, or one holding an integer of more than 4,300 digits (CPython's limit on int
conversion) is refused with a 400 naming the problem, never a 500. The depth cap leaves far more than
any real request needs (a Claude Code request with its tool schemas nests about 12 deep) and keeps every
later recursive walk of the body (pydantic, json.dumps to an upstream, the grammar compiler) well inside
the interpreter's recursion limit of 1,000.

Unknown fields: request models keep them (`extra="allow"`) instead of refusing them, and
`unknown_fields` lists them, so the local path can ignore them and say so once (api/unknown_fields.py).
A provider adds fields every few weeks (Anthropic's `output_config`, the SDK's `toolset_name`): a client
that sends one must keep working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from hotspare.api.errors import invalid_body
from hotspare.core.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


MAX_JSON_DEPTH = 128
"""Nesting levels (objects and arrays) a request body may have."""


class WireModel(BaseModel):
    """Base of every request model: values are taken as JSON typed them (no "5" for 5, no true for 1),
    and unknown fields are kept aside (see `unknown_fields`), not refused. A subclass whose extra
    fields are its content, not unknown names (a block type hotspare does not model), sets
    `keeps_extras = True`."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    keeps_extras: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class UnknownField:
    """A field a request carried that its model does not know: `part` is the model's class name (a
    closed set, fit for a metric label), `path` where it was (`messages[1].content[0].toolset_name`)."""

    part: str
    path: str


def unknown_fields(model: BaseModel, path: str = "") -> list[UnknownField]:
    """Every unknown field in `model` and the models it holds, in body order."""
    found: list[UnknownField] = []
    if isinstance(model, WireModel) and not model.keeps_extras:
        for name in model.model_extra or {}:
            found.append(UnknownField(type(model).__name__, f"{path}.{name}" if path else name))
    for name in type(model).model_fields:
        found.extend(_unknown_in(getattr(model, name), f"{path}.{name}" if path else name))
    return found


def _unknown_in(value: Any, path: str) -> list[UnknownField]:
    if isinstance(value, BaseModel):
        return unknown_fields(value, path)
    if isinstance(value, list | tuple):
        return [field for index, item in enumerate(value) for field in _unknown_in(item, f"{path}[{index}]")]
    return []


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
    except RecursionError:
        raise InvalidRequest(_too_deep()) from None
    except ValueError as exc:  # an integer past CPython's digit limit (int_max_str_digits)
        raise InvalidRequest(f"the request body holds a number hotspare cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {_json_kind(data)}")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _depth_over(data, MAX_JSON_DEPTH):
        raise InvalidRequest(_too_deep())
    return data


def _too_deep() -> str:
    return f"the request body is nested too deeply: at most {MAX_JSON_DEPTH} levels of objects and arrays"


def _depth_over(data: Any, max_depth: int) -> bool:
    """Whether `data` nests objects and arrays more than `max_depth` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def validate_body(data: dict[str, Any], model: type[M]) -> M:
    """`data` (a parsed body, not modified) validated as `model`; raises InvalidRequest."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc, data) from exc


MAX_STOP_CHARS = 256
"""Characters one stop sequence may have on the local path (both APIs)."""


def check_stops(stops: list[str], max_count: int, param: str) -> None:
    """Refuse more than `max_count` stop sequences, or one longer than MAX_STOP_CHARS characters."""
    if len(stops) > max_count:
        raise InvalidRequest(
            f"{param}: {len(stops)} stop sequences; the local model accepts at most {max_count}", param
        )
    for index, stop in enumerate(stops):
        if len(stop) > MAX_STOP_CHARS:
            raise InvalidRequest(
                f"{param}[{index}]: a stop sequence of {len(stop)} characters; the local model accepts "
                f"at most {MAX_STOP_CHARS}",
                param,
            )


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
