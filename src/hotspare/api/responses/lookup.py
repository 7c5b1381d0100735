"""Requests about a response already made: `GET /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`
and `DELETE /v1/responses/{id}`.

Who answers is who made the response. One hotspare made itself (the local model, a cross-format
upstream, a takeover) is answered from the store (api/responses/store.py). One an upstream made in the
Responses format is passed to that upstream unchanged -- its answer, whatever it is, goes back with
`x-hotspare-backend` naming it -- and while that upstream cannot be reached (or answers 5xx/429) a
GET is answered from the store's copy instead; a DELETE then deletes the copy and fails with 503, as
the upstream still holds the response. An id the store does not know (the store is off, or the
response expired here) is asked of each Responses-speaking upstream in chain order, until one
does not answer 404.

`input_items` lists the items of the request that made the response (not earlier turns), each with an
id, with the API's `order` (default desc), `limit` (1-100, default 20) and `after` parameters.

What is forwarded: the path is built from the route's `response_id` (percent-quoted, so an id holding
`/` or `..` stays one path segment) and only the query parameters the API defines for that request
(`FORWARDED_QUERY`); never from `request.url`, which a forged `Host` header could rewrite in Starlette
before 1.0.1 (CVE-2026-48710) into any provider endpoint, called with the operator's key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hotspare.api.responses.store import ResponseStore, StoredTurn
from hotspare.api.serving import BACKEND_HEADER
from hotspare.core.errors import BackendUnavailable, InvalidRequest, NotFound, UpstreamError
from hotspare.core.types import ApiFormat
from hotspare.router.router import Router
from hotspare.upstream.base import Upstream

log = logging.getLogger("hotspare.responses")

MAX_ITEMS_PER_PAGE = 100
RESOURCE_PATH = "/v1/responses/"
FORWARDED_QUERY: dict[tuple[str, bool], frozenset[str]] = {
    # (method, is input_items) -> the query parameters OpenAI's API reference defines for it
    ("GET", False): frozenset({"include", "include[]", "include_obfuscation", "starting_after", "stream"}),
    ("GET", True): frozenset({"after", "before", "include", "include[]", "limit", "order"}),
    ("DELETE", False): frozenset(),
}


class Lookup:
    """One request about response `response_id` by the client whose key is store owner `owner`;
    `store` and `failover` may be None (off)."""

    def __init__(
        self,
        request: Request,
        response_id: str,
        store: ResponseStore | None,
        failover: Router | None,
        owner: str,
    ) -> None:
        self.request = request
        self.response_id = response_id
        self.store = store
        self.failover = failover
        self.owner = owner

    async def retrieve(self) -> Response:
        turn = await self._stored()
        forwarded = await self._forward(turn)
        if forwarded is not None and _is_answer(forwarded):
            return forwarded
        if turn is not None:
            return JSONResponse(turn.response)
        return forwarded or _not_found(self.response_id)

    async def input_items(self) -> Response:
        page = _Page.of(self.request)  # a bad parameter is refused before anything is asked
        turn = await self._stored()
        forwarded = await self._forward(turn, listing=True)
        if forwarded is not None and _is_answer(forwarded):
            return forwarded
        if turn is not None:
            return JSONResponse(page.render(_with_ids(turn)))
        return forwarded or _not_found(self.response_id)

    async def delete(self) -> Response:
        turn = await self._stored()
        forwarded = await self._forward(turn)
        if self.store is not None and turn is not None:
            await asyncio.to_thread(self.store.delete, self.response_id, self.owner)
        if forwarded is not None and _is_answer(forwarded):
            return forwarded
        if turn is not None and turn.is_upstream:
            raise BackendUnavailable(
                f"the response was deleted here, but upstream {turn.backend!r} that made it could not "
                "be reached to delete it there; retry the delete"
            )
        if turn is not None:
            return JSONResponse({"id": self.response_id, "object": "response", "deleted": True})
        return forwarded or _not_found(self.response_id)

    async def _stored(self) -> StoredTurn | None:
        """This client's stored turn, if any. Raises NotFound for another key's: such an id is not
        asked of the upstreams either (they would answer it with the operator's key)."""
        if self.store is None:
            return None
        turn = await asyncio.to_thread(self.store.get, self.response_id, self.owner)
        if turn is None and await asyncio.to_thread(self.store.is_foreign, self.response_id, self.owner):
            _not_found(self.response_id)
        return turn

    def _owners(self, turn: StoredTurn | None) -> list[Upstream]:
        """The upstreams to ask: the one that made it, none if hotspare made it, every candidate
        if it is not stored here."""
        if self.failover is None or (turn is not None and not turn.is_upstream):
            return []
        upstreams = self.failover.passthrough_upstreams(ApiFormat.OPENAI_RESPONSES)
        return [u for u in upstreams if turn is None or u.name == turn.backend]

    async def _forward(self, turn: StoredTurn | None, listing: bool = False) -> Response | None:
        """The first answer from an owner that is not a 404 (else the last 404); None if no owner
        answered at all. `listing`: the request is for the input items."""
        path = self._upstream_path(listing)
        headers = tuple((name.lower(), value) for name, value in self.request.headers.items())
        answer: Response | None = None
        for upstream in self._owners(turn):
            try:
                raw = await upstream.forward(self.request.method, path, headers)
            except UpstreamError as exc:
                log.warning(
                    "%s %s: upstream %s unreachable (%s)", self.request.method, path, upstream.name, exc
                )
                continue
            answer = Response(raw.body, status_code=raw.status, headers=dict(raw.headers))
            answer.headers[BACKEND_HEADER] = upstream.name
            if raw.status != 404:
                break
        return answer

    def _upstream_path(self, listing: bool) -> str:
        """The path to ask an upstream: built from the route's id and the known query parameters."""
        path = RESOURCE_PATH + quote(self.response_id, safe="") + ("/input_items" if listing else "")
        known = FORWARDED_QUERY.get((self.request.method, listing), frozenset())
        query = [(k, v) for k, v in self.request.query_params.multi_items() if k in known]
        return path + (f"?{urlencode(query)}" if query else "")


def _is_answer(response: Response) -> bool:
    """An upstream's answer that stands: anything but a server error or throttling (then the store's
    copy, where there is one, serves instead)."""
    return response.status_code < 500 and response.status_code != 429


def _not_found(response_id: str) -> NoReturn:
    raise NotFound(f"No response found with id {response_id!r}.")


def _with_ids(turn: StoredTurn) -> list[dict[str, Any]]:
    """The turn's input items as the API lists them: each with an id, message content as parts."""
    items = []
    for index, item in enumerate(turn.input):
        listed = {"id": f"{turn.id}_in{index}", **item}
        if listed.get("type", "message") == "message" and isinstance(listed.get("content"), str):
            part = "output_text" if listed.get("role") == "assistant" else "input_text"
            listed = {**listed, "type": "message", "content": [{"type": part, "text": listed["content"]}]}
        items.append(listed)
    return items


class _Page:
    """The `order`, `limit` and `after` query parameters of a list request."""

    def __init__(self, order: str, limit: int, after: str | None) -> None:
        self.order = order
        self.limit = limit
        self.after = after

    @classmethod
    def of(cls, request: Request) -> _Page:
        query = request.query_params
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order: expected 'asc' or 'desc', got {order!r}", "order")
        raw_limit = query.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ITEMS_PER_PAGE:
            raise InvalidRequest(
                f"limit: expected an integer from 1 to {MAX_ITEMS_PER_PAGE}, got {raw_limit!r}", "limit"
            )
        return cls(order, int(raw_limit), query.get("after"))

    def render(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = items if self.order == "asc" else items[::-1]
        if self.after is not None:
            ids = [item["id"] for item in ordered]
            if self.after not in ids:
                raise InvalidRequest(f"after: no item with id {self.after!r} in this list", "after")
            ordered = ordered[ids.index(self.after) + 1 :]
        data = ordered[: self.limit]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > self.limit,
        }
