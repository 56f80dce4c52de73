"""The stub killed with SIGKILL: every acknowledged write is still there after a restart."""

from __future__ import annotations

import signal
import threading

import httpx

from tests.conftest import PROFILES, wait_for
from tests.stub_process import StubProcess


def test_acknowledged_events_and_enrollments_survive_kill_9(stub) -> None:
    stub.put_profile("hello-web", PROFILES / "hello-web")
    stub.admin.put(
        "/v1/admin/assignments/eu",
        json={"profile": "hello-web", "selector": {"labels": {"region": "eu"}}},
    ).raise_for_status()
    credential = stub.enroll("site-1", {"region": "eu"})
    acknowledged: list[str] = []
    stop = threading.Event()

    def post() -> None:
        with httpx.Client(
            base_url=stub.url, headers={"Authorization": f"Bearer {credential}"}, timeout=5
        ) as agent:
            n = 0
            while not stop.is_set():
                ids = [f"e{n}-{i}" for i in range(50)]
                n += 1
                batch = [
                    {"id": i, "type": "reconcile", "time": "2026-11-25T10:00:00Z", "data": {}}
                    for i in ids
                ]
                try:
                    response = agent.post("/v1/agent/events", json={"events": batch})
                except httpx.TransportError:
                    return  # the server died mid-request: this batch was never acknowledged
                if response.status_code == 200:
                    acknowledged.extend(ids)

    writer = threading.Thread(target=post)
    writer.start()
    wait_for(lambda: len(acknowledged) >= 2000)
    stub.stop(signal.SIGKILL)
    stop.set()
    writer.join()

    again = StubProcess.start(stub.root, port=stub.port)
    try:
        agent = again.client(credential)  # the credential issued before the kill still works
        cluster = again.admin.get("/v1/admin/clusters/site-1").json()
        assert cluster["events"] >= len(acknowledged)
        # Re-sending every acknowledged batch finds each one there already.
        for start in range(0, len(acknowledged), 1000):
            chunk = acknowledged[start : start + 1000]
            batch = [
                {"id": i, "type": "reconcile", "time": "2026-11-25T10:00:00Z", "data": {}}
                for i in chunk
            ]
            result = agent.post("/v1/agent/events", json={"events": batch}).json()
            assert result == {"accepted": 0, "duplicates": len(chunk)}
        assert agent.get("/v1/agent/desired").status_code == 200
    finally:
        again.stop()
