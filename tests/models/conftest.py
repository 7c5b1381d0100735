"""Every models test gets its own hotspare home and Hugging Face cache; nothing touches the user's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_homes(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("hotspare-home")
    monkeypatch.setenv("HOTSPARE_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.delenv("HOTSPARE_CATALOG", raising=False)
    yield home
