"""Which environment variables hotspare's child processes never inherit (core/environment.py)."""

from __future__ import annotations

import os

import pytest

from hotspare.core import environment
from hotspare.core.environment import child_environment, is_secret_name, scrubbed_environ

SECRETS = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "HOTSPARE_API_KEYS",
    "AWS_SECRET_ACCESS_KEY",
    "HF_TOKEN",
    "GITHUB_TOKEN",
    "DB_PASSWORD",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "apikey",
    "MY_CLIENT_SECRET",
]
KEPT = [
    "PATH",
    "HOME",
    "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES",
    "HOTSPARE_HOME",
    "MONKEY",
    "KEYBOARD",
]


@pytest.mark.parametrize("name", SECRETS)
def test_secret_looking_names_are_secrets(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", KEPT)
def test_ordinary_names_are_not(name: str) -> None:
    assert not is_secret_name(name)


def test_configured_env_names_are_secrets_whatever_they_look_like(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(environment, "_configured", set())
    monkeypatch.setenv("PROD_OPENAI", "sk-prod-0123456789")
    assert "PROD_OPENAI" in child_environment()
    environment.mark_secret("PROD_OPENAI")
    assert "PROD_OPENAI" not in child_environment({"VLLM_API_KEY": "own"})
    assert child_environment({"VLLM_API_KEY": "own"})["VLLM_API_KEY"] == "own"  # a child's own key stays


def test_scrubbed_environ_puts_everything_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-0123456789")
    before = dict(os.environ)
    with scrubbed_environ():
        assert "OPENAI_API_KEY" not in os.environ and os.environ["PATH"] == before["PATH"]
    assert dict(os.environ) == before
