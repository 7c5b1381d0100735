"""`GET /` and `HEAD /` in process: 200 with the status page for a browser, a small JSON naming the
endpoints otherwise; behind keys like the other ops pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from hotspare.app import create_app
from hotspare.config import Settings
from tests.api.fakes import FakeBackend

KEY = "hs-test-key-0001"


def make_client(**access: object) -> TestClient:
    settings = Settings.model_validate({"access": access})
    return TestClient(
        create_app(settings, backend=FakeBackend()),
        raise_server_exceptions=False,
        base_url="http://localhost",
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as c:
        yield c


def test_root_points_at_the_status_page(client: TestClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 200
    pointers = reply.json()
    assert (pointers["service"], pointers["status"]) == ("hotspare", "/status")
    for path in (pointers["health"], pointers["ready"], pointers["metrics"], *pointers["apis"]):
        assert client.get(path).status_code != 404, path  # each one it names is served


def test_a_browser_at_the_root_gets_the_status_page(client: TestClient) -> None:
    reply = client.get("/", headers={"accept": "text/html,application/xhtml+xml"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "<title>hotspare status</title>" in reply.text and "<h1>hotspare</h1>" in reply.text


def test_head_of_the_root_is_200_without_a_body(client: TestClient) -> None:
    reply = client.head("/")
    assert (reply.status_code, reply.content) == (200, b"")
    assert reply.headers["content-type"] == "application/json"


def test_the_root_needs_a_key_unless_ops_pages_are_public() -> None:
    with make_client(api_keys=[KEY]) as closed:
        assert closed.get("/").status_code == 401
        assert closed.get("/", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    with make_client(api_keys=[KEY], public_ops=True) as public:
        assert public.get("/").status_code == 200
