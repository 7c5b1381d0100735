from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from hotspare.config import Settings
from hotspare.core.errors import ConfigError
from hotspare.router.config import Mode

from .factories import router_config

EXAMPLE = """
mode = "auto"
[[upstreams]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "forward"
models = ["claude-*"]
[upstreams.timeouts]
connect_s = 2
first_token_s = 10
idle_s = 15
total_s = 600
[local]
model = "smollm2-135m-instruct"
"""


def test_the_issue_example_parses() -> None:
    settings = Settings.model_validate(tomllib.loads(EXAMPLE))
    config = settings.router_config()
    upstream = config.upstreams[0]
    assert config.effective_mode is Mode.AUTO
    assert upstream.serves("claude-sonnet-4-5") and not upstream.serves("gpt-4o")
    assert upstream.timeouts.first_token_s == 10
    assert upstream.resolve_env_key() is None
    assert settings.local.model == "smollm2-135m-instruct"


def test_default_mode_follows_the_upstreams() -> None:
    assert router_config({}).effective_mode is Mode.LOCAL_ONLY
    assert router_config(tomllib.loads(EXAMPLE.replace('mode = "auto"', ""))).effective_mode is Mode.AUTO


def test_rename_maps_client_names() -> None:
    config = router_config(
        {
            "upstreams": [
                {"name": "o", "kind": "openai", "base_url": "http://x", "rename": {"gpt-4o": "llama3"}}
            ]
        }
    )
    assert config.upstreams[0].upstream_model("gpt-4o") == "llama3"
    assert config.upstreams[0].upstream_model("other") == "other"


@pytest.mark.parametrize(
    ("patch", "quoted"),
    [
        ({"kind": "gemini"}, "'gemini'"),
        ({"base_url": "api.anthropic.com"}, "'api.anthropic.com'"),
        ({"colour": "red"}, "colour"),
        ({"name": "a b"}, "'a b'"),
        ({"timeouts": {"connect_s": -1}}, "-1"),
    ],
)
def test_errors_quote_the_bad_value(patch: dict[str, object], quoted: str) -> None:
    upstream = {"name": "a", "kind": "anthropic", "base_url": "https://x", **patch}
    with pytest.raises(ValidationError) as info:
        router_config({"upstreams": [upstream]})
    assert quoted in str(info.value)
    assert "upstreams.0" in str(info.value)


def test_a_literal_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as info:
        router_config(
            {
                "upstreams": [
                    {"name": "a", "kind": "openai", "base_url": "http://x", "api_key": "sk-secret123"}
                ]
            }
        )
    message = str(info.value)
    assert 'must be "forward" or "env:VARIABLE_NAME"' in message
    assert "sk-secret123" not in message


def test_env_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = router_config(
        {"upstreams": [{"name": "a", "kind": "openai", "base_url": "http://x", "api_key": "env:HS_TEST_KEY"}]}
    )
    monkeypatch.delenv("HS_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="HS_TEST_KEY"):
        config.upstreams[0].resolve_env_key()
    monkeypatch.setenv("HS_TEST_KEY", "k1")
    assert config.upstreams[0].resolve_env_key() == "k1"


def test_duplicate_names_and_empty_upstream_only_are_rejected() -> None:
    up = {"name": "a", "kind": "openai", "base_url": "http://x"}
    with pytest.raises(ValidationError, match="'a' appears 2 times"):
        router_config({"upstreams": [up, up]})
    with pytest.raises(ValidationError, match="upstream-only"):
        router_config({"mode": "upstream-only"})


@pytest.mark.parametrize(
    ("patch", "quoted"),
    [
        ({"timeouts": {"connect_s": "2"}}, "'2'"),
        ({"breaker": {"consecutive_failures": 5.0}}, "5.0"),
        ({"max_context_tokens": "8192"}, "'8192'"),
        ({"hedge_delay_s": True}, "True"),
    ],
)
def test_upstream_values_are_taken_as_toml_typed_them(patch: dict[str, object], quoted: str) -> None:
    # As strict as every other section (core/config.py): a quoted number or a float count is refused.
    upstream = {"name": "a", "kind": "openai", "base_url": "http://x", **patch}
    with pytest.raises(ValidationError) as info:
        router_config({"upstreams": [upstream]})
    assert quoted in str(info.value) and "upstreams.0" in str(info.value)


def test_an_integer_is_still_a_number_of_seconds() -> None:
    upstream = {"name": "a", "kind": "openai", "base_url": "http://x", "timeouts": {"connect_s": 3}}
    assert router_config({"upstreams": [upstream]}).upstreams[0].timeouts.connect_s == 3.0
