"""The Responses API warms the local model on a conversation an upstream answered, stored or not:
Codex sends `store: false` and its whole conversation every turn, and its failover turn found
nothing in the cache while the warm-up waited for a store write that never came."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import Settings
from hotspare.upstream.config import UpstreamConfig
from tests.fakes.upstreams import FakeUpstream
from tests.router.factories import FakeLocalBackend


class WarmingLocal(FakeLocalBackend):
    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[list[tuple[str, str]]] = []

    async def warm(self, request: Any) -> None:
        self.warmed.append([(m.role.value, m.content) for m in request.messages])


@pytest.mark.parametrize("store", [True, False])
def test_an_upstream_s_responses_answer_warms_the_local_model(store: bool) -> None:
    local = WarmingLocal()
    with FakeUpstream("openai") as upstream:
        config = UpstreamConfig(name="cloud", kind="openai", base_url=upstream.url, api_key="forward")
        app = create_app(Settings(upstreams=(config,)), backend=local)
        with TestClient(app, base_url="http://localhost") as client:
            oai = openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key="sk-test", http_client=client)
            with oai.responses.stream(
                model="gpt-4o", input="Tell me about the incident.", store=store
            ) as stream:
                final = stream.get_final_response()
            for _ in range(100):  # the warm-up is handed over after the answer is delivered
                if local.warmed:
                    break
                time.sleep(0.02)
    assert final.output_text
    assert local.warmed == [[("user", "Tell me about the incident."), ("assistant", final.output_text)]]
