"""The fake providers for ops tests, one pair per module; each test gets them reset and healthy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fakes.upstreams import Behavior, FakeUpstream


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
