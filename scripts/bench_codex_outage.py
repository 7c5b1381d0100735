#!/usr/bin/env python
"""The Codex CLI's next turn after its provider fails, end to end with the real client.

    python -m scripts.bench_codex_outage [--runs N] [--variants on,off] [--json FILE]

One run (the agent-outage issue's Codex scenario):
1. a fake OpenAI provider on 127.0.0.1 streams a short Responses API answer; `hotspare serve` has it as
   its one `kind = "openai"` upstream, `context_policy = "fit"`, the embedded model, all else default
   (`warm_conversations` on or off: the variant);
2. `codex exec "Say hello in five words."`: answered upstream;
3. hotspare is left until its engine is idle (at most 120 s);
4. the provider then answers every request with 503 `server_error`;
5. `codex exec resume --last "Now say goodbye in five words."`: answered locally.

Codex runs with its defaults but for web search (a built-in tool the local model cannot honour).
Printed as bench_agent_outage.py prints them: turn 2's wall time, its main request's first token and
wall time, the cached share of its prompt, ratios warm-up on / off. Targets: wall <= 20 s, first
token <= 2 s, cached >= 90 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scripts.bench_agent_outage import _brief, _serve, _start_hotspare, _wait_idle, report, run_cli
from scripts.claude_code_check import npm_cli, proxy_app

PREFIX = Path.home() / ".cache" / "hotspare" / "codex"
ANSWER = "Hello there, friend, welcome!"
TURN_1 = "Say hello in five words."
TURN_2 = "Now say goodbye in five words."


def codex_binary() -> Path | None:
    """The `codex` to run: $HOTSPARE_CODEX, else the npm package's latest release."""
    if os.environ.get("HOTSPARE_CODEX"):
        return Path(os.environ["HOTSPARE_CODEX"])
    return npm_cli("@openai/codex", "codex", PREFIX)


class FakeOpenAI:
    """The provider: a short streamed Responses answer, or 503 server_error once `failing` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.num = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "gpt-5", "object": "model"}]})

    async def responses(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.failing:
            error = {
                "message": "The server is overloaded.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=503)
        self.num += 1
        response = _response(f"resp_fake{self.num:04d}", body.get("model", "gpt-5"))
        if not body.get("stream"):
            return JSONResponse({**response, "status": "completed", "output": [_item("completed", ANSWER)]})
        return StreamingResponse(_events(response), media_type="text/event-stream")


def _response(response_id: str, model: str) -> dict[str, Any]:
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "error": None, "incomplete_details": None, "model": model, "output": [], "tools": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "usage": None,
    }  # fmt: skip


def _item(status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": "msg_fake01", "type": "message", "status": status, "role": "assistant", "content": content}


async def _events(response: dict[str, Any]) -> Any:
    where = {"item_id": "msg_fake01", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": ANSWER, "annotations": []}
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 16,
    }
    done = {**response, "status": "completed", "output": [_item("completed", ANSWER)], "usage": usage}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": response}),
        ("response.in_progress", {"response": response}),
        ("response.output_item.added", {"output_index": 0, "item": _item("in_progress", None)}),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        ("response.output_text.delta", {**where, "delta": ANSWER, "logprobs": []}),
        ("response.output_text.done", {**where, "text": ANSWER, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": _item("completed", ANSWER)}),
        ("response.completed", {"response": done}),
    ]  # fmt: skip
    for number, (kind, fields) in enumerate(events):
        payload = {"type": kind, "sequence_number": number, **fields}
        yield f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


async def _codex(binary: Path, base_url: str, workdir: Path, *args: str) -> tuple[int, str, float]:
    provider = f'{{name="provider", base_url="{base_url}/v1", wire_api="responses", env_key="PROVIDER_KEY"}}'
    command = [
        str(binary), "exec", *args[:-1], "--skip-git-repo-check", "-m", "gpt-5",
        "-c", "model_provider=provider", "-c", f"model_providers.provider={provider}",
        "-c", 'web_search="disabled"', args[-1],
    ]  # fmt: skip
    env = {
        **os.environ,
        "CODEX_HOME": str(workdir / "codex-home"),
        "PROVIDER_KEY": "sk-proj-bench-0123456789",
    }
    return await run_cli(command, env, workdir / "project")


async def run_once(binary: Path, warm: bool) -> dict[str, Any]:
    provider = FakeOpenAI()
    up_server, up_task, up_url = await _serve(provider.app())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for folder in ("project", "codex-home"):
            (workdir / folder).mkdir()
        hotspare, url = await asyncio.to_thread(_start_hotspare, workdir, up_url, warm, "openai")
        records: list[dict[str, Any]] = []
        proxy, proxy_task, proxy_url = await _serve(proxy_app(url, records))
        try:
            code1, answer1, wall1 = await _codex(binary, proxy_url, workdir, TURN_1)
            num_turn1 = len(records)
            waited = await _wait_idle(url)
            provider.failing = True
            code2, answer2, wall2 = await _codex(binary, proxy_url, workdir, "resume", "--last", TURN_2)
        finally:
            proxy.should_exit = up_server.should_exit = True
            await asyncio.gather(proxy_task, up_task)
            hotspare.terminate()
            await asyncio.to_thread(hotspare.wait, 30)
            log_tail = (workdir / "hotspare.log").read_text(errors="replace")[-6000:]
    turn2 = [r for r in records[num_turn1:] if r["path"].startswith("/v1/responses")]
    answered = [r for r in turn2 if r.get("status") == 200] or turn2
    main = _brief(max(answered, key=lambda r: r["body"].get("bytes", 0))) if answered else {}
    return {
        "warm": warm,
        "turn1": {"exit": code1, "wall_s": round(wall1, 2), "answer": answer1[-200:]},
        "idle_wait_s": round(waited, 1),
        "turn2": {"exit": code2, "wall_s": round(wall2, 2), "answer": answer2[-300:], "main": main,
                  "requests": [_brief(r) for r in records[num_turn1:]]},
        "hotspare_log_tail": log_tail if code2 != 0 or os.environ.get("BENCH_LOG") else "",
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default="on,off")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    binary = codex_binary()
    if binary is None:
        print("bench_codex_outage: npm is needed to install the Codex CLI", file=sys.stderr)
        return 2
    variants = [v == "on" for v in args.variants.split(",")]
    runs: dict[bool, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.runs):
        for warm in variants:
            run = asyncio.run(run_once(binary, warm))
            runs[warm].append(run)
            print(json.dumps(run), flush=True)
    report(runs, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
