"""Fixtures every test directory shares.

* `server`: the real server, `hotspare serve` on the embedded model as a subprocess on a free port, one
  per test session (loading is the slow part). Tests talk HTTP to `server.base_url` with the official
  SDKs or httpx; it is stopped when the session ends. The helpers are in serving.py.
* `anthropic_server` / `openai_server`: the fake providers (fakes/upstreams.py), one of each per test
  module; `anthropic_fake` / `openai_fake` hand them to a test reset and healthy.
* SDK clients made with sdk_clients.py are closed after each test.

The `real` marker (pyproject.toml) names the tests that run the real hotspare: `hotspare serve` as a
subprocess, or the engine on the embedded model. A test is marked here when it uses `server` or
`model_path`, else by its module (`pytestmark`) or itself; one that starts the server unmarked fails
(`serving.start_server`), so `-m "not real and not slow"` is the in-process suite, and nothing
recognises a real-server test by its name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import serving
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.sdk_clients import close_all
from tests.serving import RunningServer, start_server, stop_server

REAL_FIXTURES = frozenset({"server", "model_path"})
"""Fixtures that bring up the real hotspare: every test that uses one is marked `real`."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures (a module's server starts in the first test that uses it)."""
    serving.may_start_real_server = item.get_closest_marker("real") is not None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real server on the embedded default model, shared by the whole session."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("anthropic") as fake:
        yield fake


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


def _reset(fake: FakeUpstream) -> FakeUpstream:
    fake.clear()
    fake.default = Behavior()
    fake.probe_status = 200
    fake.accept()
    return fake


@pytest.fixture
def anthropic_fake(anthropic_server: FakeUpstream) -> FakeUpstream:
    return _reset(anthropic_server)


@pytest.fixture
def openai_fake(openai_server: FakeUpstream) -> FakeUpstream:
    return _reset(openai_server)
