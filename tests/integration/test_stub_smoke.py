"""The stub as a real process: a profile assigned, a cluster enrolled, its bundle verified."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import BIN, PROFILES


def test_enrolled_cluster_gets_a_bundle_the_agent_verifies(stub, tmp_path: Path) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    assert (
        stub.admin.put(
            "/v1/admin/assignments/eu",
            json={"profile": "hello-web", "selector": {"labels": {"region": "eu"}}},
        ).status_code
        == 200
    )
    agent = stub.agent("site-1", {"region": "eu"})
    response = agent.get("/v1/agent/desired")
    assert response.status_code == 200
    assert response.headers["x-edge-revision"] == "1"
    bundle = tmp_path / "desired.bundle"
    bundle.write_bytes(response.content)
    again = agent.get("/v1/agent/desired", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    config = tmp_path / "agent.yaml"
    config.write_text(
        "cluster_id: site-1\nlabels: {region: eu}\n"
        f"paths: {{state_dir: {tmp_path / 'state'}, initial_root: {stub.keys / 'root.json'}}}\n"
    )
    result = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(config), "verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_sigterm_stops_the_server_promptly_while_agents_wait(stub) -> None:
    import threading
    import time

    import httpx

    credential = stub.enroll("site-2")
    outcome: list[object] = []

    def wait() -> None:
        try:
            with httpx.Client(base_url=stub.url, timeout=60) as client:
                response = client.get(
                    "/v1/agent/wait",
                    params={"timeout": 300},
                    headers={"Authorization": f"Bearer {credential}"},
                )
                outcome.append(response.status_code)
        except httpx.TransportError as exc:
            outcome.append(type(exc).__name__)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # let the request reach the server and start waiting
    started = time.monotonic()
    # uvicorn re-raises SIGTERM after its clean shutdown; systemd counts that as success.
    assert stub.stop() in (0, -15)
    assert time.monotonic() - started < 10
    assert "Application shutdown complete" in (stub.root / "stub.log").read_text()
    waiter.join(timeout=10)
    assert outcome, "the waiting agent was not answered or disconnected"


def test_a_cluster_unseen_for_longer_than_stale_after_shows_stale(tmp_path: Path) -> None:
    from tests.conftest import wait_for
    from tests.stub_process import StubProcess

    stub = StubProcess.start(tmp_path / "stale", extra=("--stale-after", "1"))
    try:
        agent = stub.agent("site-s")
        assert agent.get("/v1/agent/actions").status_code == 200

        def connectivity() -> str:
            return str(stub.admin.get("/v1/admin/clusters/site-s").json()["connectivity"])

        assert connectivity() == "online"
        wait_for(lambda: connectivity() == "stale", timeout_s=10)
        agent.get("/v1/agent/actions")
        assert connectivity() == "online"
    finally:
        stub.stop()
