#!/usr/bin/env python
"""Claude Code on the local model, end to end: `claude -p "Say hello"` against hotspare in local-only mode.

    python -m scripts.claude_code_check [--prompt TEXT] [--record FILE] [--timeout-s N]

1. installs Claude Code (`@anthropic-ai/claude-code`, npm) into ~/.cache/hotspare/claude-code unless
   it is there (or `CLAUDE_BIN` names a `claude` to use);
2. starts `hotspare serve` on a free port, local-only, with `context_policy = "fit"` (Claude Code's first
   request is ~10k tokens, more than the embedded model's 8k context) and `media = "placeholder"`;
3. puts a recording proxy in front of it and runs `claude -p` with `ANTHROPIC_BASE_URL` pointing there;
4. prints Claude Code's exit code and answer, and the shape of every request it sent (method, path,
   headers of interest, top-level body fields with sizes) with hotspare's status and x-hotspare-*
   headers; `--record FILE` writes them as JSON.

Exits 0 only if claude exited 0 with a non-empty answer. Needs node and npm (exit 2 if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PREFIX = Path.home() / ".cache" / "hotspare" / "claude-code"
SHOWN_HEADERS = ("anthropic-version", "anthropic-beta", "x-app", "user-agent", "content-type")
SECRET_HEADERS = ("x-api-key", "authorization")


def claude_binary() -> Path | None:
    """The `claude` to run: $CLAUDE_BIN, else the npm package's latest release (see `npm_cli`)."""
    if os.environ.get("CLAUDE_BIN"):
        return Path(os.environ["CLAUDE_BIN"])
    return npm_cli("@anthropic-ai/claude-code", "claude", PREFIX)


def npm_cli(package: str, command: str, prefix: Path) -> Path | None:
    """`command` from npm `package`'s latest release, installed under `prefix` (kept; replaced when
    the registry has a newer release). `@latest` by name: a bare `npm install` picks the newest release
    whose `engines` admit this machine's Node, and Claude Code 2.1.198+ asks for Node 22 (a native
    binary that Node does not run): on Node 20 npm silently installed 2.1.197, whose `--continue`
    turn changes its own system prompt. None without npm."""
    binary = prefix / "node_modules" / ".bin" / command
    if shutil.which("npm") is None:
        return binary if binary.exists() else None
    latest = subprocess.run(["npm", "view", f"{package}@latest", "version"], capture_output=True, text=True)
    manifest = prefix / "node_modules" / package / "package.json"
    installed = json.loads(manifest.read_text()).get("version") if manifest.exists() else None
    if binary.exists() and (latest.returncode != 0 or latest.stdout.strip() == installed):
        return binary  # current, or the registry cannot say
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", str(prefix), f"{package}@latest"], check=True)
    return binary


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def body_shape(raw: bytes) -> dict[str, Any]:
    """Top-level fields of a JSON body with their sizes: what was sent, never the content."""
    try:
        body = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return {"bytes": len(raw), "json": False}
    if not isinstance(body, dict):
        return {"bytes": len(raw)}
    shape: dict[str, Any] = {"bytes": len(raw)}
    for key, value in body.items():
        if key in (
            "max_tokens",
            "stream",
            "model",
            "thinking",
            "output_config",
            "tool_choice",
            "temperature",
        ):
            shape[key] = value
        elif key in ("context_management", "metadata"):
            shape[key] = sorted(value) if isinstance(value, dict) else value
        elif key == "tools" and isinstance(value, list):
            shape[key] = {
                "count": len(value),
                "chars": len(json.dumps(value)),
                "names": [t.get("name") for t in value],
            }
        elif key == "messages" and isinstance(value, list):
            blocks = [
                b.get("type") for m in value if isinstance(m.get("content"), list) for b in m["content"]
            ]
            shape[key] = {"count": len(value), "block_types": sorted(set(blocks))}
        elif key == "system":
            shape[key] = {"chars": len(json.dumps(value))}
        else:
            shape[key] = type(value).__name__
    return shape


def proxy_app(target: str, records: list[dict[str, Any]], dump: Path | None = None) -> Starlette:
    client = httpx.AsyncClient(base_url=target, timeout=None)

    async def forward(request: Request) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "headers": {k: v for k, v in request.headers.items() if k in SHOWN_HEADERS},
            "auth_headers": [k for k in request.headers if k in SECRET_HEADERS],
            "body": body_shape(raw),
        }
        records.append(record)
        if dump is not None and raw:
            (dump / f"request-{len(records)}.json").write_bytes(raw)
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        upstream = await client.send(
            client.build_request(request.method, record["path"], content=raw, headers=headers), stream=True
        )
        record["status"] = upstream.status_code
        record["hotspare"] = {k: v for k, v in upstream.headers.items() if k.startswith("x-hotspare")}
        out_headers = {
            k: v for k, v in upstream.headers.items() if k not in ("content-length", "transfer-encoding")
        }

        started = time.monotonic()
        events: dict[str, int] = {}
        reader = _AnswerReader(record, arrived)

        async def body() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    for line in chunk.decode(errors="replace").splitlines():
                        if line.startswith("event: "):
                            events[line[7:]] = events.get(line[7:], 0) + 1
                    reader.feed(chunk)
                    yield chunk
            finally:
                record["sse_events"] = events
                record["seconds"] = round(time.monotonic() - started, 1)
                record["wall_s"] = round(time.monotonic() - arrived, 3)
                reader.close()
                await upstream.aclose()

        return StreamingResponse(body(), status_code=upstream.status_code, headers=out_headers)

    return Starlette(
        routes=[Route("/{path:path}", forward, methods=["GET", "POST", "HEAD", "PUT", "DELETE"])]
    )


class _AnswerReader:
    """Reads an Anthropic (SSE or JSON) or streamed Responses API answer as it passes into `record`:
    `ttft_s` (request arrival to the first content delta), `usage` (uncached input, cache read and
    output tokens) and `stop_reason`."""

    def __init__(self, record: dict[str, Any], arrived: float) -> None:
        self.record = record
        self.arrived = arrived
        self.buffer = b""
        self.usage: dict[str, int] = {}
        self.record["usage"] = self.usage

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                self._event(line[6:])

    def close(self) -> None:
        if self.buffer.startswith(b"{"):  # a JSON (not streamed) answer
            self._event(self.buffer, whole=True)

    def _event(self, data: bytes, whole: bool = False) -> None:
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind in ("content_block_delta", "response.output_text.delta") and "ttft_s" not in self.record:
            self.record["ttft_s"] = round(time.monotonic() - self.arrived, 3)
        if kind == "response.completed":  # the Responses API: input_tokens include the cached ones
            self._responses_usage(event.get("response") or {})
            return
        message = event.get("message") if kind == "message_start" else event if whole else None
        usage = (message or {}).get("usage") or (event.get("usage") if kind == "message_delta" else None)
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if isinstance(v, int)})
        stop = (event.get("delta") or {}).get("stop_reason") if kind == "message_delta" else None
        if whole:
            stop = event.get("stop_reason")
            self.record.setdefault("ttft_s", round(time.monotonic() - self.arrived, 3))
        if stop:
            self.record["stop_reason"] = stop

    def _responses_usage(self, response: dict[str, Any]) -> None:
        usage = response.get("usage") or {}
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
        self.usage.update(
            input_tokens=usage.get("input_tokens", 0) - cached,
            cache_read_input_tokens=cached,
            output_tokens=usage.get("output_tokens", 0),
        )
        details = response.get("incomplete_details") or {}
        self.record["stop_reason"] = details.get("reason") or response.get("status")


def start_hotspare(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = workdir / "hotspare.toml"
    config.write_text('mode = "local-only"\n[local]\ncontext_policy = "fit"\n[api]\nmedia = "placeholder"\n')
    log = workdir / "hotspare.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hotspare", "serve", "--port", str(port), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"hotspare serve exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("hotspare serve was not ready in 180 s")


async def run_claude(binary: Path, base_url: str, prompt: str, timeout_s: float) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-hotspare-local",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    env.pop("ANTHROPIC_AUTH_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        str(binary), "-p", prompt, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return 124, out.decode(errors="replace"), err.decode(errors="replace")
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def check(
    binary: Path, target: str, prompt: str, timeout_s: float, dump: Path | None
) -> tuple[int, str, str, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(proxy_app(target, records, dump), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        code, out, err = await run_claude(binary, f"http://127.0.0.1:{port}", prompt, timeout_s)
    finally:
        server.should_exit = True
        await serving
    return code, out, err, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="Say hello")
    parser.add_argument("--record", type=Path)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--dump", type=Path, help="write each request body to DIR/request-N.json")
    args = parser.parse_args()
    binary = claude_binary()
    if binary is None:
        print("claude_code_check: node and npm are needed to install Claude Code", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        process, url, log = start_hotspare(Path(tmp))
        try:
            began = time.monotonic()
            code, out, err, records = asyncio.run(check(binary, url, args.prompt, args.timeout_s, args.dump))
            elapsed_s = time.monotonic() - began
        finally:
            process.terminate()
            process.wait(30)
        hotspare_log = log.read_text(errors="replace")
    served = [json.loads(line) for line in hotspare_log.splitlines() if line.startswith('{"id"')]
    report = {
        "exit_code": code,
        "answer": out.strip(),
        "stderr": err.strip()[-2000:],
        "seconds": round(elapsed_s, 1),
        "served": served,
    }
    print(json.dumps({**report, "requests": records}, indent=2))
    if args.record is not None:
        args.record.write_text(json.dumps({**report, "requests": records}, indent=2) + "\n")
    if code != 0 or not out.strip():
        print(hotspare_log[-4000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
