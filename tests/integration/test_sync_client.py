"""``SyncClient`` and ``edge-agent enroll`` against the real stub process, with faults.

The stub runs as a real process on loopback (``tests.stub_process``); faults are made by
``tests.faultproxy.FaultProxy`` on the link between client and stub, never by patching the
client. Each test enrolls its own cluster ids, so one stub serves the module.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.sync.client import (
    Bundle,
    Changed,
    NoneAssigned,
    SyncClient,
    Unchanged,
)
from edge_agent.sync.errors import Refused, RetryLater, SyncError, Unreachable
from mgmt_stub.keys import KeyDirectory
from tests.conftest import BIN, PROFILES, Site, make_site, wait_for
from tests.faultproxy import FaultProxy
from tests.stub_process import StubProcess

MAX_BYTES = 1 << 30
Enroll = Callable[..., tuple[SyncClient, str]]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = StubProcess.start(tmp_path_factory.mktemp("stub-sync"))
    try:
        process.put_profile("sync-web", PROFILES / "hello-web")
        response = process.admin.put(
            "/v1/admin/assignments/sync-eu",
            json={"profile": "sync-web", "selector": {"labels": {"region": "eu"}}},
        )
        response.raise_for_status()
        yield process
    finally:
        process.stop()


@pytest.fixture
def enrolled(stub: StubProcess) -> Iterator[Callable[..., tuple[SyncClient, str]]]:
    """Enroll a cluster through the client itself; its client (closed after the test) and
    its credential."""
    clients: list[SyncClient] = []

    def enroll(
        cluster_id: str, labels: dict[str, str] | None = None, *, wait_s: int = 5
    ) -> tuple[SyncClient, str]:
        client = SyncClient(stub.url, timeout_s=5.0, wait_s=wait_s)
        clients.append(client)
        credential = client.enroll(stub.token(uses=1), cluster_id, labels or {})
        client.use_credential(credential.credential)
        return client, credential.credential

    yield enroll
    for client in clients:
        client.close()


def via(proxy: FaultProxy, credential: str, *, timeout_s: float = 5.0) -> SyncClient:
    return SyncClient(proxy.url, credential=credential, timeout_s=timeout_s, wait_s=5)


# -- the protocol -----------------------------------------------------------------------------


def test_enroll_then_desired_200_304_and_the_bundle_verifies(
    stub: StubProcess, enrolled: Enroll, tmp_path: Path
) -> None:
    client, _ = enrolled("site-1", {"region": "eu", "tier": "edge"})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with client:
        bundle = client.desired(None, folder=downloads, max_bytes=MAX_BYTES)
        assert isinstance(bundle, Bundle) and bundle.revision >= 1
        assert bundle.path.parent == downloads and bundle.path.stat().st_size == bundle.size
        assert bundle.etag == f'"{bundle.sha256}"'
        assert client.desired(bundle.etag, folder=downloads, max_bytes=MAX_BYTES) == Unchanged(
            bundle.etag, actions=0
        )
        assert list(downloads.iterdir()) == [bundle.path]  # a 304 writes nothing
        with pytest.raises(SyncError, match="the limit is"):
            client.desired(None, folder=downloads, max_bytes=bundle.size - 1)
        assert list(downloads.iterdir()) == [bundle.path]

    # The downloaded file is an ordinary signed bundle: the agent verifies and imports it.
    site = make_site(tmp_path / "site", KeyDirectory(stub.keys))
    verified = site.run("verify", str(bundle.path), "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["revision"] == bundle.revision
    imported = site.run("import", str(bundle.path))
    assert imported.returncode == 0, imported.stderr


def test_nothing_assigned_is_204(stub: StubProcess, enrolled: Enroll, tmp_path: Path) -> None:
    client, _ = enrolled("sync-unassigned", {"region": "nowhere"})
    with client:
        assert client.desired(None, folder=tmp_path, max_bytes=MAX_BYTES) == NoneAssigned(0)
    assert list(tmp_path.iterdir()) == []


def test_events_are_deduplicated_and_actions_listed(stub: StubProcess, enrolled: Enroll) -> None:
    client, _ = enrolled("sync-events")
    events = [
        {
            "id": f"sync-ev-{i}",
            "type": "reconcile",
            "time": "2026-01-01T00:00:00Z",
            "data": {"i": i},
        }
        for i in range(3)
    ]
    with client:
        assert client.post_events(events) == (3, 0)
        assert client.post_events(events) == (0, 3)  # a re-sent batch: delivered, not doubled
        assert client.actions() == []
        queued = stub.admin.post(
            "/v1/admin/actions",
            json={"type": "resync", "selector": {"cluster_id": "sync-events"}, "params": {}},
        )
        assert queued.status_code == 201, queued.text
        [action] = client.actions()
        assert action.type == "resync" and action.seq >= 1 and action.id


def test_wait_returns_on_a_change_and_times_out_without_one(
    stub: StubProcess, enrolled: Enroll
) -> None:
    client, _ = enrolled("sync-wait", wait_s=1)
    with client:
        changed = client.wait(None, 0)
        assert changed is None  # nothing assigned or queued: the 1 s wait ends with 204
        result: list[Changed | None] = []
        waiter = threading.Thread(target=lambda: result.append(client.wait(None, 0)))
        client.wait_s = 20
        waiter.start()
        wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] >= 1)
        started = time.monotonic()
        stub.admin.post(
            "/v1/admin/actions",
            json={"type": "reconcile-now", "selector": {"cluster_id": "sync-wait"}},
        ).raise_for_status()
        waiter.join(10)
        assert time.monotonic() - started < 5
        assert len(result) == 1 and isinstance(result[0], Changed) and result[0].actions >= 1


def test_a_fifth_wait_is_told_to_retry_later(stub: StubProcess, enrolled: Enroll) -> None:
    _, credential = enrolled("sync-waiters")
    clients = [SyncClient(stub.url, credential=credential, wait_s=30) for _ in range(5)]
    threads = [threading.Thread(target=c.wait, args=(None, 0)) for c in clients[:4]]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: stub.admin.get("/v1/admin/stats").json()["waiting_agents"] >= 4)
        with pytest.raises(RetryLater) as caught:
            clients[4].wait(None, 0)
        assert caught.value.status == 429 and caught.value.retry_after_s == 30
    finally:
        stub.admin.post(
            "/v1/admin/actions", json={"type": "resync", "selector": {"cluster_id": "sync-waiters"}}
        ).raise_for_status()
        for thread in threads:
            thread.join(10)
        for client in clients:
            client.close()


def test_rotation_gives_a_credential_that_works(stub: StubProcess, enrolled: Enroll) -> None:
    client, old = enrolled("sync-rotate")
    with client:
        new = client.rotate_credential()
        assert new.credential != old and new.credential not in repr(new)
        client.use_credential(new.credential)
        assert client.actions() == []


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("refuse", [True, False])
def test_a_down_server_is_unreachable_at_once(
    stub: StubProcess, enrolled: Enroll, proxy: FaultProxy, refuse: bool
) -> None:
    _, credential = enrolled(f"sync-down-{int(refuse)}")
    proxy.down(refuse=refuse)
    with via(proxy, credential) as client:
        started = time.monotonic()
        with pytest.raises(
            Unreachable, match=r"server http://127\.0\.0\.1:\d+: GET /v1/agent/actions"
        ):
            client.actions()
        assert time.monotonic() - started < 2
        proxy.pass_()
        assert client.actions() == []  # the same client recovers when the link does


def test_a_blackhole_ends_at_the_timeout(
    stub: StubProcess, enrolled: Enroll, proxy: FaultProxy, tmp_path: Path
) -> None:
    _, credential = enrolled("sync-blackhole", {"region": "eu"})
    proxy.blackhole()
    with via(proxy, credential, timeout_s=0.5) as client:
        started = time.monotonic()
        with pytest.raises(Unreachable, match="no answer within the timeout"):
            client.desired(None, folder=tmp_path, max_bytes=MAX_BYTES)
        assert 0.4 < time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_a_body_cut_short_leaves_no_file(
    stub: StubProcess, enrolled: Enroll, proxy: FaultProxy, tmp_path: Path, fault: str
) -> None:
    _, credential = enrolled(f"sync-cut-{fault}", {"region": "eu"})
    with via(proxy, credential) as client:
        whole = client.desired(None, folder=tmp_path, max_bytes=MAX_BYTES)
        assert isinstance(whole, Bundle) and whole.size > 4000
        whole.path.unlink()
        (proxy.truncate_after if fault == "truncate" else proxy.reset_after)(3000)
        with pytest.raises(Unreachable, match="connection failed"):
            client.desired(None, folder=tmp_path, max_bytes=MAX_BYTES)
    assert list(tmp_path.iterdir()) == []  # no partial bundle left for anyone to import


def test_a_revoked_credential_is_refused(stub: StubProcess, enrolled: Enroll) -> None:
    client, credential = enrolled("sync-revoked")
    stub.admin.post("/v1/admin/clusters/sync-revoked/revoke").raise_for_status()
    with client, pytest.raises(Refused) as caught:
        client.actions()
    assert caught.value.status == 401 and caught.value.detail
    assert credential not in str(caught.value)


def test_no_secret_in_any_message_or_log_record(
    stub: StubProcess, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = stub.token(uses=1)
    errors: list[Exception] = []
    with SyncClient(proxy.url, timeout_s=0.5) as client:
        credential = client.enroll(token, "sync-secret", {"region": "eu"})
        secret = credential.credential
        assert secret not in repr(credential)
        client.use_credential(secret)
        for fault in (proxy.pass_, proxy.blackhole, lambda: proxy.truncate_after(3000), proxy.down):
            fault()
            for call in (
                lambda: client.desired(None, folder=tmp_path, max_bytes=MAX_BYTES),
                lambda: client.post_events([]),
                client.actions,
                lambda: client.enroll(token, "sync-secret", {}),  # used up: 401
            ):
                try:
                    call()
                except SyncError as exc:
                    errors.append(exc)
        proxy.pass_()
        stub.admin.post("/v1/admin/clusters/sync-secret/revoke").raise_for_status()
        try:
            client.actions()
        except Refused as exc:
            errors.append(exc)
    kinds = {type(e).__name__ for e in errors}
    assert {"Unreachable", "Refused"} <= kinds, kinds
    text = "\n".join([*(str(e) for e in errors), *(repr(e.args) for e in errors)])
    text += "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert caplog.records and "sync-secret" not in secret
    assert secret not in text and token not in text
    assert secret.split("_", 2)[2] not in text and token.split("_", 2)[2] not in text


# -- edge-agent enroll ------------------------------------------------------------------------


def cli_site(tmp_path: Path, stub: StubProcess, server: str) -> Site:
    folder = tmp_path / "cli-site"
    folder.mkdir()
    shutil.copy(stub.keys / "roots" / "1.json", folder / "root.json")
    config = folder / "config.yaml"
    config.write_text(
        "cluster_id: sync-cli\n"
        "labels: {region: eu}\n"
        f"paths: {{state_dir: {folder / 'state'}, initial_root: {folder / 'root.json'}}}\n"
        f"sync: {{server: '{server}', timeout_s: 2}}\n",
        encoding="utf-8",
    )
    from edge_agent.config import load_config

    return Site(folder, config, load_config(config))


def test_enroll_command_end_to_end(stub: StubProcess, tmp_path: Path) -> None:
    site = cli_site(tmp_path, stub, stub.url)
    token_file = tmp_path / "enroll.token"
    token = stub.token(uses=1, cluster_id="sync-cli")
    token_file.write_text(token + "\n")

    first = site.run("enroll", "--token-file", str(token_file), "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["result"] == "enrolled" and answer["cluster_id"] == "sync-cli"
    with site.open_store() as store:
        held = store.sync_credential()
    assert held is not None and held["server"] == stub.url
    secret = held["credential"]
    assert secret not in first.stdout + first.stderr and token not in first.stdout + first.stderr
    with SyncClient(stub.url, credential=secret) as client:
        assert client.actions() == []  # the stored credential works

    again = site.run("enroll", "--token-file", str(token_file))
    assert (
        again.returncode == 2 and "already enrolled" in again.stderr and "--force" in again.stderr
    )

    # --force with a fresh token for this cluster id, read from stdin.
    fresh = stub.token(uses=1, cluster_id="sync-cli")
    forced = subprocess.run(
        [
            str(BIN / "edge-agent"),
            "--config",
            str(site.config_path),
            "enroll",
            "--token",
            "-",
            "--force",
        ],
        input=fresh + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.returncode == 0, forced.stderr
    with site.open_store() as store:
        renewed = store.sync_credential()
    assert renewed is not None and renewed["credential"] != secret

    # A used-up token is refused by the server (exit 1); the stored credential stays.
    refused = site.run("enroll", "--token-file", str(token_file), "--force", "--json")
    assert refused.returncode == 1, refused.stderr
    assert json.loads(refused.stdout)["result"] == "refused" and token not in refused.stderr
    with site.open_store() as store:
        assert store.sync_credential() == renewed


def test_enroll_command_without_a_server_answering(stub: StubProcess, tmp_path: Path) -> None:
    with FaultProxy(stub.port) as proxy:
        site = cli_site(tmp_path, stub, proxy.url)
        token_file = tmp_path / "enroll.token"
        token_file.write_text(stub.token(uses=1))
        proxy.down(refuse=True)
        started = time.monotonic()
        result = site.run("enroll", "--token-file", str(token_file))
    assert result.returncode == 5, result.stderr
    assert "server unavailable" in result.stderr and time.monotonic() - started < 20
    missing = site.run("enroll")
    assert missing.returncode == 2 and "no bootstrap token" in missing.stderr
