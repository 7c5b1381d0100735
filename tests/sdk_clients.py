"""Official SDK clients for a running `hotspare serve`, closed after the test that made them (the root
conftest closes them): an unclosed client leaks its sockets, which warnings-as-errors turns into a
failure of whichever test happens to be running when they are collected."""

from __future__ import annotations

import anthropic
import openai

from tests.serving import RunningServer

_open: list[anthropic.Anthropic | openai.OpenAI] = []


def openai_client(server: RunningServer, api_key: str = "x", timeout_s: float = 60.0) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=timeout_s
    )
    _open.append(client)
    return client


def anthropic_client(
    server: RunningServer, api_key: str = "x", timeout_s: float = 60.0
) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout_s)
    _open.append(client)
    return client


def close_all() -> None:
    while _open:
        _open.pop().close()
