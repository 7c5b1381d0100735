"""Fixtures for engine tests on the real embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights


@pytest.fixture(scope="session")
def model_path() -> Path:
    return resolve_weights(load_catalog().get(DEFAULT_MODEL))
