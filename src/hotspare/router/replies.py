"""What `Router.route` returns: bytes already in the client's format, or core events to render."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hotspare.core.errors import AuthenticationFailed, InvalidRequest, NotFound, UpstreamError
from hotspare.core.types import StreamEvent
from hotspare.router.member import Member
from hotspare.upstream.base import ClientCall


@dataclass(frozen=True, slots=True)
class RawReply:
    """`backend` started the answer; `takeovers` names each backend that took it over mid-stream, in
    order, appended while `body` runs (complete once `body` has ended). `errors` gets the message of
    the error event that ended `body` when no one could finish the answer (an upstream's own error
    event ends its stream as an UpstreamError: it is never passed through)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: AsyncIterator[bytes]
    backend: str
    takeovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EventReply:
    """`model`: the name to announce before the Finish says which model answered. `backend` and
    `takeovers` as in RawReply (complete once `events` has ended)."""

    backend: str
    events: AsyncIterator[StreamEvent]
    model: str
    takeovers: list[str] = field(default_factory=list)


Reply = RawReply | EventReply


def backends(reply: Reply) -> list[str]:
    """Every backend that contributed to `reply`'s answer, in order (complete once its body ended)."""
    return [reply.backend, *reply.takeovers]


def client_fault(member: Member, call: ClientCall, exc: UpstreamError) -> RawReply:
    """The upstream's own error goes back unchanged when the client speaks its format; otherwise
    raises it as the client's API would word it (AuthenticationFailed, NotFound, InvalidRequest)."""
    if member.upstream.passes_through(call.api_format) and exc.status is not None:
        headers = (("content-type", exc.content_type),)
        return RawReply(exc.status, headers, single(exc.body), member.upstream.name)
    message = f"upstream {member.upstream.name!r} rejected the request (HTTP {exc.status})"
    if exc.status in (401, 403):
        raise AuthenticationFailed(message) from exc
    if exc.status == 404:
        raise NotFound(message) from exc
    raise InvalidRequest(message) from exc


async def single(body: bytes) -> AsyncIterator[bytes]:
    yield body
