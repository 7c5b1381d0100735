"""Settings from TOML: defaults, every section, and errors that name the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotspare.app import engine_config
from hotspare.config import ApiSettings, Settings, load_settings
from hotspare.core.errors import ConfigError
from hotspare.engine.attention import FlashAttention
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hotspare.toml"
    path.write_text(text)
    return path


def test_no_file_means_the_documented_defaults() -> None:
    settings = load_settings(None)
    assert settings == Settings()
    assert (settings.server.host, settings.server.port, settings.server.heartbeat_s) == (
        "127.0.0.1",
        8765,
        10.0,
    )
    assert (settings.local.model, settings.local.context_tokens) == ("smollm2-135m-instruct", 0)
    assert (settings.local.max_idle_kv_tokens, settings.local.persist_max_mib) == (4096, 512)
    assert settings.api.allowed_models is None


def test_the_idle_kv_cap_and_the_persisted_bytes_are_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[local]\nmax_idle_kv_tokens = 0\npersist_max_mib = 64\n"))
    assert (settings.local.max_idle_kv_tokens, settings.local.persist_max_mib) == (0, 64)


@pytest.mark.parametrize("value", ["auto", "on", "off"])
def test_flash_attention_is_forced_or_chosen_per_host(tmp_path: Path, value: str) -> None:
    assert Settings().local.flash_attention is FlashAttention.AUTO
    settings = load_settings(write(tmp_path, f'[local]\nflash_attention = "{value}"\n'))
    assert settings.local.flash_attention is FlashAttention(value)


def test_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nhost = "0.0.0.0"\nport = 9000\nheartbeat_s = 2.5\n'
        '[local]\nmodel = "gemma3-270m-q4km"\ncontext_tokens = 1024\nnum_threads = 2\n'
        '[api]\nallowed_models = ["gpt-4o"]\n',
    )
    settings = load_settings(path)
    assert (settings.server.host, settings.server.port, settings.server.heartbeat_s) == ("0.0.0.0", 9000, 2.5)
    assert (settings.local.model, settings.local.context_tokens, settings.local.num_threads) == (
        "gemma3-270m-q4km",
        1024,
        2,
    )
    assert settings.api.allowed_models == ("gpt-4o",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nprot = 1\n", "[server] prot: unknown key"),
        (
            "[server]\nport = 70000\n",
            "[server] port: Input should be less than or equal to 65535 (got 70000)",
        ),
        ('[server]\nport = "80"\n', "[server] port: Input should be a valid integer"),
        (
            "[local]\ncontext_tokens = -1\n",
            "[local] context_tokens: Input should be greater than or equal to 0",
        ),
        (
            "[local]\nmax_idle_kv_tokens = -1\n",
            "[local] max_idle_kv_tokens: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            "[local]\npersist_max_mib = 0\n",
            "[local] persist_max_mib: Input should be greater than or equal to 1",
        ),
        (
            '[local]\nflash_attention = "yes"\n',
            "[local] flash_attention: Input should be 'auto', 'on' or 'off' (got 'yes')",
        ),
        (
            "[local]\nflash_attention = true\n",
            "[local] flash_attention: Input should be 'auto', 'on' or 'off' (got True)",
        ),
        ("[nonsense]\n", "nonsense: unknown key"),
        ('[api]\nallowed_models = "gpt-4o"\n', "[api] allowed_models: Input should be a valid tuple"),
    ],
)
def test_bad_values_are_named_with_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message.startswith(f"invalid config file {path}: ")
    assert problem in caught.value.message


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.toml: No such file"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("allowed", "name", "allows"),
    [
        (None, "anything", True),
        (("gpt-4o",), "gpt-4o", True),
        (("gpt-4o",), "local", True),
        (("gpt-4o",), "x", False),
    ],
)
def test_allowlist(allowed: tuple[str, ...] | None, name: str, allows: bool) -> None:
    assert ApiSettings(allowed_models=allowed).allows(name, local_model="local") is allows


def test_the_local_sampling_settings_reach_the_engine_and_zero_turns_them_off(tmp_path: Path) -> None:
    entry = load_catalog().get(DEFAULT_MODEL)
    served = engine_config(load_settings(None), entry)
    assert (served.default_min_p, served.noise_stop_nats, served.max_answer_tokens) == (0.05, 4.5, 512)
    path = write(tmp_path, "[local]\ndefault_min_p = 0\nnoise_stop_nats = 0\n")
    off = engine_config(load_settings(path), entry)
    assert (off.default_min_p, off.noise_stop_nats) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="default_min_p"):
        load_settings(write(tmp_path, "[local]\ndefault_min_p = 1.5\n"))
