"""The one pydantic base of every settings section (`[server]`, `[local]`, `[[upstreams]]`,
`[access]`, ...): unknown keys are refused, a validated section is frozen, and values are taken as
TOML typed them -- "80" is not a port, 2.0 is not a count and true is not a number.

Where TOML has no type for a field's Python type (a list for a tuple, a string for an enum), that
field says `strict=False`; its items are still checked strictly.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
