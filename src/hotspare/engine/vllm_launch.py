"""The `vllm serve` command for a catalogue entry (backend "vllm").

vLLM does its own continuous batching and prefix caching, so hotspare runs it as a separate
process and talks to its OpenAI-compatible API on 127.0.0.1: a crash of vLLM cannot take down the
router, and the supervisor can restart it. This module only builds the command; it neither starts
nor imports vllm (which is only installed with `pip install 'hotspare[gpu]'`).

    launch = vllm_launch(entry, model_dir, VllmOptions(port=8801), api_key=secrets.token_urlsafe(32))
    subprocess.Popen(launch.argv, env=child_environment(dict(launch.env)))
    # ready when GET launch.health_url answers 200; chat at launch.base_url + "/chat/completions"

With `api_key`, vLLM requires it (as `Authorization: Bearer`) on its OpenAI API: given in the
environment (`VLLM_API_KEY`), never on the command line, where `ps` would show it. hotspare's own
vLLM backend gives it a random key per start, so no other local process can use the port.

`python -m hotspare.engine.vllm_launch NAME [--port P] [--print]` verifies the model's files and
then runs (or prints) the command, without a key; scripts/gpu-smoke uses it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hotspare.core.environment import child_environment
from hotspare.core.errors import HotspareError, ModelError
from hotspare.models.entry import ModelEntry

API_KEY_ENV = "VLLM_API_KEY"  # read by `vllm serve` as its --api-key


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """How to run vLLM.

    host / port: where its OpenAI API listens; 127.0.0.1 keeps it private to hotspare.
    gpu_memory_utilization: fraction of each GPU's memory vLLM claims (weights + KV cache), 0-1.
    max_model_len_tokens: the longest sequence; 0 = the entry's context_tokens.
    num_gpus: tensor parallel size.
    """

    host: str = "127.0.0.1"
    port: int = 8801
    gpu_memory_utilization: float = 0.9
    max_model_len_tokens: int = 0
    num_gpus: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        if self.max_model_len_tokens < 0 or self.num_gpus < 1:
            raise ValueError("max_model_len_tokens must be >= 0 and num_gpus >= 1")


@dataclass(frozen=True, slots=True)
class VllmLaunch:
    """A ready-to-run vLLM server: `argv`, plus `env` to add to the inherited environment (which may
    hold the key, `VLLM_API_KEY`: never print it)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    base_url: str  # the OpenAI API root, ".../v1"
    health_url: str
    served_model_name: str


def vllm_executable() -> str:
    """$HOTSPARE_VLLM_EXECUTABLE if set (another engine that takes `vllm serve`'s arguments and speaks
    its API, or a stand-in for tests), else the `vllm` command beside this interpreter (same
    virtualenv), else the one on PATH."""
    if override := os.environ.get("HOTSPARE_VLLM_EXECUTABLE"):
        return override
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file():
        return str(beside)
    return shutil.which("vllm") or "vllm"


def vllm_launch(
    entry: ModelEntry,
    model_dir: Path,
    options: VllmOptions | None = None,
    executable: str | None = None,
    api_key: str | None = None,
) -> VllmLaunch:
    """The command serving `entry` from `model_dir` (its verified files: weights, config, tokenizer),
    requiring `api_key` on its API when given. Raises ModelError if the entry is not a vLLM model or
    asks for more context than it has."""
    options = options or VllmOptions()
    if entry.backend != "vllm":
        raise ModelError(f"model {entry.name!r} runs on {entry.backend}, not vllm")
    max_len = options.max_model_len_tokens or entry.context_tokens
    if max_len > entry.context_tokens:
        raise ModelError(
            f"max model length {max_len} exceeds {entry.name!r}'s context of {entry.context_tokens}"
        )
    argv = [
        executable or vllm_executable(),
        "serve",
        str(model_dir),
        "--served-model-name",
        entry.name,
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--gpu-memory-utilization",
        f"{options.gpu_memory_utilization:g}",
        "--max-model-len",
        str(max_len),
        "--tensor-parallel-size",
        str(options.num_gpus),
        # Prefix caching: shared system prompts and multi-turn histories skip their prefill.
        "--enable-prefix-caching",
    ]
    if entry.chat_template is not None:
        argv += ["--chat-template", entry.chat_template]
    # The model directory is complete and verified; vLLM must not reach the Hub or phone home.
    env: tuple[tuple[str, str], ...] = (
        ("HF_HUB_OFFLINE", "1"),
        ("VLLM_NO_USAGE_STATS", "1"),
        ("DO_NOT_TRACK", "1"),
    )
    if api_key is not None:
        env += ((API_KEY_ENV, api_key),)
    url_host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    root = f"http://{url_host}:{options.port}"
    return VllmLaunch(tuple(argv), env, f"{root}/v1", f"{root}/health", entry.name)


def main(argv: Sequence[str] | None = None) -> int:
    from hotspare.models.catalog import load_catalog, resolve_weights

    parser = argparse.ArgumentParser(
        prog="python -m hotspare.engine.vllm_launch", description="Serve a catalogue model with vLLM."
    )
    parser.add_argument("name", help="a catalogue model with backend vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=0)
    parser.add_argument("--catalog", type=Path)
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    try:
        entry = load_catalog(args.catalog).get(args.name)
        model_dir = resolve_weights(entry).parent
        options = VllmOptions(args.host, args.port, args.gpu_memory_utilization, args.max_model_len)
        launch = vllm_launch(entry, model_dir, options)
    except (HotspareError, ValueError) as exc:
        print(f"hotspare: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    if args.print:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env), shlex.join(launch.argv))
        return 0
    os.execvpe(launch.argv[0], list(launch.argv), child_environment(dict(launch.env)))


if __name__ == "__main__":
    sys.exit(main())
