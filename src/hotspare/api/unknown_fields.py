"""Unknown request fields on the local path: ignored, logged once per name, counted.

A provider's API and its SDKs grow fields faster than hotspare can follow, and a tool loop sends the
SDK's own objects back (anthropic 2.16's `ToolUseBlock.toolset_name`). Refusing what the local model
does not know would break such clients in the one moment hotspare exists for, so it ignores them and
says so: a debug log line the first time each (model part, field name) is seen, and the counter
`hotspare_unknown_fields_total{api,part}`.

Bounds: `part` is a request model's class name (a closed set from this code), never a name a client
sent; the field names are kept only to log each once, at most MAX_REMEMBERED of them (then no more
lines), each cut to MAX_NAME_CHARS characters in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import BaseModel

from hotspare.api.wire import UnknownField, unknown_fields
from hotspare.core.types import ApiFormat

log = logging.getLogger(__name__)

MAX_REMEMBERED = 1024
MAX_NAME_CHARS = 64

Counter = Callable[[str, str], None]  # (api, part): one more unknown field seen


class UnknownFieldLog:
    """Reports unknown fields. Used on the event loop only (no locking)."""

    def __init__(self, count: Counter | None = None) -> None:
        self._count = count
        self._seen: set[tuple[str, str]] = set()

    def note_model(self, api: ApiFormat, body: BaseModel) -> None:
        """Report the unknown fields of a validated request `body`."""
        self.note(api, unknown_fields(body))

    def note(self, api: ApiFormat, fields: list[UnknownField]) -> None:
        for field in fields:
            if self._count is not None:
                self._count(str(api), field.part)
            name = field.path.rsplit(".", 1)[-1][:MAX_NAME_CHARS]
            key = (field.part, name)
            if key in self._seen or len(self._seen) >= MAX_REMEMBERED:
                continue
            self._seen.add(key)
            log.debug("ignoring unknown field %r (first seen at %s) in %s requests", name, field.path, api)
