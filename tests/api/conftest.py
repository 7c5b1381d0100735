"""In-process app fixtures: the real routes in front of a scripted FakeBackend (no model, no server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import ApiSettings, ResponsesSettings, ServerSettings, Settings

from .fakes import FakeBackend

MakeClient = Callable[..., TestClient]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """`make_client(backend, allowed_models=None, heartbeat_s=10.0)`: a TestClient on a fresh app."""
    clients: list[TestClient] = []

    def make(
        backend: FakeBackend | None,
        allowed_models: tuple[str, ...] | None = None,
        heartbeat_s: float = 10.0,
    ) -> TestClient:
        settings = Settings(
            server=ServerSettings(heartbeat_s=heartbeat_s), api=ApiSettings(allowed_models=allowed_models)
        )
        client = TestClient(
            create_app(settings, backend=backend), raise_server_exceptions=False, base_url="http://localhost"
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient, backend: FakeBackend) -> TestClient:
    return make_client(backend)


@pytest.fixture
def openai_client(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=client, max_retries=0)


@pytest.fixture
def anthropic_client(client: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://localhost", api_key="x", http_client=client, max_retries=0)


@pytest.fixture
def http(backend: FakeBackend) -> Iterator[TestClient]:
    """A TestClient on a fresh app with an in-memory response store (the Responses API tests), sending
    the key `oai` sends (stored responses are visible only to the key that made them)."""
    settings = Settings(responses=ResponsesSettings(store_path=":memory:"))
    app = create_app(settings, backend=backend)
    with TestClient(
        app, raise_server_exceptions=False, headers={"authorization": "Bearer x"}, base_url="http://localhost"
    ) as client:
        yield client


@pytest.fixture
def oai(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=http, max_retries=0)
