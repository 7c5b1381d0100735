"""The shared real server: `hotspare serve` on the embedded model, as a subprocess on a free port.

One per test session (loading is the slow part). Tests that use it talk HTTP to `server.base_url`
with the official SDKs or httpx; it is stopped when the session ends. The helpers are in serving.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving import RunningServer, start_server, stop_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real server on the embedded default model, shared by the whole session."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)
