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
