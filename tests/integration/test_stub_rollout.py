"""Staged rollouts through the real server: canaries, budget, pause/resume, rollback."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from edge_agent.clock import format_time
from tests.conftest import NOW, PROFILES, wait_for
from tests.stub_process import profile_body

_ids = itertools.count()


def health(agent: httpx.Client, revision: int, verdict: str = "healthy") -> None:
    n = next(_ids)
    event = {
        "id": f"h-{n}",
        "type": "health",
        "time": format_time(NOW + dt.timedelta(seconds=n)),  # later than every earlier one
        "data": {"verdict": verdict, "revision": revision, "drift": 0},
    }
    response = agent.post("/v1/agent/events", json={"events": [event]})
    assert response.status_code == 200, response.text


def desired(agents: dict[str, httpx.Client]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, agent in agents.items():
        response = agent.get("/v1/agent/desired")
        out[name] = (
            int(response.headers["x-edge-revision"]) if response.status_code == 200 else None
        )
    return out


def changed_profile(tmp_path: Path, replicas: int) -> dict[str, Any]:
    folder = tmp_path / f"hello-web-{replicas}"
    shutil.copytree(PROFILES / "hello-web", folder)
    app = folder / "layers" / "app" / "app.yaml"
    text = app.read_text()
    assert "replicas: 2" in text
    app.write_text(text.replace("replicas: 2", f"replicas: {replicas}"))
    return profile_body(folder)


def rollout(stub: Any) -> dict[str, Any]:
    rows = stub.admin.get("/v1/admin/rollouts").json()["rollouts"]
    return dict(rows[-1])


def test_staged_rollout_canary_then_budget_pause_resume(stub, tmp_path: Path) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    strategy = {"canary": {"labels": {"ring": "canary"}}, "max_unavailable": 1}
    response = stub.admin.put(
        "/v1/admin/assignments/eu",
        json={
            "profile": "hello-web",
            "selector": {"labels": {"region": "eu"}},
            "rollout": strategy,
        },
    )
    assert response.status_code == 200, response.text
    agents = {
        name: stub.agent(name, {"region": "eu", "ring": "canary" if name == "c1" else "main"})
        for name in ("c1", "c2", "c3", "c4")
    }
    assert set(desired(agents).values()) == {1}  # the first revision goes out at once
    for agent in agents.values():
        health(agent, 1)

    put = stub.admin.put("/v1/admin/profiles/hello-web", json=changed_profile(tmp_path, 3))
    assert put.json()["version"] == 2
    assert desired(agents) == {"c1": 2, "c2": 1, "c3": 1, "c4": 1}  # canary only
    assert rollout(stub)["phase"] == "canary"

    health(agents["c1"], 2)  # the canary applied it and is healthy: one more may go
    wait_for(lambda: sorted(desired(agents).values()) == [1, 1, 2, 2], timeout_s=10)
    assert rollout(stub)["phase"] == "progressing"

    rid = rollout(stub)["id"]
    assert stub.admin.post(f"/v1/admin/rollouts/{rid}/pause").json()["state"] == "paused"
    for name, revision in desired(agents).items():
        if revision == 2:
            health(agents[name], 2)
    wait_for(lambda: rollout(stub)["done"] == 2, timeout_s=10)
    assert sorted(desired(agents).values()) == [1, 1, 2, 2]  # paused: nobody moves

    assert stub.admin.post(f"/v1/admin/rollouts/{rid}/resume").json()["state"] == "active"

    def reported_all() -> bool:  # each cluster moved reports the new revision applied
        for name, revision in desired(agents).items():
            if revision == 2:
                health(agents[name], 2)
        return bool(rollout(stub)["state"] == "complete")

    wait_for(reported_all, timeout_s=15)
    assert set(desired(agents).values()) == {2}
    assignment = stub.admin.get("/v1/admin/assignments/eu").json()
    assert assignment["stable"] == 2 and assignment["rollout"] is None
    audit = [a["action"] for a in stub.admin.get("/v1/admin/audit").json()["audit"]]
    assert {"rollout.pause", "rollout.resume", "profile.put", "assignment.put"} <= set(audit)


def test_rollback_sends_the_old_content_as_a_new_higher_revision(stub, tmp_path: Path) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.admin.put(
        "/v1/admin/assignments/eu",
        json={
            "profile": "hello-web",
            "selector": {"labels": {"region": "eu"}},
            "rollout": {"canary_percent": 50, "max_unavailable": 1},
        },
    ).raise_for_status()
    agents = {name: stub.agent(name, {"region": "eu"}) for name in ("a", "b")}
    for agent in agents.values():
        health(agent, 1)
    stub.admin.put("/v1/admin/profiles/hello-web", json=changed_profile(tmp_path, 5))
    moved = [name for name, rev in desired(agents).items() if rev == 2]
    assert len(moved) == 1
    health(agents[moved[0]], 2, verdict="failing")  # the canary breaks
    rid = rollout(stub)["id"]
    result = stub.admin.post(f"/v1/admin/rollouts/{rid}/rollback").json()
    assert result["state"] == "rolled-back"
    revisions = desired(agents)
    assert set(revisions.values()) == {3}, revisions  # never lower than the canary's 2
    bundles = stub.admin.get("/v1/admin/bundles").json()["bundles"]
    assert [(b["revision"], b["profile_version"]) for b in bundles] == [(1, 1), (2, 2), (3, 1)]
    assert "rollback" in bundles[-1]["reason"]
    conflict = stub.admin.post(f"/v1/admin/rollouts/{rid}/resume")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"


def test_cluster_moving_to_an_assignment_with_an_older_bundle_gets_a_reissue(stub) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.put_profile("baseline", PROFILES / "baseline")
    for name, profile, city in (("berlin", "hello-web", "berlin"), ("paris", "baseline", "paris")):
        stub.admin.put(
            f"/v1/admin/assignments/{name}",
            json={"profile": profile, "selector": {"labels": {"city": city}}},
        ).raise_for_status()
    agent = stub.agent("x1", {"city": "paris"})
    assert desired({"x1": agent}) == {"x1": 2}
    mover = stub.agent("x2", {"city": "paris"})
    stub.admin.put("/v1/admin/profiles/hello-web", json=profile_body(PROFILES / "monitoring"))
    # berlin now has revision 3; moving x2 from paris (2) to berlin is fine, it goes up.
    stub.admin.put("/v1/admin/clusters/x2/labels", json={"labels": {"city": "berlin"}})
    assert desired({"x2": mover}) == {"x2": 3}
    # Moving it back to paris, whose bundle is revision 2, must not lower its revision.
    stub.admin.put("/v1/admin/clusters/x2/labels", json={"labels": {"city": "paris"}})
    revision = desired({"x2": mover})["x2"]
    assert revision is not None and revision > 3
    bundle = {b["revision"]: b for b in stub.admin.get("/v1/admin/bundles").json()["bundles"]}
    assert bundle[revision]["assignment"] == "paris" and "re-issue" in bundle[revision]["reason"]


def test_rollback_after_a_profile_switch_restores_the_previous_profile(stub) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.put_profile("monitoring", PROFILES / "monitoring")
    body = {
        "selector": {"labels": {"region": "eu"}},
        "rollout": {"canary_percent": 50, "max_unavailable": 1},
    }
    stub.admin.put(
        "/v1/admin/assignments/eu", json={"profile": "hello-web", **body}
    ).raise_for_status()
    agents = {name: stub.agent(name, {"region": "eu"}) for name in ("a", "b")}
    stub.admin.put(
        "/v1/admin/assignments/eu", json={"profile": "monitoring", **body}
    ).raise_for_status()
    rid = rollout(stub)["id"]
    result = stub.admin.post(f"/v1/admin/rollouts/{rid}/rollback")
    assert result.status_code == 200, result.text
    bundles = stub.admin.get("/v1/admin/bundles").json()["bundles"]
    assert [(b["profile"], b["profile_version"]) for b in bundles] == [
        ("hello-web", 1),
        ("monitoring", 1),
        ("hello-web", 1),
    ]
    assert set(desired(agents).values()) == {bundles[-1]["revision"]}


def test_a_waiting_member_with_a_foreign_revision_does_not_rebuild_every_tick(
    stub, tmp_path: Path
) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.put_profile("baseline", PROFILES / "baseline")
    staged = {"canary": {"labels": {"ring": "canary"}}, "max_unavailable": 1}
    stub.admin.put(
        "/v1/admin/assignments/eu",
        json={"profile": "hello-web", "selector": {"labels": {"region": "eu"}}, "rollout": staged},
    ).raise_for_status()
    stub.admin.put(
        "/v1/admin/assignments/lab",
        json={"profile": "baseline", "selector": {"labels": {"lab": "yes"}}, "priority": 5},
    ).raise_for_status()
    canary = stub.agent("can", {"region": "eu", "ring": "canary"})
    stub.agent("main", {"region": "eu"})
    mover = stub.agent("mover", {"region": "eu", "lab": "yes"})  # lab wins: revision 2
    assert desired({"m": mover}) == {"m": 2}
    stub.admin.put("/v1/admin/profiles/hello-web", json=changed_profile(tmp_path, 4))  # rev 3
    stub.admin.put("/v1/admin/clusters/mover/labels", json={"labels": {"region": "eu"}})
    health(canary, 3, "degraded")  # the canary never becomes done: the rollout waits
    before = len(stub.admin.get("/v1/admin/bundles").json()["bundles"])
    for _ in range(3):
        health(canary, 3, "degraded")
        time.sleep(1.2)  # the server re-plans once a second: let it run three times
    bundles = stub.admin.get("/v1/admin/bundles").json()["bundles"]
    assert len(bundles) == before, [b["reason"] for b in bundles]
    assert rollout(stub)["phase"] == "canary"
    assert desired({"m": mover})["m"] == 2  # waits on what it has until its turn
