"""The environment hotspare's child processes (the llama.cpp engine, vLLM) start with: this process's
own, less every secret in it.

Neither child needs a key: the engine reads a model file, vLLM serves a verified local directory
offline. A child that inherits `OPENAI_API_KEY` or `HOTSPARE_API_KEYS` only widens what a crash
dump, a `/proc/<pid>/environ` read or a compromised dependency in it could leak. So a variable is
left out when its name looks like a secret (`is_secret_name`: `*_KEY`, `*_KEYS`, `*_TOKEN`,
`*_SECRET`, `*_PASSWORD`, `*_CREDENTIALS`, or holding `API_KEY`, `SECRET` or `PASSWORD`; not e.g.
`TOKENIZERS_PARALLELISM`), or when the config names it as an upstream's `api_key = "env:NAME"`
(`mark_secret`, called once at startup: such a name can be anything).

`child_environment()` builds the mapping for `subprocess` (vLLM). multiprocessing's spawn (the
engine) takes no environment, only the process's own, so `scrubbed_environ()` removes the secrets
from `os.environ` while a child starts and puts them back after, under a lock. Keys are read into
memory at startup (access keys, upstream `env:` keys), so nothing reads them during that window.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping

_SECRET_NAME = re.compile(
    r"(^|_)(KEYS?|TOKENS?|SECRETS?|PASSWORDS?|PASSWD|CREDENTIALS?)$|API_?KEY|SECRET|PASSWORD",
    re.IGNORECASE,
)
_configured: set[str] = set()
_lock = threading.Lock()


def mark_secret(name: str) -> None:
    """Treat environment variable `name` as a secret from now on (an upstream's `env:` key)."""
    _configured.add(name)


def is_secret_name(name: str) -> bool:
    return name in _configured or _SECRET_NAME.search(name) is not None


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its secrets, plus `extra` (which may hold a child's own)."""
    kept = {name: value for name, value in os.environ.items() if not is_secret_name(name)}
    return kept | dict(extra or {})


@contextlib.contextmanager
def scrubbed_environ() -> Iterator[None]:
    """`os.environ` without its secrets for the duration (for a child that inherits it)."""
    with _lock:
        removed = {name: os.environ.pop(name) for name in list(os.environ) if is_secret_name(name)}
        try:
            yield
        finally:
            os.environ.update(removed)
