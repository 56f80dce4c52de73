"""The stub's HTTP server: FastAPI routes over ``ManagementService``, run by uvicorn.

Three audiences, three prefixes:

- ``/v1/enroll`` and ``/v1/agent/...`` for agents (bootstrap token, then agent credential);
- ``/v1/admin/...`` for operators (operator credential with a role: viewer < operator < admin);
- ``/dashboard`` (a static page that reads ``/v1/admin/clusters``), ``/healthz``, and the
  OpenAPI document at ``/openapi.json``.

Every error is ``application/problem+json`` (RFC 9457) with a one-line ``detail``. Bodies are
capped before they are read (``BodyLimit``); unknown fields, wrong types and bad JSON are
4xx. The hot agent paths (``GET /v1/agent/desired`` with ``If-None-Match``, the wait) touch
memory only, apart from SQLite reads that are cached.
"""

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_agent.bundle.model import MAX_STALE_AFTER_S, MIN_STALE_AFTER_S
from edge_agent.clock import Clock, SystemClock, format_time, parse_time
from mgmt_stub.fastpath import AgentFastPath, ASGIApp, Message, Receive, Scope, Send
from mgmt_stub.groupcommit import GroupCommit
from mgmt_stub.notify import MAX_WAITERS_PER_CLUSTER, Hub, TooManyWaiters
from mgmt_stub.rollout import Selector, Strategy
from mgmt_stub.service import ManagementService, Operator, Problem, problem_doc

log = logging.getLogger("mgmt_stub")

BUNDLE_MEDIA_TYPE = "application/vnd.edge-agent.bundle"
DEFAULT_BODY_LIMIT = 2 << 20
BODY_LIMITS = {"/v1/admin/profiles/": 16 << 20, "/v1/admin/ingest": 48 << 20}
MAX_WAIT_S = 300
STALE_AFTER_S = 900


# -- request and response bodies --------------------------------------------------------
class Strict(BaseModel):
    """A JSON body as declared: unknown fields refused, no coercion ("1" or true is no 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


Labels = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)]
ClusterId = Annotated[str, Field(min_length=1, max_length=253)]


class EnrollRequest(Strict):
    cluster_id: ClusterId
    labels: Labels = {}
    agent_key: Annotated[str | None, Field(max_length=64)] = None


class EnrollResponse(Strict):
    cluster_id: str
    credential_id: str
    credential: str


class Event(Strict):
    id: Annotated[str, Field(min_length=1, max_length=128)]
    type: Annotated[str, Field(min_length=1, max_length=32)]
    time: Annotated[str, Field(min_length=20, max_length=20)]
    data: dict[str, Any] = {}


class EventBatch(Strict):
    events: Annotated[list[Event], Field(min_length=1, max_length=2000)]


class EventsResponse(Strict):
    accepted: int
    duplicates: int


class Action(Strict):
    id: str
    seq: int
    type: str
    params: dict[str, Any]
    created_at: str


class ActionsResponse(Strict):
    actions: list[Action]


class WaitResponse(Strict):
    changed: bool
    etag: str | None
    actions: int


class SelectorBody(Strict):
    cluster_id: ClusterId | None = None
    labels: Labels | None = None

    def selector(self) -> Selector:
        if self.cluster_id is not None and self.labels is not None:
            raise Problem(422, "invalid", "a selector has a cluster_id or labels, not both")
        if self.cluster_id is not None:
            return Selector(cluster_id=self.cluster_id)
        return Selector(labels=self.labels or {})


class LayerBody(Strict):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    manifests: Annotated[dict[str, str], Field(min_length=1, max_length=1000)]


class SettingsBody(Strict):
    mode: Literal["enforce", "audit"] = "enforce"
    reconcile_interval_s: Annotated[int, Field(ge=10, le=86400)] = 60
    sync_interval_s: Annotated[int, Field(ge=10, le=86400)] = 300
    # The staleness rule (docs/bundle-format.md §7); absent: the policy never goes stale.
    stale_after_s: Annotated[int, Field(ge=MIN_STALE_AFTER_S, le=MAX_STALE_AFTER_S)] | None = None
    on_stale: Literal["report", "audit"] | None = None
    # When a new revision may apply on site ("Sat 02:00-04:00", site time); urgent: at once.
    maintenance_windows: (
        Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)] | None
    ) = None
    urgent: bool | None = None


class ProfileBody(Strict):
    description: Annotated[str, Field(max_length=500)] = ""
    settings: SettingsBody = SettingsBody()
    layers: Annotated[list[LayerBody], Field(min_length=1, max_length=100)]


class StrategyBody(Strict):
    canary: SelectorBody | None = None
    canary_percent: Annotated[int, Field(ge=0, le=100)] = 0
    max_unavailable: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    max_unavailable_percent: Annotated[int, Field(ge=0, le=100)] = 0

    def strategy(self) -> Strategy:
        if self.canary is not None and self.canary.cluster_id is not None:
            raise Problem(422, "invalid", "a canary group is chosen by labels or a percent")
        labels = self.canary.labels if self.canary else None
        return Strategy(
            labels or None, self.canary_percent, self.max_unavailable, self.max_unavailable_percent
        )


class AssignmentBody(Strict):
    profile: Annotated[str, Field(min_length=1, max_length=64)]
    selector: SelectorBody
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    rollout: StrategyBody = StrategyBody()


class ClusterBody(Strict):
    cluster_id: ClusterId
    labels: Labels = {}
    agent_key: Annotated[str | None, Field(max_length=64)] = None


class LabelsBody(Strict):
    labels: Labels


class AgentKeyBody(Strict):
    agent_key: Annotated[str, Field(max_length=64)]


class TokenBody(Strict):
    ttl_s: Annotated[int, Field(ge=60, le=366 * 86400)] = 86400
    uses: Annotated[int, Field(ge=1, le=100_000)] = 1
    cluster_id: ClusterId | None = None
    labels: Labels = {}
    description: Annotated[str, Field(max_length=200)] = ""


class OperatorBody(Strict):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    role: Literal["viewer", "operator", "admin"]


class ActionBody(Strict):
    type: Annotated[str, Field(min_length=1, max_length=32)]
    selector: SelectorBody
    params: dict[str, Any] = {}


class CredentialResponse(Strict):
    credential_id: str
    credential: str


class SecretResponse(Strict):
    id: str
    secret: str


# -- problem details ------------------------------------------------------------------
def problem(
    status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        problem_doc(status, kind, detail),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


_PROBLEM_SCHEMA = {
    "content": {
        "application/problem+json": {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
                "required": ["type", "title", "status", "detail"],
            }
        }
    }
}
_ERROR_TEXT = {
    400: "Malformed request (not JSON, or nested too deeply)",
    401: "Missing, unknown or revoked credential or token",
    403: "Credential lacks the role, or the token is for another cluster",
    404: "Not found",
    409: "Conflicts with current state",
    413: "Body too large",
    415: "Body is not sent as application/json",
    422: "Invalid content",
    429: "Too many waiting requests for this cluster; retry after the Retry-After seconds",
    503: "Storage unavailable (for example a full disk); nothing was recorded, try again",
}
_JSON_BODY = (400, 413, 415, 422)  # what any JSON body can earn

# Every error status each operation can answer, by (method, path): the OpenAPI document
# declares exactly these, and create_app refuses to start with a route missing here.
# 404 and 405 for paths and methods that do not exist are not any operation's.
CONTRACT: dict[tuple[str, str], tuple[int, ...]] = {
    ("GET", "/healthz"): (),
    ("GET", "/dashboard"): (),
    ("POST", "/v1/enroll"): (401, 403, 409, *_JSON_BODY),
    ("GET", "/v1/agent/desired"): (401, 422),
    ("POST", "/v1/agent/events"): (401, *_JSON_BODY, 503),
    ("GET", "/v1/agent/actions"): (401,),
    ("GET", "/v1/agent/wait"): (401, 422, 429),
    ("POST", "/v1/agent/credential"): (401,),
    ("GET", "/v1/admin/clusters"): (401, 422),
    ("POST", "/v1/admin/clusters"): (401, 403, 409, *_JSON_BODY),
    ("GET", "/v1/admin/clusters/{cluster_id}"): (401, 404, 422),
    ("GET", "/v1/admin/clusters/{cluster_id}/receipt"): (401, 404, 422),
    ("PUT", "/v1/admin/clusters/{cluster_id}/labels"): (401, 403, 404, *_JSON_BODY),
    ("PUT", "/v1/admin/clusters/{cluster_id}/agent-key"): (401, 403, 404, *_JSON_BODY),
    ("POST", "/v1/admin/clusters/{cluster_id}/revoke"): (401, 403, 404, 422),
    ("GET", "/v1/admin/profiles"): (401,),
    ("GET", "/v1/admin/profiles/{name}"): (401, 404, 422),
    ("PUT", "/v1/admin/profiles/{name}"): (401, 403, *_JSON_BODY),
    ("GET", "/v1/admin/assignments"): (401,),
    ("GET", "/v1/admin/assignments/{name}"): (401, 404, 422),
    ("PUT", "/v1/admin/assignments/{name}"): (401, 403, *_JSON_BODY),
    ("DELETE", "/v1/admin/assignments/{name}"): (401, 403, 404, 422),
    ("GET", "/v1/admin/rollouts"): (401,),
    ("POST", "/v1/admin/rollouts/{rollout_id}/{verb}"): (401, 403, 404, 409, 422),
    ("POST", "/v1/admin/actions"): (401, 403, 404, *_JSON_BODY),
    ("GET", "/v1/admin/actions"): (401, 422),
    ("GET", "/v1/admin/bundles"): (401,),
    ("GET", "/v1/admin/bundles/export"): (401, 403, 404, 409, 422),
    ("POST", "/v1/admin/ingest"): (401, 403, 404, 409, 413, 422),
    ("GET", "/v1/admin/tokens"): (401, 403),
    ("POST", "/v1/admin/tokens"): (401, 403, *_JSON_BODY),
    ("DELETE", "/v1/admin/tokens/{token_id}"): (401, 403, 404, 422),
    ("GET", "/v1/admin/operators"): (401, 403),
    ("POST", "/v1/admin/operators"): (401, 403, 409, *_JSON_BODY),
    ("DELETE", "/v1/admin/operators/{name}"): (401, 403, 404, 422),
    ("GET", "/v1/admin/audit"): (401, 403, 422),
    ("GET", "/v1/admin/stats"): (401,),
}


def _declare_errors(router: APIRouter) -> None:
    """Give every operation exactly the error responses ``CONTRACT`` lists for it (before the
    router is included: the app's copies of the routes are built from these)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods or ():
            codes = CONTRACT.get((method, route.path))
            if codes is None:
                raise RuntimeError(f"{method} {route.path} has no entry in server.CONTRACT")
            route.responses = {
                **route.responses,
                **{code: {"description": _ERROR_TEXT[code], **_PROBLEM_SCHEMA} for code in codes},
            }


async def _wait_or_disconnect(request: Request, waiting: Awaitable[Any]) -> None:
    """Await ``waiting`` unless the client goes away first: a closed connection must not
    hold its handler (and its memory) until the wait's timeout."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    main = asyncio.ensure_future(waiting)
    tasks = {main, asyncio.ensure_future(disconnected())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if main.done() and not main.cancelled() and main.exception() is not None:
        raise main.exception()  # type: ignore[misc]


class BodyLimit:
    """Refuse a body over its limit before the route reads it (413), whatever it claims."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = next((v for k, v in BODY_LIMITS.items() if path.startswith(k)), DEFAULT_BODY_LIMIT)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await problem(413, "body-too-large", f"body exceeds {limit} bytes")(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # An HTTPException, so FastAPI's body parsing passes it on instead of turning
                # it into a 400; the exception handlers answer it as a 413 problem.
                raise TooLarge(limit)
            return message

        await self.app(scope, limited, send)


class TooLarge(StarletteHTTPException):
    """A body (chunked or lying about its length) grew past its limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body exceeds {limit} bytes")
        self.limit = limit


_HTTP_KINDS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


# -- the application --------------------------------------------------------------------
def create_app(
    data_dir: Path,
    keys_dir: Path,
    *,
    clock: Clock | None = None,
    tick_s: float = 1.0,
    stale_after_s: int = STALE_AFTER_S,
) -> FastAPI:
    hub = Hub()
    service = ManagementService(data_dir, keys_dir, clock=clock, notify=hub.notify)
    clock = clock or SystemClock()
    bearer = HTTPBearer(auto_error=False)
    events = GroupCommit(service.record_event_batches)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(tick_s)
                try:
                    service.tick()
                except Exception:
                    log.exception("periodic work failed")

        task = asyncio.create_task(ticker())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        events.flush()
        service.close()

    app = FastAPI(
        title="edge-agent management stub",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.hub = hub

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.kind, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(first.get("loc", ()))
        where = ".".join(str(p) for p in loc)
        kind = first.get("type", "")
        if kind == "json_invalid":
            reason = (first.get("ctx") or {}).get("error") or first.get("msg", "")
            return problem(400, "bad-json", f"body is not valid JSON: {reason}")
        if kind == "missing" and loc == ("body",):
            return problem(422, "invalid", "a JSON body is required")
        if loc == ("body",) and not _is_json(request.headers.get("content-type")):
            # FastAPI reads a body without a JSON media type as bytes, which then fails the
            # model with a message about dictionaries; say what is actually wrong.
            return problem(
                415,
                "unsupported-media-type",
                "the body must be JSON sent as Content-Type: application/json",
            )
        return problem(422, "invalid", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        kind = _HTTP_KINDS.get(exc.status_code, "http-error")
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            kind, detail = "bad-json", "body is not valid JSON: it is nested too deeply"
        elif exc.status_code == 400 and exc.__cause__ is not None:
            kind, detail = "bad-json", "body is not valid JSON"
        return problem(exc.status_code, kind, detail, headers=exc.headers)

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> JSONResponse:
        return problem(400, "bad-json", "body is not valid JSON: it is nested too deeply")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Reached through Starlette's ServerErrorMiddleware, which still logs the traceback:
        # the client gets a problem document like every other error, never the exception.
        return problem(500, "internal-error", "the server failed on this request; see its log")

    app.add_middleware(BodyLimit)
    # Outside BodyLimit: answers the ordinary 304/204 poll and event batch itself and hands
    # everything else, unread or replayed, to the routes (mgmt_stub/fastpath.py).
    app.add_middleware(AgentFastPath, service=service, events=events, body_limit=DEFAULT_BODY_LIMIT)

    # The dependencies are coroutines so that they run on the event loop thread, like every
    # other use of the service: a plain ``def`` would run in a worker thread and share the
    # service's caches and its one SQLite connection with the loop.
    def operator(need: str) -> Callable[..., Awaitable[Operator]]:
        async def check(
            auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Operator:
            return service.authenticate_operator(auth.credentials if auth else None, need)

        return check

    async def agent(
        auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        return service.authenticate_agent(auth.credentials if auth else None)

    Viewer = Annotated[Operator, Depends(operator("viewer"))]
    Op = Annotated[Operator, Depends(operator("operator"))]
    Admin = Annotated[Operator, Depends(operator("admin"))]
    AgentId = Annotated[str, Depends(agent)]

    # -- agents -------------------------------------------------------------------------
    public = APIRouter()

    @public.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @public.post("/v1/enroll", status_code=201, tags=["agent"])
    async def enroll(
        body: EnrollRequest,
        auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> EnrollResponse:
        """Spend one use of a bootstrap token; receive this cluster's own credential."""
        cred_id, credential = service.enroll(
            auth.credentials if auth else None, body.cluster_id, body.labels, body.agent_key
        )
        return EnrollResponse(
            cluster_id=body.cluster_id, credential_id=cred_id, credential=credential
        )

    agents = APIRouter(prefix="/v1/agent", tags=["agent"])

    @agents.get(
        "/desired",
        response_class=Response,
        responses={
            200: {"description": "The signed bundle", "content": {BUNDLE_MEDIA_TYPE: {}}},
            204: {"description": "No desired state is assigned to this cluster"},
            304: {"description": "Unchanged since the ETag given"},
        },
    )
    async def desired(
        cluster_id: AgentId,
        if_none_match: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        """The cluster's desired state: the same signed bundle an offline site imports."""
        state = service.desired(cluster_id)
        seq = str(service.action_seq(cluster_id))
        if state is None:
            return Response(status_code=204, headers={"X-Edge-Actions": seq})
        headers = {
            "ETag": state.etag,
            "X-Edge-Revision": str(state.revision),
            "X-Edge-Actions": seq,
        }
        if if_none_match and state.etag in (t.strip() for t in if_none_match.split(",")):
            return Response(status_code=304, headers=headers)
        return FileResponse(state.path, media_type=BUNDLE_MEDIA_TYPE, headers=headers)

    @agents.post("/events")
    async def post_events(cluster_id: AgentId, body: EventBatch) -> EventsResponse:
        """Record health, drift, reconcile, import and action results; idempotent by id."""
        checked = service.check_events([e.model_dump() for e in body.events])
        accepted, duplicates = await events.submit((cluster_id, checked, "online"))
        return EventsResponse(accepted=accepted, duplicates=duplicates)

    @agents.get("/actions")
    async def actions(cluster_id: AgentId) -> ActionsResponse:
        return ActionsResponse(actions=[Action(**a) for a in service.pending_actions(cluster_id)])

    @agents.get(
        "/wait",
        responses={204: {"description": "Nothing changed before the timeout"}},
    )
    async def wait(
        request: Request,
        cluster_id: AgentId,
        etag: Annotated[str | None, Query(max_length=80)] = None,
        actions: Annotated[int, Query(ge=0, le=2**62)] = 0,
        timeout: Annotated[int, Query(ge=0, le=MAX_WAIT_S)] = 55,
    ) -> Any:
        """Long poll: answer as soon as the desired state or the pending actions differ from
        what the agent has (its ETag and newest action sequence): 200 with what is current;
        or, after ``timeout`` s with nothing changed, 204 with no body (an idle agent's
        cycle stays small)."""
        current_etag, seq = service.wait_state(cluster_id)
        if current_etag == etag and seq <= actions and timeout > 0:
            try:
                waiter = hub.reserve(cluster_id)
            except TooManyWaiters:
                return problem(
                    429,
                    "too-many-waiters",
                    f"this cluster already holds {MAX_WAITERS_PER_CLUSTER} waiting requests",
                    headers={"Retry-After": "30"},
                )
            try:
                await _wait_or_disconnect(request, waiter.wait(timeout))
            finally:
                waiter.release()
            current_etag, seq = service.wait_state(cluster_id)
        if current_etag == etag and seq <= actions:
            return Response(status_code=204)
        return WaitResponse(changed=True, etag=current_etag, actions=seq)

    @agents.post("/credential", status_code=201)
    async def rotate(
        auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> CredentialResponse:
        """A new credential; the one used for this call stops working at the new one's
        first use, so an answer lost on the way never locks the agent out."""
        cluster_id, caller = service.authenticate_agent_credential(
            auth.credentials if auth else None
        )
        cred_id, credential = service.rotate_credential(cluster_id, caller)
        return CredentialResponse(credential_id=cred_id, credential=credential)

    # -- operators ----------------------------------------------------------------------
    admin = APIRouter(prefix="/v1/admin", tags=["admin"])

    def _selector(selector: str | None) -> Selector | None:
        if selector is None:
            return None
        labels = {}
        for pair in selector.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise Problem(422, "invalid", f"selector part {pair[:64]!r} is not key=value")
            labels[key] = value
        return Selector(labels=labels)

    def _with_connectivity(row: dict[str, Any]) -> dict[str, Any]:
        now = clock.now()
        seen = row.get("last_seen")
        ingest = row.get("last_ingest_at")
        if seen:
            age = (now - parse_time(seen)).total_seconds()
            row["connectivity"] = "online" if age <= stale_after_s else "stale"
        elif ingest:
            row["connectivity"] = "air-gapped"
        else:
            row["connectivity"] = "never"
        contact = max(t for t in (seen, ingest, "") if t is not None)
        row["last_contact_age_s"] = (
            int((now - parse_time(contact)).total_seconds()) if contact else None
        )
        row.pop("action_seq", None)
        return row

    @admin.get("/clusters")
    async def list_clusters(
        _: Viewer, selector: Annotated[str | None, Query(max_length=1000)] = None
    ) -> dict[str, Any]:
        rows = service.clusters(_selector(selector))
        return {"clusters": [_with_connectivity(r) for r in rows], "now": format_time(clock.now())}

    @admin.post("/clusters", status_code=201)
    async def register_cluster(who: Op, body: ClusterBody) -> dict[str, Any]:
        """Make an air-gapped cluster known (no enrollment) so bundles can be exported for it."""
        return _with_connectivity(
            service.register_cluster(who.name, body.cluster_id, body.labels, body.agent_key)
        )

    @admin.get("/clusters/{cluster_id}/receipt")
    async def cluster_receipt(
        _: Viewer, cluster_id: Annotated[str, PathParam(max_length=253)]
    ) -> dict[str, Any]:
        service.cluster(cluster_id)  # 404 for an unknown cluster
        receipt = service.receipt(cluster_id)
        if receipt is None:
            raise Problem(404, "not-found", f"no status report of {cluster_id!r} was ingested")
        return {"cluster_id": cluster_id, "receipt": base64.b64encode(receipt).decode("ascii")}

    @admin.get("/clusters/{cluster_id}")
    async def show_cluster(
        _: Viewer, cluster_id: Annotated[str, PathParam(max_length=253)]
    ) -> dict[str, Any]:
        row = _with_connectivity(service.cluster(cluster_id))
        row["recent_events"] = service.events(cluster_id, 20)
        row["actions"] = service.actions(cluster_id)[:20]
        return row

    @admin.put("/clusters/{cluster_id}/labels")
    async def label_cluster(
        who: Op, cluster_id: Annotated[str, PathParam(max_length=253)], body: LabelsBody
    ) -> dict[str, Any]:
        return _with_connectivity(service.set_labels(who.name, cluster_id, body.labels))

    @admin.put("/clusters/{cluster_id}/agent-key")
    async def set_agent_key(
        who: Admin, cluster_id: Annotated[str, PathParam(max_length=253)], body: AgentKeyBody
    ) -> dict[str, Any]:
        return _with_connectivity(service.set_agent_key(who.name, cluster_id, body.agent_key))

    @admin.post("/clusters/{cluster_id}/revoke")
    async def revoke_cluster(
        who: Admin, cluster_id: Annotated[str, PathParam(max_length=253)]
    ) -> dict[str, Any]:
        return {
            "cluster_id": cluster_id,
            "revoked_credentials": service.revoke_cluster(who.name, cluster_id),
        }

    @admin.get("/profiles")
    async def list_profiles(_: Viewer) -> dict[str, Any]:
        return {"profiles": service.profiles()}

    @admin.get("/profiles/{name}")
    async def show_profile(
        _: Viewer, name: Annotated[str, PathParam(max_length=64)]
    ) -> dict[str, Any]:
        return service.profile(name)

    @admin.put("/profiles/{name}")
    async def put_profile(
        who: Op, name: Annotated[str, PathParam(max_length=64)], body: ProfileBody
    ) -> dict[str, Any]:
        """Create or update a profile; a changed profile becomes a new version and is rolled
        out to every assignment that uses it."""
        row, changed = service.put_profile(who.name, name, body.model_dump())
        return {**row, "changed": changed}

    @admin.get("/assignments")
    async def list_assignments(_: Viewer) -> dict[str, Any]:
        return {"assignments": service.assignments()}

    @admin.get("/assignments/{name}")
    async def show_assignment(
        _: Viewer, name: Annotated[str, PathParam(max_length=63)]
    ) -> dict[str, Any]:
        return service.assignment(name)

    @admin.put("/assignments/{name}")
    async def put_assignment(
        who: Op, name: Annotated[str, PathParam(max_length=63)], body: AssignmentBody
    ) -> dict[str, Any]:
        return service.put_assignment(
            who.name,
            name,
            profile=body.profile,
            selector=body.selector.selector(),
            priority=body.priority,
            strategy=body.rollout.strategy(),
        )

    @admin.delete("/assignments/{name}", status_code=204, response_class=Response)
    async def delete_assignment(
        who: Op, name: Annotated[str, PathParam(max_length=63)]
    ) -> Response:
        service.delete_assignment(who.name, name)
        return Response(status_code=204)

    @admin.get("/rollouts")
    async def list_rollouts(_: Viewer) -> dict[str, Any]:
        return {"rollouts": service.rollouts()}

    @admin.post("/rollouts/{rollout_id}/{verb}")
    async def control_rollout(
        who: Op,
        rollout_id: Annotated[int, PathParam(ge=1, le=2**62)],
        verb: Literal["pause", "resume", "rollback"],
    ) -> dict[str, Any]:
        return service.rollout_control(who.name, rollout_id, verb)

    @admin.post("/actions", status_code=201)
    async def queue_action(who: Op, body: ActionBody) -> dict[str, Any]:
        queued = service.queue_action(who.name, body.type, body.selector.selector(), body.params)
        return {"queued": len(queued), "actions": queued}

    @admin.get("/actions")
    async def list_actions(
        _: Viewer, cluster_id: Annotated[str | None, Query(max_length=253)] = None
    ) -> dict[str, Any]:
        return {"actions": service.actions(cluster_id)}

    @admin.get("/bundles")
    async def list_bundles(_: Viewer) -> dict[str, Any]:
        return {"bundles": service.bundles()}

    @admin.get(
        "/bundles/export",
        response_class=Response,
        responses={200: {"description": "The signed bundle", "content": {BUNDLE_MEDIA_TYPE: {}}}},
    )
    async def export_bundle(
        who: Op,
        cluster_id: Annotated[str | None, Query(max_length=253)] = None,
        selector: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> Response:
        """The signed bundle for a cluster, or for every cluster matching a selector (they
        must all want the same revision): for a USB stick."""
        bundle, path = service.export(who.name, cluster_id=cluster_id, selector=_selector(selector))
        return FileResponse(
            path,
            media_type=BUNDLE_MEDIA_TYPE,
            headers={"ETag": f'"{bundle["sha256"]}"', "X-Edge-Revision": str(bundle["revision"])},
            filename=f"{bundle['bundle_id']}.bundle",
        )

    @admin.post("/ingest")
    async def ingest(who: Op, request: Request) -> dict[str, Any]:
        """Record a signed status report an air-gapped site wrote to a USB stick."""
        return service.ingest(who.name, await request.body())

    @admin.get("/tokens")
    async def list_tokens(_: Admin) -> dict[str, Any]:
        return {"tokens": service.tokens()}

    @admin.post("/tokens", status_code=201)
    async def create_token(who: Admin, body: TokenBody) -> dict[str, Any]:
        """A bootstrap token for enrollment; its secret is shown only in this answer."""
        secret, row = service.create_token(
            who.name,
            ttl_s=body.ttl_s,
            uses=body.uses,
            cluster_id=body.cluster_id,
            labels=body.labels,
            description=body.description,
        )
        return {**row, "token": secret}

    @admin.delete("/tokens/{token_id}", status_code=204, response_class=Response)
    async def revoke_token(
        who: Admin, token_id: Annotated[str, PathParam(max_length=32)]
    ) -> Response:
        service.revoke_token(who.name, token_id)
        return Response(status_code=204)

    @admin.get("/operators")
    async def list_operators(_: Admin) -> dict[str, Any]:
        return {"operators": service.operators()}

    @admin.post("/operators", status_code=201)
    async def create_operator(who: Admin, body: OperatorBody) -> dict[str, Any]:
        return {
            "name": body.name,
            "role": body.role,
            "credential": service.create_operator(who.name, body.name, body.role),
        }

    @admin.delete("/operators/{name}", status_code=204, response_class=Response)
    async def revoke_operator(
        who: Admin, name: Annotated[str, PathParam(max_length=63)]
    ) -> Response:
        service.revoke_operator(who.name, name)
        return Response(status_code=204)

    @admin.get("/audit")
    async def audit(
        _: Admin, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
    ) -> dict[str, Any]:
        return {"audit": service.audit_log(limit)}

    @admin.get("/stats")
    async def stats(_: Viewer) -> dict[str, Any]:
        return {"waiting_agents": hub.waiting}

    dashboard_html = Path(__file__).parent / "dashboard.html"

    @public.get("/dashboard", response_class=HTMLResponse, tags=["meta"])
    async def dashboard() -> HTMLResponse:
        """The dashboard page; it asks for a viewer credential and reads /v1/admin/clusters."""
        return HTMLResponse(
            dashboard_html.read_text(encoding="utf-8"),
            headers={
                "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-store",
            },
        )

    for router in (public, agents, admin):
        _declare_errors(router)
        app.include_router(router)
    return app
