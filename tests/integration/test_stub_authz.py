"""Who may do what on the management stub, proved against the real process on loopback.

An agent is its credential: the agent API takes no cluster id, so whatever a request claims,
it reads and writes only the caller's own cluster. Bootstrap tokens are spent, expire and can
be revoked; operator roles are ordered (viewer < operator < admin); credentials rotate without
locking an agent out; secrets are stored and logged only as hashes. Token expiry is proved on
``ManagementService`` with the injected ``FakeClock`` (the process has no clock to move).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.clock import format_time, parse_time
from mgmt_stub import credentials as creds
from mgmt_stub.keys import KeyDirectory
from mgmt_stub.service import ManagementService, Problem
from tests.conftest import PROFILES, FakeClock
from tests.stub_process import StubProcess


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = StubProcess.start(tmp_path_factory.mktemp("stub-authz"))
    try:
        yield process
    finally:
        process.stop()


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"], body
    if kind is not None:
        assert body["type"] == f"urn:edge-agent:problem:{kind}", body


def cluster(stub: StubProcess, cluster_id: str) -> dict[str, Any]:
    response = stub.admin.get(f"/v1/admin/clusters/{cluster_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def enroll(stub: StubProcess, token: str, cluster_id: str) -> httpx.Response:
    return stub.client(token).post("/v1/enroll", json={"cluster_id": cluster_id})


def operator(stub: StubProcess, name: str, role: str) -> httpx.Client:
    response = stub.admin.post("/v1/admin/operators", json={"name": name, "role": role})
    assert response.status_code == 201, response.text
    return stub.client(response.json()["credential"])


def health(event_id: str, time: str, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "health", "time": time, "data": data}


# -- agents see and change only their own cluster --------------------------------------------


def test_an_agent_reads_only_its_own_desired_state(stub: StubProcess) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.put_profile("monitoring", PROFILES / "monitoring")
    for name, profile in (("authz-a", "hello-web"), ("authz-b", "monitoring")):
        response = stub.admin.put(
            f"/v1/admin/assignments/{name}",
            json={"profile": profile, "selector": {"labels": {"authz": name}}},
        )
        assert response.status_code == 200, response.text
    a = stub.agent("authz-a-1", {"authz": "authz-a"})
    b = stub.agent("authz-b-1", {"authz": "authz-b"})

    mine = a.get("/v1/agent/desired")
    theirs = b.get("/v1/agent/desired")
    assert mine.status_code == theirs.status_code == 200
    assert mine.content != theirs.content
    assert int(mine.headers["x-edge-revision"]) == cluster(stub, "authz-a-1")["desired"]
    assert int(theirs.headers["x-edge-revision"]) == cluster(stub, "authz-b-1")["desired"]
    # Naming the other cluster anywhere in the request changes nothing: the credential decides.
    for attempt in (
        a.get("/v1/agent/desired", params={"cluster_id": "authz-b-1"}),
        a.get("/v1/agent/desired", headers={"X-Cluster-Id": "authz-b-1"}),
    ):
        assert attempt.status_code == 200 and attempt.content == mine.content
    # A's ETag is not B's: presenting B's gets A's full bundle, not a 304.
    crossed = a.get("/v1/agent/desired", headers={"If-None-Match": theirs.headers["etag"]})
    assert crossed.status_code == 200 and crossed.content == mine.content


def test_events_posted_with_a_credential_only_touch_its_own_cluster(stub: StubProcess) -> None:
    a = stub.agent("authz-ev-a")
    stub.agent("authz-ev-b")
    before = cluster(stub, "authz-ev-b")
    batch = {
        "events": [
            health(
                "ev-1", "2030-01-01T00:00:00Z", verdict="failing", drift=3, cluster_id="authz-ev-b"
            )
        ]
    }
    response = a.post("/v1/agent/events", json=batch, params={"cluster_id": "authz-ev-b"})
    assert response.status_code == 200 and response.json() == {"accepted": 1, "duplicates": 0}

    row_a, row_b = cluster(stub, "authz-ev-a"), cluster(stub, "authz-ev-b")
    assert row_a["health"] == "failing" and row_a["drift"] == 3
    assert [e["id"] for e in row_a["recent_events"]] == ["ev-1"]
    assert row_b["recent_events"] == []
    for key in ("health", "drift", "reported", "last_report_at"):
        assert row_b[key] == before[key], key


def test_a_revoked_agent_credential_is_refused(stub: StubProcess) -> None:
    agent = stub.agent("authz-revoked")
    assert agent.get("/v1/agent/actions").status_code == 200
    response = stub.admin.post("/v1/admin/clusters/authz-revoked/revoke")
    assert response.status_code == 200 and response.json()["revoked_credentials"] == 1
    for call in (
        agent.get("/v1/agent/desired"),
        agent.get("/v1/agent/actions"),
        agent.get("/v1/agent/wait", params={"timeout": 0}),
        agent.post("/v1/agent/credential"),
        agent.post("/v1/agent/events", json={"events": [health("x", "2030-01-01T00:00:00Z")]}),
    ):
        assert_problem(call, 401, "credential-revoked")


# -- bootstrap tokens ------------------------------------------------------------------------


def test_a_used_up_token_is_refused(stub: StubProcess) -> None:
    token = stub.token(uses=1)
    assert enroll(stub, token, "authz-once-1").status_code == 201
    assert_problem(enroll(stub, token, "authz-once-2"), 401, "token-used-up")
    assert stub.admin.get("/v1/admin/clusters/authz-once-2").status_code == 404


def test_a_token_with_two_uses_enrolls_two_clusters_then_no_more(stub: StubProcess) -> None:
    token = stub.token(uses=2)
    assert enroll(stub, token, "authz-twice-1").status_code == 201
    assert enroll(stub, token, "authz-twice-2").status_code == 201
    assert_problem(enroll(stub, token, "authz-twice-3"), 401, "token-used-up")


def test_a_revoked_token_is_refused(stub: StubProcess) -> None:
    response = stub.admin.post("/v1/admin/tokens", json={"uses": 5})
    assert response.status_code == 201
    token, token_id = response.json()["token"], response.json()["id"]
    assert stub.admin.delete(f"/v1/admin/tokens/{token_id}").status_code == 204
    assert_problem(enroll(stub, token, "authz-revoked-token"), 401, "token-revoked")
    assert_problem(stub.admin.delete(f"/v1/admin/tokens/{token_id}"), 404)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "ebt_0000000000000000_" + "A" * 43,  # well-formed, unknown
        "not-a-token",
    ],
)
def test_a_missing_or_unknown_token_is_refused(stub: StubProcess, token: str | None) -> None:
    assert_problem(enroll(stub, token or "", "authz-nobody"), 401, "unauthenticated")


def test_a_token_with_a_wrong_secret_is_refused(stub: StubProcess) -> None:
    token = stub.token(uses=1)
    kind, token_id, secret = token.split("_", 2)
    forged = f"{kind}_{token_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    assert_problem(enroll(stub, forged, "authz-forged"), 401, "unauthenticated")
    assert enroll(stub, token, "authz-forged").status_code == 201  # the use was not spent


def test_a_token_states_when_it_expires(stub: StubProcess) -> None:
    response = stub.admin.post("/v1/admin/tokens", json={"ttl_s": 60})
    assert response.status_code == 201
    row = response.json()
    lifetime = parse_time(row["expires_at"]) - parse_time(row["created_at"])
    assert lifetime == dt.timedelta(seconds=60)
    assert_problem(stub.admin.post("/v1/admin/tokens", json={"ttl_s": 59}), 422)


def test_an_expired_token_is_refused(tmp_path: Path, keys: KeyDirectory, clock: FakeClock) -> None:
    service = ManagementService(tmp_path / "data", keys.path, clock=clock)
    try:
        token, row = service.create_token(
            "admin", ttl_s=60, uses=5, cluster_id=None, labels={}, description=""
        )
        assert row["expires_at"] == format_time(clock.now() + dt.timedelta(seconds=60))
        clock.advance(seconds=59)
        service.enroll(token, "svc-early", {}, None)
        clock.advance(seconds=1)  # exactly at expires_at: expired
        with pytest.raises(Problem) as refused:
            service.enroll(token, "svc-late", {}, None)
        assert (refused.value.status, refused.value.kind) == (401, "token-expired")
        assert service.db.cluster("svc-late") is None
    finally:
        service.close()


# -- the admin API and its roles -------------------------------------------------------------


def test_the_admin_api_refuses_agent_credentials_and_bootstrap_tokens(stub: StubProcess) -> None:
    credential = stub.enroll("authz-not-admin")
    token = stub.token(uses=1)
    for secret in (credential, token):
        client = stub.client(secret)
        for response in (
            client.get("/v1/admin/clusters"),
            client.post("/v1/admin/tokens", json={}),
            client.get("/v1/admin/operators"),
        ):
            assert_problem(response, 401, "unauthenticated")
    # ...and the agent API refuses operator credentials and bootstrap tokens.
    for secret in (stub.admin_credential, token):
        assert_problem(stub.client(secret).get("/v1/agent/desired"), 401, "unauthenticated")
    assert_problem(stub.admin.post("/v1/enroll", json={"cluster_id": "x"}), 401)


def test_a_viewer_reads_but_changes_nothing(stub: StubProcess) -> None:
    viewer = operator(stub, "authz-viewer", "viewer")
    assert viewer.get("/v1/admin/clusters").status_code == 200
    assert viewer.get("/v1/admin/profiles").status_code == 200
    refused = [
        viewer.post("/v1/admin/tokens", json={}),
        viewer.get("/v1/admin/tokens"),
        viewer.post("/v1/admin/operators", json={"name": "sneaky", "role": "admin"}),
        viewer.put(
            "/v1/admin/profiles/viewer-made",
            json={"layers": [{"name": "a", "manifests": {"a.yaml": "kind: x"}}]},
        ),
        viewer.post("/v1/admin/clusters", json={"cluster_id": "viewer-made"}),
        viewer.get("/v1/admin/audit"),
    ]
    for response in refused:
        assert_problem(response, 403, "forbidden")
    assert stub.admin.get("/v1/admin/profiles/viewer-made").status_code == 404
    names = [o["name"] for o in stub.admin.get("/v1/admin/operators").json()["operators"]]
    assert "sneaky" not in names


def test_an_operator_cannot_mint_tokens_or_operators(stub: StubProcess) -> None:
    op = operator(stub, "authz-operator", "operator")
    assert op.post("/v1/admin/clusters", json={"cluster_id": "authz-op-made"}).status_code == 201
    assert_problem(op.post("/v1/admin/tokens", json={}), 403, "forbidden")
    assert_problem(op.post("/v1/admin/operators", json={"name": "x", "role": "viewer"}), 403)
    assert_problem(op.post("/v1/admin/clusters/authz-op-made/revoke"), 403)


def test_a_revoked_operator_is_refused(stub: StubProcess) -> None:
    op = operator(stub, "authz-gone", "admin")
    assert op.get("/v1/admin/tokens").status_code == 200
    assert stub.admin.delete("/v1/admin/operators/authz-gone").status_code == 204
    assert_problem(op.get("/v1/admin/clusters"), 401, "credential-revoked")
    assert_problem(op.post("/v1/admin/tokens", json={}), 401, "credential-revoked")


# -- credential rotation and re-enrollment ---------------------------------------------------


def test_a_rotated_credential_retires_the_old_one_at_its_first_use(stub: StubProcess) -> None:
    old = stub.agent("authz-rotate")
    response = old.post("/v1/agent/credential")
    assert response.status_code == 201, response.text
    new = stub.client(response.json()["credential"])
    assert response.json()["credential"].startswith(f"eac_{response.json()['credential_id']}_")

    assert old.get("/v1/agent/actions").status_code == 200  # the answer might have been lost
    assert old.get("/v1/agent/actions").status_code == 200
    assert new.get("/v1/agent/actions").status_code == 200  # first use of the new one
    assert_problem(old.get("/v1/agent/actions"), 401, "credential-revoked")
    assert new.get("/v1/agent/desired").status_code in (200, 204)


def test_re_enrolling_needs_a_token_bound_to_the_cluster(stub: StubProcess) -> None:
    old = stub.agent("authz-reenroll")
    assert_problem(enroll(stub, stub.token(uses=1), "authz-reenroll"), 409, "already-enrolled")
    assert old.get("/v1/agent/actions").status_code == 200  # the refused attempt changed nothing

    other = stub.token(uses=1, cluster_id="authz-someone-else")
    assert_problem(enroll(stub, other, "authz-reenroll"), 403, "forbidden")

    bound = stub.token(uses=1, cluster_id="authz-reenroll")
    response = enroll(stub, bound, "authz-reenroll")
    assert response.status_code == 201, response.text
    assert stub.client(response.json()["credential"]).get("/v1/agent/actions").status_code == 200
    assert_problem(old.get("/v1/agent/actions"), 401, "credential-revoked")


# -- secrets at rest and in the log ----------------------------------------------------------


def test_secrets_are_stored_and_logged_only_as_hashes(stub: StubProcess) -> None:
    viewer = stub.admin.post("/v1/admin/operators", json={"name": "authz-hash", "role": "viewer"})
    token = stub.token(uses=2)
    enrolled = enroll(stub, token, "authz-hash")
    rotated = stub.client(enrolled.json()["credential"]).post("/v1/agent/credential")
    secrets = [
        stub.admin_credential,
        viewer.json()["credential"],
        token,
        enrolled.json()["credential"],
        rotated.json()["credential"],
    ]
    stub.client(secrets[-1]).get("/v1/agent/actions")  # a use, so the rotation is written
    database = b"".join(p.read_bytes() for p in sorted(stub.data.glob("stub.db*")))
    log = (stub.root / "stub.log").read_bytes()
    for text in secrets:
        secret_part = text.split("_", 2)[2]
        assert len(secret_part) == 43
        assert secret_part.encode() not in database, f"a {text[:3]} secret is stored in clear"
        assert secret_part.encode() not in log, f"a {text[:3]} secret is in the log"
        # What is stored is the hash: proof that the files read are the ones written.
        assert creds.digest(secret_part).encode() in database


def test_a_retried_rotation_does_not_lock_out_the_credential_in_use(stub: StubProcess) -> None:
    """The answer to the first POST /v1/agent/credential is lost; the agent retries with
    the credential it has. That credential keeps working until the newest one is first
    used; only the lost one is superseded."""
    old = stub.agent("pending-rotate")
    lost = old.post("/v1/agent/credential")
    assert lost.status_code == 201
    retry = old.post("/v1/agent/credential")
    assert retry.status_code == 201
    assert old.get("/v1/agent/actions").status_code == 200
    assert stub.client(lost.json()["credential"]).get("/v1/agent/actions").status_code == 401
    newest = stub.client(retry.json()["credential"])
    assert newest.get("/v1/agent/actions").status_code == 200
    assert old.get("/v1/agent/actions").status_code == 401
