"""A status report carried by USB: signed by the agent's key, ingested, deduplicated."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.report import public_key_raw, sign_report


def health_event(n: int, verdict: str = "degraded") -> dict[str, object]:
    return {
        "id": f"usb-{n}",
        "type": "health",
        "time": f"2026-11-20T08:00:{n:02d}Z",
        "data": {"verdict": verdict, "revision": 4, "drift": n},
    }


def test_air_gapped_report_is_verified_recorded_once_and_shown(stub) -> None:
    key = Ed25519PrivateKey.generate()
    agent_key = base64.b64encode(public_key_raw(key)).decode()
    registered = stub.admin.post(
        "/v1/admin/clusters",
        json={"cluster_id": "mine-7", "labels": {"site": "mine"}, "agent_key": agent_key},
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["connectivity"] == "never"

    events = [health_event(1), health_event(2)]
    report = sign_report(
        key, cluster_id="mine-7", report_id="r1", created_at="2026-11-20T09:00:00Z", events=events
    )
    first = stub.admin.post("/v1/admin/ingest", content=report)
    assert first.status_code == 200, first.text
    answer = first.json()
    receipt = base64.b64decode(answer.pop("receipt"))
    assert b"report-receipt" in receipt  # the agent checks it: test_usb_round_trip.py
    assert answer == {
        "cluster_id": "mine-7",
        "report_id": "r1",
        "new_report": True,
        "accepted": 2,
        "duplicates": 0,
    }
    # The next stick carries the undelivered events again plus a new one: only it counts.
    second = sign_report(
        key,
        cluster_id="mine-7",
        report_id="r2",
        created_at="2026-11-21T09:00:00Z",
        events=[*events, health_event(3, "healthy")],
    )
    assert stub.admin.post("/v1/admin/ingest", content=second).json()["accepted"] == 1
    assert stub.admin.post("/v1/admin/ingest", content=second).json()["duplicates"] == 3

    cluster = stub.admin.get("/v1/admin/clusters/mine-7").json()
    assert cluster["connectivity"] == "air-gapped"
    assert cluster["last_ingest_at"] == "2026-11-21T09:00:00Z"
    assert (cluster["health"], cluster["reported"], cluster["drift"]) == ("healthy", 4, 3)
    assert {e["via"] for e in cluster["recent_events"]} == {"usb"}


def test_forged_or_foreign_reports_are_refused_and_change_nothing(stub) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    stub.admin.post(
        "/v1/admin/clusters",
        json={
            "cluster_id": "mine-8",
            "agent_key": base64.b64encode(public_key_raw(key)).decode(),
        },
    ).raise_for_status()
    forged = sign_report(
        other,
        cluster_id="mine-8",
        report_id="x",
        created_at="2026-11-20T09:00:00Z",
        events=[health_event(1, "healthy")],
    )
    refused = stub.admin.post("/v1/admin/ingest", content=forged)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "not trusted" in refused.json()["detail"] or "verify" in refused.json()["detail"]
    tampered = bytearray(
        sign_report(
            key,
            cluster_id="mine-8",
            report_id="y",
            created_at="2026-11-20T09:00:00Z",
            events=[health_event(1, "healthy")],
        )
    )
    tampered[40] ^= 1
    assert stub.admin.post("/v1/admin/ingest", content=bytes(tampered)).status_code in (400, 422)
    unknown = sign_report(
        key, cluster_id="nowhere", report_id="z", created_at="2026-11-20T09:00:00Z", events=[]
    )
    assert stub.admin.post("/v1/admin/ingest", content=unknown).status_code == 404
    assert stub.admin.post("/v1/admin/ingest", content=b"\xff\x00garbage").status_code == 422
    cluster = stub.admin.get("/v1/admin/clusters/mine-8").json()
    assert cluster["events"] == 0 and cluster["last_ingest_at"] is None
    viewer = stub.client(
        stub.admin.post("/v1/admin/operators", json={"name": "v", "role": "viewer"}).json()[
            "credential"
        ]
    )
    assert viewer.post("/v1/admin/ingest", content=forged).status_code == 403


def test_a_signed_report_with_malformed_events_is_refused_not_a_server_error(stub) -> None:
    key = Ed25519PrivateKey.generate()
    stub.admin.post(
        "/v1/admin/clusters",
        json={"cluster_id": "mine-9", "agent_key": base64.b64encode(public_key_raw(key)).decode()},
    ).raise_for_status()
    for events in ([{"type": "health"}], ["x"], [{"id": "a", "type": "health", "time": "x"}]):
        report = sign_report(
            key,
            cluster_id="mine-9",
            report_id="m",
            created_at="2026-11-20T09:00:00Z",
            events=events,  # type: ignore[arg-type]
        )
        response = stub.admin.post("/v1/admin/ingest", content=report)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
    bad_id = sign_report(
        key, cluster_id="mine-9", report_id="../x", created_at="2026-11-20T09:00:00Z", events=[]
    )
    assert stub.admin.post("/v1/admin/ingest", content=bad_id).status_code == 422
    assert stub.admin.get("/v1/admin/clusters/mine-9").json()["events"] == 0
