"""Fault-injecting fake providers: real HTTP/1.1 servers on 127.0.0.1 speaking the Anthropic Messages
and OpenAI Chat Completions wire formats (and, on the OpenAI fake, the Responses API at /v1/responses,
which remembers the responses it made so that `previous_response_id` resolves), misbehaving on command.

Raw asyncio sockets (not a framework) so a test can cut a connection mid-chunk, stall, or hang before
the headers. Each server runs its own event loop in a thread; use it as a context manager so it is
always stopped. `script(...)` queues one `Behavior` per chat request (then `default` applies); every
request is recorded as an `Attempt` (credentials replaced by a sha256 of the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["anthropic", "openai"]

RESOURCE_PREFIX = "/v1/responses/"  # GET / DELETE of a response this fake made, GET of its input items
DEFAULT_DELTAS = ("Hello", " from", " the", " fake", " upstream", ".")

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Site Overloaded",
}


@dataclass(frozen=True)
class Behavior:
    """How to answer one chat request. Counts (`*_after`) are numbers of text deltas sent first."""

    status: int = 200
    error_code: str | None = None  # OpenAI `code` / overrides the Anthropic error `type`
    error_message: str = "fake upstream error"
    retry_after: str | None = None
    deltas: tuple[str, ...] = DEFAULT_DELTAS
    cut_after: int | None = None  # drop the connection mid-answer
    stall_after: int | None = None  # stop sending, keep the connection open
    error_after: int | None = None  # an in-band SSE error event
    malformed_after: int | None = None  # an SSE event whose data is not JSON
    malformed_event: bytes | None = (
        None  # with malformed_after: this raw event instead (then the answer goes on)
    )
    omit_terminator: bool = False  # end cleanly without message_stop / [DONE]
    omit_done: bool = False  # state the finish (finish_reason / message_delta), then no terminator
    finish_reason: str | None = None  # the stated finish / stop reason; default: the vendor's normal one
    drip_after: int | None = None  # after this many deltas, only keep-alives (ping / comment) every 0.1 s
    interim_100: bool = False  # a `100 Continue` before the real response
    gzip: bool = False  # gzip the streamed body (content-encoding: gzip)
    gzip_bomb_bytes: int = 0  # with gzip: this many zero bytes compressed into the stream before the deltas
    reject_prefill: bool = False  # 400 (Anthropic's wording) when the last message is an assistant turn
    hang: bool = False  # read the request, never answer
    reset: bool = False  # read the request, close without answering
    headers_delay_s: float = 0.0
    first_delay_s: float = 0.0  # after the headers, before the first delta
    delta_interval_s: float = 0.0
    model: str | None = None  # reported model; default: the requested one
    tool_call: tuple[str, str] | None = None  # (name, JSON arguments): streamed after the text deltas
    # (cut_after == len(deltas) with a tool_call: the connection drops just after the call's start)


@dataclass(frozen=True)
class Attempt:
    at: float  # time.monotonic() when the request was read
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; credentials replaced by "sha256:<hex>"
    body: dict[str, Any] | None
    raw_body: bytes = b""  # the body's bytes as they arrived

    @property
    def is_probe(self) -> bool:
        """A health probe: one that spends no tokens, or hotspare's 1-token recovery probe (a
        non-streaming chat with max_tokens 1); a request about a stored response is not one."""
        if self.path.startswith(RESOURCE_PREFIX):
            return False
        one_token = self.method == "POST" and self.body is not None and self.body.get("max_tokens") == 1
        return self.method == "GET" or self.path.endswith("/count_tokens") or one_token


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class FakeUpstream:
    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.default = Behavior()
        self.probe_status = 200
        self._script: deque[Behavior] = deque()
        self._attempts: list[Attempt] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()  # closed on __exit__
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fake-{kind}", daemon=True)
        self._server: asyncio.Server | None = None
        self._release: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # asyncio drops its reference to a connection's task when the peer goes away; a task still
        # parked (a stall, a hang) would then be garbage-collected while pending. Hold them here.
        self._tasks: set[asyncio.Task[None]] = set()
        self.response_ids: list[str] = []  # Responses API: the ids this fake made, oldest first
        self._kept: dict[str, tuple[list[Any], dict[str, Any]]] = {}  # id -> (input items, response)
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and drop open ones."""
        self._call(self._close_listener())

    def accept(self) -> None:
        """Listen again on the same port (no-op if listening)."""
        if self._server is None:
            self._call(self._listen())

    # --- scripting and records ------------------------------------------------------------------
    def script(self, *behaviors: Behavior) -> None:
        with self._cond:
            self._script.extend(behaviors)

    def attempts(self, *, probes: bool = False) -> list[Attempt]:
        with self._cond:
            return [a for a in self._attempts if a.is_probe == probes]

    def clear(self) -> None:
        with self._cond:
            self._attempts.clear()
            self._script.clear()

    def wait_for(self, num: int, *, probes: bool = False, timeout_s: float = 30.0) -> list[Attempt]:
        """Block until at least `num` chat requests (or probes) were seen; returns them."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for a in self._attempts if a.is_probe == probes) >= num, timeout_s
            )
            seen = [a for a in self._attempts if a.is_probe == probes]
        if not ok:
            raise TimeoutError(f"saw {len(seen)} {'probes' if probes else 'attempts'}, wanted {num}")
        return seen

    # --- server internals (run on the fake's loop) ---------------------------------------------------
    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._release = self._release or asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._serve, sock=sock, backlog=1024)
        self.port = sock.getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()

    async def _shutdown(self) -> None:
        if self._release is not None:
            self._release.set()
        await self._close_listener()

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Behavior | None:
        clean = dict(headers)
        for name in ("authorization", "x-api-key"):
            if name in clean:
                value = clean[name]
                clean[name] = key_hash(value[7:] if value.lower().startswith("bearer ") else value)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        parsed_object = parsed if isinstance(parsed, dict) else None
        attempt = Attempt(time.monotonic(), method, path, clean, parsed_object, body)
        with self._cond:
            self._attempts.append(attempt)
            behavior = None
            if not attempt.is_probe:
                behavior = self._script.popleft() if self._script else self.default
            self._cond.notify_all()
        return behavior

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                behavior = self._record(method, path, headers, body)
                if not await self._respond(writer, method, path, body, behavior):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled: the fake is shutting down (_close_listener). Ending quietly keeps asyncio's
            # stream callback from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _respond(
        self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes, b: Behavior | None
    ) -> bool:
        """Answer one request; False when the connection must end."""
        if b is None:
            return await self._respond_probe(writer, path, body)
        request = json.loads(body or b"{}")
        if b.hang or b.headers_delay_s:
            assert self._release is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), None if b.hang else b.headers_delay_s)
            if b.hang:
                return False
        if b.reset:
            return False
        if b.interim_100:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if b.reject_prefill and _ends_with_assistant(request):
            refusal = "This model does not support assistant message prefill."
            rejection = Behavior(status=400, error_message=refusal)
            await self._send_json(writer, 400, self._error_body(rejection))
            return True
        if b.status >= 400:
            extra = {"retry-after": b.retry_after} if b.retry_after is not None else {}
            await self._send_json(writer, b.status, self._error_body(b), extra)
            return True
        if path.startswith(RESOURCE_PREFIX):
            return await self._respond_resource(writer, method, path)
        model = b.model or str(request.get("model", "fake-model"))
        if path.endswith("/v1/responses"):
            return await self._respond_responses(writer, b, request, model)
        if not request.get("stream"):
            return await self._respond_json(writer, b, request, model)
        return await self._respond_stream(writer, b, request, model)

    async def _respond_probe(self, writer: asyncio.StreamWriter, path: str, body: bytes) -> bool:
        if self.probe_status != 200:
            await self._send_json(
                writer, self.probe_status, self._error_body(Behavior(status=self.probe_status))
            )
        elif path.endswith("/count_tokens"):
            await self._send_json(writer, 200, {"input_tokens": 10})
        elif path.endswith(("/messages", "/chat/completions")):  # a 1-token recovery probe
            request = json.loads(body)
            return await self._respond_json(
                writer, Behavior(deltas=("Hi",)), request, str(request.get("model"))
            )
        else:
            data = [
                {"id": "fake-model", "type": "model", "object": "model", "created_at": "2025-01-01T00:00:00Z"}
            ]
            await self._send_json(writer, 200, {"data": data, "has_more": False, "object": "list"})
        return True

    def _error_body(self, b: Behavior) -> dict[str, Any]:
        if self.kind == "anthropic":
            kind = b.error_code or _ANTHROPIC_ERRORS.get(b.status, "api_error")
            return {
                "type": "error",
                "error": {"type": kind, "message": b.error_message},
                "request_id": "req_fake",
            }
        kind, code = _OPENAI_ERRORS.get(b.status, ("server_error", None))
        return {
            "error": {"message": b.error_message, "type": kind, "param": None, "code": b.error_code or code}
        }

    async def _send_json(
        self, writer: asyncio.StreamWriter, status: int, payload: Any, extra: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        headers = {
            "content-type": "application/json",
            "content-length": str(len(data)),
            "request-id": "req_fake",
            **(extra or {}),
        }
        writer.write(_status_line(status, headers) + data)
        await writer.drain()

    async def _respond_json(
        self, writer: asyncio.StreamWriter, b: Behavior, request: dict[str, Any], model: str
    ) -> bool:
        text = "".join(b.deltas)
        if self.kind == "anthropic":
            payload: dict[str, Any] = {
                "id": "msg_fake01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": len(b.deltas)},
            }
        else:
            payload = {
                "id": "chatcmpl-fake01",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": len(b.deltas),
                    "total_tokens": 10 + len(b.deltas),
                },
            }
        data = json.dumps(payload).encode()
        if b.cut_after is not None:  # headers promise the whole body; half of it arrives
            writer.write(
                _status_line(200, {"content-type": "application/json", "content-length": str(len(data))})
                + data[: len(data) // 2]
            )
            await writer.drain()
            return False
        await self._send_json(writer, 200, payload)
        return True

    async def _respond_responses(
        self, writer: asyncio.StreamWriter, b: Behavior, request: dict[str, Any], model: str
    ) -> bool:
        previous = request.get("previous_response_id")
        if previous is not None and previous not in self.response_ids:
            error = {
                "message": f"Previous response with id '{previous}' not found.",
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            }
            await self._send_json(writer, 404, {"error": error})
            return True
        with self._cond:
            self.response_ids.append(f"resp_fake{len(self.response_ids):04d}")
            response_id = self.response_ids[-1]
        events = ResponsesEvents(model, b, request, response_id)
        given = request.get("input", [])
        text = [{"type": "input_text", "text": given}] if isinstance(given, str) else None
        items = [{"type": "message", "role": "user", "content": text}] if text is not None else given
        with self._cond:
            self._kept[response_id] = (items, events.response("completed", "".join(b.deltas)))
        if request.get("stream"):
            return await self._respond_stream(writer, b, request, model, events)
        if b.cut_after is not None:
            writer.write(_status_line(200, {"content-type": "application/json", "content-length": "999"}))
            await writer.drain()
            return False
        await self._send_json(writer, 200, events.response("completed", "".join(b.deltas)))
        return True

    async def _respond_resource(self, writer: asyncio.StreamWriter, method: str, path: str) -> bool:
        """GET /v1/responses/{id}, GET .../input_items (all on one page, oldest first), DELETE."""
        response_id, _, rest = path.partition("?")[0].removeprefix(RESOURCE_PREFIX).partition("/")
        with self._cond:
            kept = self._kept.pop(response_id, None) if method == "DELETE" else self._kept.get(response_id)
        if kept is None:
            message = f"Response with id '{response_id}' not found."
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
            await self._send_json(writer, 404, {"error": error})
        elif method == "DELETE":
            await self._send_json(writer, 200, {"id": response_id, "object": "response", "deleted": True})
        elif rest == "input_items":
            data = [{"id": f"msg_fakein{i}", **item} for i, item in enumerate(kept[0])]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            page = {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}
            await self._send_json(writer, 200, page)
        else:
            await self._send_json(writer, 200, kept[1])
        return True

    async def _respond_stream(
        self,
        writer: asyncio.StreamWriter,
        b: Behavior,
        request: dict[str, Any],
        model: str,
        events: _Events | None = None,
    ) -> bool:
        # Bytes are coalesced until a pause or the end: one write per burst, as a fast server sends.
        head = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "request-id": "req_fake",
            "openai-organization": "org-fake",
            "anthropic-organization-id": "fake-org-id",
        }
        compressor = zlib.compressobj(wbits=31) if b.gzip else None
        if compressor is not None:
            head["content-encoding"] = "gzip"
        pending = _status_line(200, head)

        def body(data: bytes) -> bytes:
            if compressor is None:
                return _chunk(data)
            out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            return _chunk(out) if out else b""

        if b.gzip_bomb_bytes and compressor is not None:
            pending += body(b"\0" * b.gzip_bomb_bytes)
        if events is None:
            events = (
                AnthropicEvents(model, b) if self.kind == "anthropic" else OpenAIEvents(model, b, request)
            )
        for step in events.steps():
            if isinstance(step, bytes) and step not in (_CUT, _STALL, _DRIP):
                pending += body(step)
                continue
            if not step:  # a zero pause
                continue
            writer.write(pending)
            pending = b""
            await writer.drain()
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif step is _CUT:
                return False
            elif step is _DRIP:
                assert self._release is not None
                while not self._release.is_set():
                    writer.write(body(events.keepalive()))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release.wait(), 0.1)
                return False
            else:  # _STALL
                assert self._release is not None
                await self._release.wait()
                return False
        if compressor is not None:
            pending += _chunk(compressor.flush())
        writer.write(pending + b"0\r\n\r\n")
        await writer.drain()
        return True


_CUT = b"<cut>"
_STALL = b"<stall>"
_DRIP = b"<drip>"


def _ends_with_assistant(request: dict[str, Any]) -> bool:
    messages = request.get("messages")
    return isinstance(messages, list) and bool(messages) and messages[-1].get("role") == "assistant"


def _status_line(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"] + [
        f"{k}: {v}" for k, v in headers.items()
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


@dataclass
class _Events:
    model: str
    b: Behavior
    request: dict[str, Any] = field(default_factory=dict)

    def steps(self) -> Iterator[bytes | float]:
        """Wire events and pauses (floats, seconds); `_CUT` / `_STALL` end the answer abnormally."""
        yield from self.start()
        for i, text in enumerate(self.b.deltas):
            fault = self.fault_before(i)
            if fault is not None:
                yield fault
                if fault is not self.b.malformed_event:
                    return
            yield float(self.b.first_delay_s if i == 0 else self.b.delta_interval_s)
            yield self.delta(text)
        if self.b.drip_after == len(self.b.deltas):
            yield _DRIP
            return
        if self.b.omit_terminator:
            return
        ending = list(self.end())
        yield from ending[:-1] if self.b.omit_done else ending

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def reason(self, normal: str) -> str:
        return self.b.finish_reason or normal

    def fault_before(self, i: int) -> bytes | None:
        b = self.b
        if b.drip_after == i:
            return _DRIP
        if b.cut_after == i:
            return _CUT
        if b.stall_after == i:
            return _STALL
        if b.error_after == i:
            return self.error()
        if b.malformed_after == i:
            return b.malformed_event or b"data: {not json\n\n"
        return None

    def start(self) -> Iterator[bytes]:
        raise NotImplementedError

    def delta(self, text: str) -> bytes:
        raise NotImplementedError

    def end(self) -> Iterator[bytes]:
        raise NotImplementedError

    def error(self) -> bytes:
        raise NotImplementedError


class AnthropicEvents(_Events):
    def start(self) -> Iterator[bytes]:
        message: dict[str, Any] = {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        yield _event("message_start", {"type": "message_start", "message": message})
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield _event("ping", {"type": "ping"})

    def delta(self, text: str) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def end(self) -> Iterator[bytes]:
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        if self.b.tool_call is not None:
            yield from self.tool_use(*self.b.tool_call)
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": self.reason("end_turn" if self.b.tool_call is None else "tool_use"),
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": len(self.b.deltas)},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})

    def tool_use(self, name: str, arguments: str) -> Iterator[bytes]:
        """A tool_use block at index 1, its input in two `input_json_delta`s."""
        block = {"type": "tool_use", "id": "toolu_fake01", "name": name, "input": {}}
        yield _event(
            "content_block_start", {"type": "content_block_start", "index": 1, "content_block": block}
        )
        if self.b.cut_after == len(self.b.deltas):
            yield _CUT
            return
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield _event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 1})

    def error(self) -> bytes:
        return _event(
            "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )

    def keepalive(self) -> bytes:
        return _event("ping", {"type": "ping"})


class OpenAIEvents(_Events):
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": "chatcmpl-fake01",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    def start(self) -> Iterator[bytes]:
        yield self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def delta(self, text: str) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]
        )

    def end(self) -> Iterator[bytes]:
        if self.b.tool_call is not None:
            yield from self.tool_calls(*self.b.tool_call)
        reason = self.reason("stop" if self.b.tool_call is None else "tool_calls")
        yield self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if (self.request.get("stream_options") or {}).get("include_usage"):
            n = len(self.b.deltas)
            yield self._chunk([], usage={"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n})
        yield b"data: [DONE]\n\n"

    def tool_calls(self, name: str, arguments: str) -> Iterator[bytes]:
        """Call 0: its id and name with empty arguments, then the arguments in two pieces."""
        start = {
            "index": 0,
            "id": "call_fake01",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        half = len(arguments) // 2
        for call in (
            start,
            *({"index": 0, "function": {"arguments": p}} for p in (arguments[:half], arguments[half:])),
        ):
            delta = {"tool_calls": [call]}
            yield self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def error(self) -> bytes:
        payload = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return f"data: {json.dumps(payload)}\n\n".encode()


class ResponsesEvents(_Events):
    """The Responses API's stream: one assistant message, numbered events."""

    def __init__(self, model: str, b: Behavior, request: dict[str, Any], response_id: str) -> None:
        super().__init__(model, b, request)
        self.response_id = response_id
        self.sequence_number = 0
        self.text = ""

    def response(self, status: str, text: str | None = None) -> dict[str, Any]:
        output = [] if text is None else [self.message("completed", text)]
        n = len(self.b.deltas)
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10 + n,
        }
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": 1700000000,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": self.request.get("previous_response_id"),
            "tool_choice": "auto",
            "tools": [],
            "usage": usage if status == "completed" else None,
        }

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
        return {
            "id": "msg_fake01",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return _event(kind, payload)

    def start(self) -> Iterator[bytes]:
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))
        yield self.event("response.output_item.added", output_index=0, item=self.message("in_progress", None))
        part = {"type": "output_text", "text": "", "annotations": []}
        yield self.event(
            "response.content_part.added", item_id="msg_fake01", output_index=0, content_index=0, part=part
        )

    def delta(self, text: str) -> bytes:
        self.text += text
        where = {"item_id": "msg_fake01", "output_index": 0, "content_index": 0}
        return self.event("response.output_text.delta", **where, delta=text, logprobs=[])

    def end(self) -> Iterator[bytes]:
        where = {"item_id": "msg_fake01", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": self.text, "annotations": []}
        yield self.event("response.output_text.done", **where, text=self.text, logprobs=[])
        yield self.event("response.content_part.done", **where, part=part)
        yield self.event(
            "response.output_item.done", output_index=0, item=self.message("completed", self.text)
        )
        yield self.event("response.completed", response=self.response("completed", self.text))

    def error(self) -> bytes:
        error = {"type": "server_error", "code": "server_error", "message": "fake failure", "param": None}
        return self.event("error", error=error)
