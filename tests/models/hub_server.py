"""A real HTTP server on 127.0.0.1 that speaks the part of the Hugging Face Hub protocol that
`hf_hub_download` uses (read from huggingface_hub/file_download.py):

    HEAD /{repo}/resolve/{revision}/{file}  -> 200 with X-Repo-Commit, X-Linked-Etag (the sha256 for
                                              LFS files), X-Linked-Size, ETag, Content-Length
    GET  same path [Range: bytes=N-]         -> 200 (or 206 with Content-Range) and the bytes
    unknown repo/file                        -> 404 with X-Error-Code RepoNotFound / EntryNotFound

Faults for tests: `cut_after_bytes` closes the connection after that many body bytes on the next
full GET (huggingface-hub then resumes with a Range request); `serve_instead` serves other bytes
than the advertised file (a hash mismatch); every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

COMMIT = "c0ffee" + "0" * 34


@dataclass
class Recorded:
    method: str
    path: str
    range: str | None


@dataclass
class HubState:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, filename) -> content
    requests: list[Recorded] = field(default_factory=list)
    cut_after_bytes: int | None = None
    serve_instead: dict[tuple[str, str], bytes] = field(default_factory=dict)


_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(with_body=False)

        def do_GET(self) -> None:
            self._serve(with_body=True)

        def _serve(self, with_body: bool) -> None:
            state.requests.append(Recorded(self.command, self.path, self.headers.get("Range")))
            match = _PATH.match(self.path)
            if match is None:
                return self._not_found("RepoNotFound")
            key = (match["repo"], match["file"])
            if key not in state.files:
                code = "EntryNotFound" if any(r == key[0] for r, _ in state.files) else "RepoNotFound"
                return self._not_found(code)
            advertised = state.files[key]
            body = state.serve_instead.get(key, advertised)
            start = 0
            if with_body and (rng := self.headers.get("Range")):
                start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])  # type: ignore[index]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            sha = hashlib.sha256(advertised).hexdigest()
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(advertised)))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if not with_body:
                return
            cut = state.cut_after_bytes
            if cut is not None and start == 0:
                state.cut_after_bytes = None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def _not_found(self, code: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class HubServer:
    """Context manager: starts on a free port, stops (and joins its thread) on exit."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
