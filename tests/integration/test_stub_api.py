"""The stub's agent protocol and its answers to hostile input, against the real process.

The protocol: ``GET /v1/agent/desired`` with ETag and 304 (a few hundred bytes on the wire),
204 without an assignment, events idempotent by id, health events that only ever move a
cluster's row forwards in time, actions queued by selector and completed by an
``action-result`` event, and the long poll ``GET /v1/agent/wait``.

Hostile input: whatever arrives (too big, chunked, malformed, deeply nested, path tricks,
non-UTF-8, bogus credentials) the answer is a 4xx ``application/problem+json`` with a status
and a detail, never a 5xx, the process keeps serving, and its log has no traceback.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.clock import format_time
from tests.conftest import PROFILES, wait_for
from tests.stub_process import StubProcess, profile_body


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = StubProcess.start(tmp_path_factory.mktemp("stub-api"))
    try:
        yield process
    finally:
        process.stop()


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A problem document: 4xx (or exactly ``status``), with a status and a one-line detail."""
    if status is None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    else:
        assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"]
    assert body["type"].startswith("urn:edge-agent:problem:")
    return body


def assert_still_serving(stub: StubProcess) -> None:
    assert httpx.get(f"{stub.url}/healthz", timeout=5).status_code == 200
    assert stub.admin.get("/v1/admin/stats").status_code == 200
    log = (stub.root / "stub.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert " 500 " not in log


def assign(stub: StubProcess, name: str, profile: str, labels: dict[str, str]) -> None:
    response = stub.admin.put(
        f"/v1/admin/assignments/{name}", json={"profile": profile, "selector": {"labels": labels}}
    )
    assert response.status_code == 200, response.text


def new_profile_version(stub: StubProcess, name: str, marker: str) -> None:
    body = profile_body(PROFILES / "hello-web")
    body["description"] = f"version {marker}"
    response = stub.admin.put(f"/v1/admin/profiles/{name}", json=body)
    assert response.status_code == 200 and response.json()["changed"], response.text


def row(stub: StubProcess, cluster_id: str) -> dict[str, Any]:
    response = stub.admin.get(f"/v1/admin/clusters/{cluster_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def event(event_id: str, kind: str, time_text: str, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "time": time_text, "data": data}


# -- desired state, ETag and 304 -------------------------------------------------------------


def test_no_assignment_means_204(stub: StubProcess) -> None:
    agent = stub.agent("api-unassigned", {"api": "nothing-matches-this"})
    response = agent.get("/v1/agent/desired")
    assert response.status_code == 204 and response.content == b""
    wait = agent.get("/v1/agent/wait", params={"timeout": 0})
    assert wait.status_code == 204 and wait.content == b""  # nothing assigned, nothing queued


def read_head(sock: socket.socket, buffer: bytearray) -> bytes:
    """One response head (status line and headers) from ``sock``; the rest stays in buffer."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    return head + b"\r\n\r\n"


def test_an_unchanged_poll_is_a_304_of_a_few_hundred_bytes(stub: StubProcess) -> None:
    stub.put_profile("api-etag", PROFILES / "hello-web")
    assign(stub, "api-etag", "api-etag", {"api": "etag"})
    credential = stub.enroll("api-etag-1", {"api": "etag"})
    agent = stub.client(credential)
    first = agent.get("/v1/agent/desired")
    assert first.status_code == 200 and first.content
    assert first.headers["content-type"] == "application/vnd.edge-agent.bundle"
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')

    # On the wire: an agent's conditional GET and the answer, twice on one connection. The
    # second status line arriving right after the first head proves the 304 carried no body.
    request = (
        f"GET /v1/agent/desired HTTP/1.1\r\nHost: 127.0.0.1:{stub.port}\r\n"
        f"Authorization: Bearer {credential}\r\nIf-None-Match: {etag}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(request)
        head = read_head(sock, buffer)
        sock.sendall(request)
        again = read_head(sock, buffer)
    assert head.startswith(b"HTTP/1.1 304 "), head
    assert again.startswith(b"HTTP/1.1 304 "), again
    assert buffer == b""
    headers = head.lower()
    assert f"etag: {etag}".encode() in headers
    assert b"transfer-encoding" not in headers
    wire = len(request) + len(head)
    assert wire < 512, (wire, request, head)

    # The same through a client: 304, no body, the ETag; a list of tags and a weak match too.
    for value in (etag, f'"nope", {etag}'):
        response = agent.get("/v1/agent/desired", headers={"If-None-Match": value})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    stale = agent.get("/v1/agent/desired", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == first.content


def test_a_new_profile_version_changes_the_etag(stub: StubProcess) -> None:
    stub.put_profile("api-etag2", PROFILES / "hello-web")
    assign(stub, "api-etag2", "api-etag2", {"api": "etag2"})
    agent = stub.agent("api-etag2-1", {"api": "etag2"})
    first = agent.get("/v1/agent/desired")
    new_profile_version(stub, "api-etag2", "2")
    second = agent.get("/v1/agent/desired", headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    assert int(second.headers["x-edge-revision"]) > int(first.headers["x-edge-revision"])


# -- events ----------------------------------------------------------------------------------


def test_events_are_idempotent_by_id(stub: StubProcess) -> None:
    agent = stub.agent("api-events")
    batch = {
        "events": [
            event(f"idem-{i}", "reconcile", f"2030-01-01T00:00:0{i}Z", applied=i) for i in range(5)
        ]
    }
    first = agent.post("/v1/agent/events", json=batch)
    assert first.status_code == 200 and first.json() == {"accepted": 5, "duplicates": 0}
    second = agent.post("/v1/agent/events", json=batch)
    assert second.status_code == 200 and second.json() == {"accepted": 0, "duplicates": 5}
    mixed = {
        "events": [*batch["events"][:2], event("idem-new", "reconcile", "2030-01-02T00:00:00Z")]
    }
    assert agent.post("/v1/agent/events", json=mixed).json() == {"accepted": 1, "duplicates": 2}
    assert len(row(stub, "api-events")["recent_events"]) == 6


def test_a_batch_with_a_repeated_id_is_refused_whole(stub: StubProcess) -> None:
    agent = stub.agent("api-events-dup")
    batch = {
        "events": [
            event("dup-1", "reconcile", "2030-01-01T00:00:00Z"),
            event("dup-2", "reconcile", "2030-01-01T00:00:00Z"),
            event("dup-1", "reconcile", "2030-01-01T00:00:01Z"),
        ]
    }
    body = assert_problem(agent.post("/v1/agent/events", json=batch), 422)
    assert "twice" in body["detail"]
    assert row(stub, "api-events-dup")["recent_events"] == []


def test_health_events_update_the_cluster_and_a_late_older_one_does_not(stub: StubProcess) -> None:
    agent = stub.agent("api-health")
    now = dt.datetime.now(dt.UTC)
    at = {h: format_time(now - dt.timedelta(hours=h)) for h in (1, 2, 3)}  # in the past
    newer = event("h-2", "health", at[2], verdict="degraded", revision=7, drift=2)
    assert agent.post("/v1/agent/events", json={"events": [newer]}).json()["accepted"] == 1
    current = row(stub, "api-health")
    assert (current["health"], current["reported"], current["drift"]) == ("degraded", 7, 2)
    assert current["last_report_at"] == at[2]

    older = event("h-1", "health", at[3], verdict="healthy", revision=6, drift=0)
    assert agent.post("/v1/agent/events", json={"events": [older]}).json()["accepted"] == 1
    after = row(stub, "api-health")
    assert (after["health"], after["reported"], after["drift"]) == ("degraded", 7, 2)
    assert after["last_report_at"] == at[2]

    newest = event("h-3", "health", at[1], verdict="healthy", revision=8, drift=0)
    agent.post("/v1/agent/events", json={"events": [newest]})
    final = row(stub, "api-health")
    assert (final["health"], final["reported"], final["drift"]) == ("healthy", 8, 0)


# -- actions ---------------------------------------------------------------------------------


def test_an_action_is_queued_by_selector_and_completed_by_its_result(stub: StubProcess) -> None:
    agent = stub.agent("api-action-1", {"api": "actions"})
    bystander = stub.agent("api-action-2", {"api": "not-actions"})
    queued = stub.admin.post(
        "/v1/admin/actions",
        json={"type": "collect-diagnostics", "selector": {"labels": {"api": "actions"}}},
    )
    assert queued.status_code == 201, queued.text
    assert queued.json()["queued"] == 1
    pending = agent.get("/v1/agent/actions").json()["actions"]
    assert [a["type"] for a in pending] == ["collect-diagnostics"]
    assert bystander.get("/v1/agent/actions").json() == {"actions": []}
    action = pending[0]

    # Another cluster cannot complete it.
    result = event(
        "r-1",
        "action-result",
        "2030-01-01T00:00:00Z",
        action_id=action["id"],
        outcome="succeeded",
    )
    bystander.post("/v1/agent/events", json={"events": [result]})
    assert [a["id"] for a in agent.get("/v1/agent/actions").json()["actions"]] == [action["id"]]

    assert agent.post("/v1/agent/events", json={"events": [result]}).json()["accepted"] == 1
    assert agent.get("/v1/agent/actions").json() == {"actions": []}
    done = stub.admin.get("/v1/admin/actions", params={"cluster_id": "api-action-1"}).json()
    assert [(a["id"], a["state"]) for a in done["actions"]] == [(action["id"], "done")]


def test_an_action_for_no_cluster_is_404(stub: StubProcess) -> None:
    response = stub.admin.post(
        "/v1/admin/actions", json={"type": "resync", "selector": {"labels": {"api": "nobody"}}}
    )
    assert_problem(response, 404)


# -- the long poll ---------------------------------------------------------------------------


class Waiter(threading.Thread):
    """One ``GET /v1/agent/wait`` in a thread, timing when its answer arrives."""

    def __init__(self, agent: httpx.Client, **params: Any) -> None:
        super().__init__(daemon=True)
        self.agent, self.params = agent, params
        self.answer: dict[str, Any] | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        response = self.agent.get("/v1/agent/wait", params=self.params)
        self.answered_at = time.monotonic()
        assert response.status_code == 200, response.text
        self.answer = response.json()


def waiting(stub: StubProcess) -> int:
    return int(stub.admin.get("/v1/admin/stats").json()["waiting_agents"])


def wait_setup(stub: StubProcess, name: str) -> tuple[httpx.Client, str, int]:
    stub.put_profile(name, PROFILES / "hello-web")
    assign(stub, name, name, {"api": name})
    agent = stub.agent(f"{name}-1", {"api": name})
    state = agent.get("/v1/agent/wait", params={"timeout": 0}).json()
    assert state["changed"] is True and state["etag"]  # the agent has nothing yet
    return agent, state["etag"], state["actions"]


def test_the_wait_times_out_unchanged(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-idle")
    started = time.monotonic()
    response = agent.get("/v1/agent/wait", params={"etag": etag, "actions": seq, "timeout": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 204 and response.content == b""  # unchanged: no body
    assert 0.9 <= elapsed < 5, elapsed


def test_the_wait_answers_at_once_for_a_stale_etag(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-stale")
    started = time.monotonic()
    response = agent.get("/v1/agent/wait", params={"etag": '"old"', "actions": seq, "timeout": 60})
    assert time.monotonic() - started < 1
    assert response.json() == {"changed": True, "etag": etag, "actions": seq}
    behind = agent.get("/v1/agent/wait", params={"etag": etag, "actions": -1, "timeout": 60})
    assert_problem(behind, 422)


def test_the_wait_wakes_when_the_desired_state_changes(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-desired")
    before = waiting(stub)
    waiter = Waiter(agent, etag=etag, actions=seq, timeout=60)
    waiter.start()
    wait_for(lambda: waiting(stub) > before)
    new_profile_version(stub, "api-wait-desired", "2")
    changed_at = time.monotonic()
    waiter.join(timeout=30)
    assert waiter.answer is not None
    assert waiter.answered_at - changed_at < 0.5, waiter.answered_at - changed_at
    assert waiter.answer["changed"] is True and waiter.answer["etag"] != etag
    assert agent.get("/v1/agent/desired").headers["etag"] == waiter.answer["etag"]


def test_the_wait_wakes_when_an_action_is_queued(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-action")
    before = waiting(stub)
    waiter = Waiter(agent, etag=etag, actions=seq, timeout=60)
    waiter.start()
    wait_for(lambda: waiting(stub) > before)
    queued = stub.admin.post(
        "/v1/admin/actions",
        json={"type": "reconcile-now", "selector": {"cluster_id": "api-wait-action-1"}},
    )
    assert queued.status_code == 201, queued.text
    queued_at = time.monotonic()
    waiter.join(timeout=30)
    assert waiter.answer is not None
    assert waiter.answered_at - queued_at < 0.5, waiter.answered_at - queued_at
    assert waiter.answer == {"changed": True, "etag": etag, "actions": seq + 1}


# -- hostile input ---------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_with_or_without_a_length(stub: StubProcess) -> None:
    admin = stub.admin
    big = b'{"description": "' + b"x" * (3 << 20) + b'"}'
    declared = admin.post(
        "/v1/admin/tokens", content=big, headers={"content-type": "application/json"}
    )
    assert_problem(declared, 413)

    def chunks() -> Iterator[bytes]:
        yield b'{"description": "'
        for _ in range(48):
            yield b"x" * (64 << 10)
        yield b'"}'

    chunked = admin.post(
        "/v1/admin/tokens", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413)

    agent = stub.agent("api-big")
    events = {
        "events": [
            event(f"e{i}", "reconcile", "2030-01-01T00:00:00Z", pad="y" * 2000) for i in range(1500)
        ]
    }
    assert_problem(agent.post("/v1/agent/events", json=events), 413)

    def report() -> Iterator[bytes]:
        for _ in range(800):
            yield b"z" * (64 << 10)

    assert_problem(admin.post("/v1/admin/ingest", content=report()), 413)  # 50 MiB > 48 MiB
    assert_still_serving(stub)


def test_a_lying_content_length_is_refused(stub: StubProcess) -> None:
    with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/admin/tokens HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + stub.admin_credential.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}"
        )
        head = read_head(sock, bytearray())
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert_still_serving(stub)


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{bad", "not valid JSON"),
    ("truncated", b'{"uses": 1', "not valid JSON"),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("objects nested 100000 deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    ("non-UTF-8", b'{"description": "\xff\xfe"}', "not valid JSON"),
    ("a list", b"[1, 2]", "body"),
    ("a string", b'"hello"', "body"),
    ("wrong type", b'{"uses": "many"}', "uses"),
    ("bool for int", b'{"uses": true}', "uses"),
    ("float for int", b'{"uses": 1.5}', "uses"),
    ("out of range", b'{"uses": 0}', "uses"),
    ("huge int", b'{"uses": 1' + b"0" * 5000 + b"}", "JSON"),
    ("unknown field", b'{"uses": 1, "admin": true}', "admin"),
    ("null for labels", b'{"labels": null}', "labels"),
    ("NaN", b'{"uses": NaN}', "uses"),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [(b, f) for _, b, f in BAD_BODIES], ids=[n for n, _, _ in BAD_BODIES]
)
def test_a_malformed_body_is_a_clear_4xx(stub: StubProcess, body: bytes, fragment: str) -> None:
    response = stub.admin.post(
        "/v1/admin/tokens", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response)
    assert fragment in problem["detail"], problem
    assert_still_serving(stub)


def test_a_body_that_is_not_json_content_is_415_and_a_missing_one_422(stub: StubProcess) -> None:
    for headers in (
        {},
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
    ):
        response = stub.admin.post("/v1/admin/tokens", content=b'{"uses": 1}', headers=headers)
        assert "Content-Type" in assert_problem(response, 415)["detail"]
    missing = stub.admin.post("/v1/admin/operators")
    assert "required" in assert_problem(missing, 422)["detail"]
    fields = stub.admin.post("/v1/admin/operators", json={"name": "x"})
    assert "role" in assert_problem(fields, 422)["detail"]


def hello_profile(**layer: Any) -> dict[str, Any]:
    return {"layers": [{"name": "base", "manifests": {"ns.yaml": "kind: Namespace\n"}, **layer}]}


@pytest.mark.parametrize(
    "file_name",
    [
        "../x.yaml",
        "a/b.yaml",
        "/etc/x.yaml",
        "..",
        ".hidden.yaml",
        "x\x00.yaml",
        "x.json",
        "é.yaml",
        "a" * 300 + ".yaml",
        "",
    ],
)
def test_a_manifest_file_name_cannot_escape_its_layer(stub: StubProcess, file_name: str) -> None:
    body = hello_profile(manifests={file_name: "kind: Namespace\n"})
    response = stub.admin.put("/v1/admin/profiles/api-paths", json=body)
    assert_problem(response, 422)
    assert not list(stub.root.rglob("x.yaml")) and not list(stub.data.parent.rglob("b.yaml"))
    assert stub.admin.get("/v1/admin/profiles/api-paths").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/profiles/..%2f..%2fetc",
        "/v1/admin/profiles/%2e%2e",
        "/v1/admin/profiles/a%00b",
        "/v1/admin/profiles/" + "p" * 65,
        "/v1/admin/profiles/" + "p" * 20_000,
        "/v1/admin/profiles/%ff%fe",
        "/v1/admin/profiles/.hidden",
        "/v1/admin/assignments/..%2fx",
        "/v1/admin/assignments/UPPER",
    ],
)
def test_path_tricks_in_names_are_refused(stub: StubProcess, path: str) -> None:
    before = sorted(p.name for p in (stub.data / "profiles").iterdir())
    for method in ("GET", "PUT"):
        body = (
            hello_profile()
            if "profiles" in path
            else {"profile": "x", "selector": {"labels": {"a": "b"}}}
        )
        response = stub.admin.request(method, path, json=body if method == "PUT" else None)
        assert_problem(response)
    assert sorted(p.name for p in (stub.data / "profiles").iterdir()) == before
    assert not (stub.data.parent / "etc").exists()
    assert_still_serving(stub)


@pytest.mark.parametrize(
    "cluster_id",
    ["", "UPPER", "-lead", "trail-", "a_b", "a/b", "a" * 254, "a\x00b", "é", " x", "a:b"],
)
def test_an_invalid_cluster_id_is_refused(stub: StubProcess, cluster_id: str) -> None:
    token = stub.token(uses=1)
    assert_problem(stub.client(token).post("/v1/enroll", json={"cluster_id": cluster_id}), 422)
    assert_problem(stub.admin.post("/v1/admin/clusters", json={"cluster_id": cluster_id}), 422)
    assert stub.client(token).post(
        "/v1/enroll", json={"cluster_id": "api-after-bad-id"}
    ).status_code in (201, 409)


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(65)},
        {f"k{i}": "v" for i in range(100_000)},
        {"k": "v" * 64},
        {"k" * 10_000: "v"},
        {"bad key!": "v"},
        {"k": "bad value!"},
        {"k": 1},
        {"k": None},
        {"k": {"nested": "x"}},
    ],
    ids=["65", "100000", "long-value", "long-key", "bad-key", "bad-value", "int", "null", "object"],
)
def test_a_hostile_label_map_is_refused(stub: StubProcess, labels: dict[str, Any]) -> None:
    response = stub.admin.post(
        "/v1/admin/clusters", json={"cluster_id": "api-labels", "labels": labels}
    )
    assert_problem(response)
    assert stub.admin.get("/v1/admin/clusters/api-labels").status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer " + b"a" * 10_000,
        b"Bearer eop_" + b"0" * 16 + b"_" + b"A" * 10_000,
        b"Basic YWRtaW46YWRtaW4=",
        b"Bearer",
        b"Bearer x y",
        b"Token abc",
        b"Bearer \xff\xfe",
        b"Bearer eop_zz_zz",
        b"Bearer ebt_" + b"0" * 16 + b"_" + b"A" * 43,
    ],
)
def test_a_bogus_authorization_header_is_401(stub: StubProcess, authorization: bytes) -> None:
    for method, path in (
        ("GET", "/v1/admin/clusters"),
        ("GET", "/v1/agent/desired"),
        ("POST", "/v1/enroll"),
    ):
        response = httpx.request(
            method,
            f"{stub.url}{path}",
            headers={"Authorization": authorization},
            json={"cluster_id": "api-bogus"} if method == "POST" else None,
            timeout=10,
        )
        assert_problem(response, 401)
    assert_still_serving(stub)


@pytest.mark.parametrize("authorization", [b"Bearer ", b"bearer  ", b"Bearer \t"])
def test_an_empty_bearer_token_is_401(stub: StubProcess, authorization: bytes) -> None:
    # httpx refuses to send a header value with trailing whitespace; a socket does not.
    with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v1/admin/clusters HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + authorization
            + b"\r\n\r\n"
        )
        buffer = bytearray()
        head = read_head(sock, buffer)
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"content-type: application/problem+json" in head.lower()
    assert_still_serving(stub)


def test_hostile_events_are_refused(stub: StubProcess) -> None:
    agent = stub.agent("api-hostile-events")
    ok = event("fine", "reconcile", "2030-01-01T00:00:00Z")
    bad_batches: list[Any] = [
        {"events": []},
        {"events": "x"},
        {"events": [{**ok, "id": ""}]},
        {"events": [{**ok, "id": "a b"}]},
        {"events": [{**ok, "id": "x" * 129}]},
        {"events": [{**ok, "type": "UPPER"}]},
        {"events": [{**ok, "time": "yesterday at noon"}]},
        {"events": [{**ok, "time": 1}]},
        {"events": [{**ok, "data": []}]},
        {"events": [{**ok, "data": {"blob": "x" * 20_000}}]},
        {"events": [{**ok, "extra": 1}]},
        {"events": [{"id": "a", "type": "health"}]},
        {"events": [ok] * 2001},
        {},
    ]
    for batch in bad_batches:
        assert_problem(agent.post("/v1/agent/events", json=batch))
    assert row(stub, "api-hostile-events")["recent_events"] == []
    assert_still_serving(stub)


def test_hostile_queries_and_headers_are_refused(stub: StubProcess) -> None:
    admin = stub.admin
    agent = stub.agent("api-hostile-query")
    for response in (
        admin.get("/v1/admin/clusters", params={"selector": "noequals"}),
        admin.get("/v1/admin/clusters", params={"selector": "x" * 2000}),
        admin.get("/v1/admin/audit", params={"limit": "abc"}),
        admin.get("/v1/admin/audit", params={"limit": 10**30}),
        admin.post("/v1/admin/rollouts/0/pause"),
        admin.post("/v1/admin/rollouts/1/explode"),
        admin.post("/v1/admin/rollouts/99999/pause"),
        admin.get("/v1/admin/bundles/export"),
        agent.get("/v1/agent/wait", params={"timeout": -1}),
        agent.get("/v1/agent/wait", params={"timeout": 10**6}),
        agent.get("/v1/agent/wait", params={"etag": "e" * 100}),
        agent.get("/v1/agent/desired", headers={"If-None-Match": "x" * 300}),
        admin.delete("/healthz"),
        admin.get("/nothing/here"),
        admin.post("/v1/admin/ingest", content=b"\x00\xffnot a report"),
    ):
        assert_problem(response)
    allowed = admin.delete("/healthz").headers.get("allow")
    assert allowed is not None and "GET" in allowed
    weird = agent.get("/v1/agent/desired", headers={"If-None-Match": b"\xff\xfe"})
    assert weird.status_code in (200, 204)
    assert_still_serving(stub)


def test_the_server_log_has_no_traceback(stub: StubProcess) -> None:
    assert_still_serving(stub)
    assert Path(stub.root / "stub.log").stat().st_size > 0


def test_a_wait_whose_client_went_away_is_released_at_once(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-gone")
    credential = agent.headers["Authorization"]
    for _ in range(20):  # open waits on raw sockets, then hang up
        with socket.create_connection(("127.0.0.1", stub.port)) as sock:
            sock.sendall(
                f"GET /v1/agent/wait?etag={urllib.parse.quote(etag)}&actions={seq}&timeout=300 "
                f"HTTP/1.1\r\nHost: x\r\nAuthorization: {credential}\r\n\r\n".encode()
            )
            wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] >= 1)
    wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] == 0, 5)


def test_the_fast_path_answers_exactly_as_the_routes_do(stub: StubProcess) -> None:
    """A query string sends a request past mgmt_stub/fastpath.py to the FastAPI route: the
    two must be indistinguishable on the wire."""
    stub.put_profile("api-fast", PROFILES / "hello-web")
    assign(stub, "api-fast", "api-fast", {"api": "fast"})
    agent = stub.agent("api-fast-1", {"api": "fast"})
    lonely = stub.agent("api-fast-2", {"api": "none"})
    etag = agent.get("/v1/agent/desired").headers["etag"]

    def same(fast: httpx.Response, routed: httpx.Response) -> None:
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
        for header in ("content-type", "content-length", "etag", "x-edge-revision"):
            assert fast.headers.get(header) == routed.headers.get(header), header

    poll = {"If-None-Match": etag}
    same(
        agent.get("/v1/agent/desired", headers=poll),
        agent.get("/v1/agent/desired?x=1", headers=poll),
    )
    same(lonely.get("/v1/agent/desired"), lonely.get("/v1/agent/desired?x=1"))
    batch = {"events": [event("fast-1", "health", "2026-11-20T10:00:00Z", verdict="healthy")]}
    first = agent.post("/v1/agent/events", json=batch)
    assert first.json() == {"accepted": 1, "duplicates": 0}
    same(agent.post("/v1/agent/events", json=batch), agent.post("/v1/agent/events?x=1", json=batch))


def test_one_cluster_cannot_hold_more_than_four_waits(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-cap")
    credential = agent.headers["Authorization"]
    sockets = [socket.create_connection(("127.0.0.1", stub.port)) for _ in range(4)]
    try:
        for sock in sockets:
            sock.sendall(
                f"GET /v1/agent/wait?etag={urllib.parse.quote(etag)}&actions={seq}&timeout=300 "
                f"HTTP/1.1\r\nHost: x\r\nAuthorization: {credential}\r\n\r\n".encode()
            )
        wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] == 4)
        refused = agent.get("/v1/agent/wait", params={"etag": etag, "actions": seq, "timeout": 60})
        assert_problem(refused, 429)
        assert refused.headers["retry-after"] == "30"
        other, other_etag, other_seq = wait_setup(stub, "api-wait-cap2")  # others unaffected
        response = other.get(
            "/v1/agent/wait", params={"etag": other_etag, "actions": other_seq, "timeout": 1}
        )
        assert response.status_code == 204
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] == 0, 5)


def test_one_unstorable_event_fails_its_own_batch_and_no_other(stub: StubProcess) -> None:
    bad = stub.agent("api-poison-1")
    good = [stub.agent(f"api-poison-{n}") for n in (2, 3, 4)]
    poison = {"events": [event("p-1", "health", "2026-11-20T10:00:00Z", revision=2**63)]}
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"d": deep}
    nested = {
        "events": [{"id": "p-2", "type": "note", "time": "2026-11-20T10:00:00Z", "data": deep}]
    }
    nan = b'{"events": [{"id": "p-3", "type": "note", "time": "2026-11-20T10:00:00Z", "data": {"x": NaN}}]}'
    ok = {"events": [event("ok-1", "health", "2026-11-20T10:00:00Z", verdict="healthy")]}
    results: dict[str, httpx.Response] = {}

    def post(name: str, client: httpx.Client, **kwargs: Any) -> None:
        results[name] = client.post("/v1/agent/events", **kwargs)

    threads = [
        threading.Thread(target=post, args=("poison", bad), kwargs={"json": poison}),
        *(
            threading.Thread(target=post, args=(f"ok{n}", client), kwargs={"json": ok})
            for n, client in enumerate(good)
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "outside 64 bits" in assert_problem(results["poison"], 422)["detail"]
    assert [results[f"ok{n}"].status_code for n in range(3)] == [200, 200, 200]
    assert "deeper than" in assert_problem(bad.post("/v1/agent/events", json=nested), 422)["detail"]
    headers = {"content-type": "application/json"}
    assert (
        "not finite"
        in assert_problem(bad.post("/v1/agent/events", content=nan, headers=headers), 422)["detail"]
    )
    assert row(stub, "api-poison-1")["recent_events"] == []


def test_waits_arriving_together_still_get_at_most_four_slots(stub: StubProcess) -> None:
    agent, etag, seq = wait_setup(stub, "api-wait-burst")
    params = {"etag": etag, "actions": seq, "timeout": 2}
    statuses: list[int] = []

    def wait() -> None:
        with httpx.Client(base_url=stub.url, headers=dict(agent.headers), timeout=30) as client:
            statuses.append(client.get("/v1/agent/wait", params=params).status_code)

    threads = [threading.Thread(target=wait) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [204] * 4 + [429] * 6
    assert stub.admin.get("/v1/admin/stats").json()["waiting_agents"] == 0
