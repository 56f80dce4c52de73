"""The two requests every agent makes every cycle, answered without the framework's layers.

At 50,000 agents on a 60 s cycle the stub answers about 830 conditional polls and 830 event
batches a second; FastAPI's routing, dependency solving and model validation cost more than
the work itself. ``AgentFastPath`` is an ASGI middleware that answers the *ordinary* case of

- ``GET /v1/agent/desired`` when the answer is 304 (unchanged) or 204 (nothing assigned), and
- ``POST /v1/agent/events`` with a well-formed JSON batch,

by calling the same service functions the routes call. Anything else — a bad credential, a
malformed or oversized body, a 200 with the bundle, any doubt — goes on to the FastAPI
application unchanged (a body already read is replayed), which gives the documented answer.
So the fast path never decides an error and the OpenAPI contract stays the routes' own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from mgmt_stub import credentials as creds
from mgmt_stub.groupcommit import GroupCommit
from mgmt_stub.service import ManagementService, Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
EventItem = tuple[str, Sequence[Mapping[str, Any]], str]

_EVENT_KEYS = frozenset({"id", "type", "time", "data"})
MAX_EVENTS = 2000


class AgentFastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        service: ManagementService,
        events: GroupCommit[EventItem, tuple[int, int]],
        body_limit: int,
    ) -> None:
        self.app = app
        self.service = service
        self.events = events
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not scope.get("query_string")
            and not _repeats(scope["headers"])
        ):
            if scope["method"] == "GET" and scope["path"] == "/v1/agent/desired":
                if await self._desired(scope, send):
                    return
            elif scope["method"] == "POST" and scope["path"] == "/v1/agent/events":
                await self._events(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _cluster(self, headers: dict[bytes, bytes]) -> str | None:
        token = creds.bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if token is None:
            return None
        try:
            return self.service.authenticate_agent(token)
        except Problem:
            return None  # the route answers it, with the documented problem

    async def _desired(self, scope: Scope, send: Send) -> bool:
        headers = dict(scope["headers"])
        match = headers.get(b"if-none-match", b"").decode("latin-1")
        if len(match) > 200:
            return False  # the route refuses it
        cluster_id = self._cluster(headers)
        if cluster_id is None:
            return False
        state = self.service.desired(cluster_id)
        seq = (b"x-edge-actions", str(self.service.action_seq(cluster_id)).encode())
        if state is None:
            await _respond(send, 204, [seq])
            return True
        if not match or state.etag not in (t.strip() for t in match.split(",")):
            return False  # a full fetch: FileResponse in the route
        await _respond(
            send,
            304,
            [
                (b"etag", state.etag.encode()),
                (b"x-edge-revision", str(state.revision).encode()),
                seq,
            ],
        )
        return True

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/json":
            await self.app(scope, receive, send)
            return
        cluster_id = self._cluster(headers)
        if cluster_id is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.body_limit or not message.get("more_body"):
                break
        body = b"".join(chunks)
        batch = _batch(body) if size <= self.body_limit else None
        if batch is not None:
            try:
                checked = self.service.check_events(batch)
            except Problem:
                checked = None
        if batch is None or checked is None:
            await self.app(scope, _replay(body, receive, more=size > self.body_limit), send)
            return
        try:
            accepted, duplicates = await self.events.submit((cluster_id, checked, "online"))
        except Problem as exc:
            await _respond(send, exc.status, [], exc.to_json(), b"application/problem+json")
            return
        await _respond(send, 200, [], {"accepted": accepted, "duplicates": duplicates})


_SINGLE = (b"authorization", b"content-type", b"if-none-match")


def _repeats(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a header the fast path reads appears twice (the route reads the first one,
    ``dict`` would keep the last: let the route decide)."""
    names = [name for name, _ in headers if name in _SINGLE]
    return len(names) != len(set(names))


def _batch(body: bytes) -> list[dict[str, Any]] | None:
    """The events of a batch exactly as the route's model accepts them, else None."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"events"}:
        return None
    events = doc["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        return None
    out = []
    for event in events:
        if not isinstance(event, dict) or not set(event) <= _EVENT_KEYS:
            return None
        event_id, kind, time = event.get("id"), event.get("type"), event.get("time")
        data = event.get("data", {})
        if not (
            type(event_id) is str
            and 1 <= len(event_id) <= 128
            and type(kind) is str
            and 1 <= len(kind) <= 32
            and type(time) is str
            and len(time) == 20
            and type(data) is dict
        ):
            return None
        out.append({"id": event_id, "type": kind, "time": time, "data": data})
    return out


def _replay(body: bytes, receive: Receive, *, more: bool) -> Receive:
    """A receive that hands the application the body already read, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    doc: Any = None,
    media_type: bytes = b"application/json",
) -> None:
    body = (
        b"" if doc is None else json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    )
    if doc is not None:
        headers = [*headers, (b"content-type", media_type)]
    if status not in (204, 304):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
