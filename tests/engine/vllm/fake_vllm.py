"""A stand-in for the `vllm` command: parses `vllm serve` the way hotspare calls it, refuses unknown
flags, checks the model directory, and serves vLLM's HTTP API on the given port: /health,
/v1/models, /tokenize, and /v1/chat/completions (JSON or SSE stream, with the usage chunk).

The answer is JSON text reporting what the engine was started with and what the request asked
for, so tests can see both through any client. A last user message starting with "CALL " is
answered with a tool call in hotspare's fallback syntax instead. Like `vllm serve`, it requires
`Authorization: Bearer $VLLM_API_KEY` on /v1 and /tokenize when that variable is set (401 without),
and it reports which secret-looking variables it inherited. Environment knobs:
FAKE_VLLM_START_DELAY_S (seconds before listening, like a model load), FAKE_VLLM_CHUNK_DELAY_S
(between streamed chunks)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK_CHARS = 16
API_KEY = os.environ.get("VLLM_API_KEY")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--served-model-name", required=True)
    serve.add_argument("--host", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--gpu-memory-utilization", type=float, required=True)
    serve.add_argument("--max-model-len", type=int, required=True)
    serve.add_argument("--tensor-parallel-size", type=int, required=True)
    serve.add_argument("--enable-prefix-caching", action="store_true")
    serve.add_argument("--chat-template")
    return parser.parse_args(argv)


def answer_text(started: dict[str, Any], request: dict[str, Any]) -> str:
    last = request["messages"][-1]["content"]
    if last.startswith("CALL "):
        call = {"name": "get_weather", "arguments": {"city": last[5:]}}
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    asked = {k: request.get(k) for k in ("stop", "max_tokens", "top_k", "response_format")}
    return json.dumps({**started, "messages": request["messages"], **asked})


def chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}
    return f"data: {json.dumps({**body, 'choices': choices, **extra})}\n\n".encode()


def main() -> None:
    args = parse(sys.argv[1:])
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no config.json in {args.model}")
    started = {
        "model_dir": args.model,
        "prefix_caching": args.enable_prefix_caching,
        "max_model_len": args.max_model_len,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "api_key_required": API_KEY is not None,
        "inherited_secrets": sorted(k for k in os.environ if "KEY" in k and k != "VLLM_API_KEY"),
    }
    chunk_delay_s = float(os.environ.get("FAKE_VLLM_CHUNK_DELAY_S", "0"))
    name = args.served_model_name

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if API_KEY is not None and self.headers.get("Authorization") != f"Bearer {API_KEY}":
                self._json(401, {"error": "Unauthorized"})
            elif request.get("model") != name:
                self._json(404, {"error": {"message": f"The model `{request.get('model')}` does not exist."}})
            elif self.path == "/tokenize":
                text = "".join(m["content"] for m in request["messages"])
                self._json(200, {"count": len(text.split()), "max_model_len": args.max_model_len})
            elif self.path == "/v1/chat/completions" and request.get("max_tokens", 1) > args.max_model_len:
                self._json(400, {"error": {"message": "max_tokens is too large", "type": "BadRequestError"}})
            elif self.path == "/v1/chat/completions":
                text = answer_text(started, request)
                if request.get("stream"):
                    self._stream(text, request)
                else:
                    self._json(200, self._completion(text))
            else:
                self._json(404, {"error": {"message": "not found"}})

        def _completion(self, text: str) -> dict[str, Any]:
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

        def _stream(self, text: str, request: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
            for piece in pieces:
                delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                self.wfile.write(chunk(name, [delta]))
                self.wfile.flush()
                time.sleep(chunk_delay_s)
            self.wfile.write(chunk(name, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if (request.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 7,
                    "completion_tokens": len(pieces),
                    "total_tokens": 7 + len(pieces),
                }
                self.wfile.write(chunk(name, [], usage=usage))
            self.wfile.write(b"data: [DONE]\n\n")

    time.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY_S", "0")))
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
