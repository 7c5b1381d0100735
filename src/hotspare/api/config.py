"""The API's own settings sections (`[api]`, `[responses]`) and what the routes read at serve time.

Contract: `Serving` is everything `api/` reads from the settings, handed down by `app.py`
(`Settings.serving()`, kept in `app.state.serving`), so `api/` never imports the whole settings tree
(`hotspare.config`, which sits above it: tests/test_layering.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from hotspare.api.wire import MediaPolicy
from hotspare.core.config import Section


class ApiSettings(Section):
    """What clients may ask for."""

    allowed_models: tuple[str, ...] | None = Field(
        default=None,
        strict=False,  # TOML gives a list; the names in it must still be strings
        description="model names clients may ask for (the local model's own name is always allowed); "
        "unset = any name is served by the local model",
    )
    media: MediaPolicy = Field(
        default=MediaPolicy.REJECT,
        strict=False,  # TOML gives a string
        description="images, audio, documents: 'reject' with a 400, or 'placeholder' text (docs/agents.md)",
    )

    def allows(self, model: str, local_model: str) -> bool:
        return self.allowed_models is None or model == local_model or model in self.allowed_models


class ResponsesSettings(Section):
    """The Responses API's conversation store (api/responses/store.py)."""

    store: bool = Field(default=True, description="keep responses: previous_response_id resolves locally")
    store_path: str = Field(default="", description="SQLite file; empty = $HOTSPARE_HOME/responses.sqlite3")
    store_max_mb: int = Field(default=256, ge=1, description="stored JSON past this evicts the oldest turns")
    store_max_mb_per_key: int | None = Field(
        default=None, ge=1, description="one client key's share; past it, its own oldest go (default 1/8)"
    )
    store_max_age_s: float = Field(default=30 * 86400.0, gt=0, description="older turns are deleted")


@dataclass(frozen=True, slots=True)
class Serving:
    """What the routes read: the `[api]` and `[responses]` sections and four values of others."""

    api: ApiSettings
    responses: ResponsesSettings
    heartbeat_s: float  # [server]
    local_model: str  # [local] model
    max_running: int  # [local]
    warm_conversations: bool  # [local]
