"""A stand-in for the `vllm` command: parses `vllm serve` the way hotspare calls it, refuses unknown
flags, checks the model directory, and serves /health, /v1/models and a minimal
/v1/chat/completions on the given port. The reply reports what it was started with."""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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


def main() -> None:
    args = parse(sys.argv[1:])
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no config.json in {args.model}")
    started = {
        "model_dir": args.model,
        "prefix_caching": args.enable_prefix_caching,
        "max_model_len": args.max_model_len,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }

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
                self._json(
                    200, {"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]}
                )
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions" or request.get("model") != args.served_model_name:
                self._json(404, {"error": {"message": f"no model {request.get('model')!r}"}})
                return
            self._json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": args.served_model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": json.dumps(started)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
