"""The sync groundwork in the real state store: credential, outbox and action journal."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent.errors import StateError
from edge_agent.state import StateStore
from tests.conftest import Site

SECRET = "ea1_s3cr3t-value-that-must-never-leak"
CREDENTIAL = {
    "server_url": "https://mgmt.example:8700",
    "cluster_id": "site-1",
    "credential_id": "cred-42",
    "credential": SECRET,
}


# -- sync credential -------------------------------------------------------------------


def test_sync_credential_round_trip_and_clear(site: Site, store: StateStore) -> None:
    assert store.sync_credential() is None
    store.set_sync_credential(CREDENTIAL)
    assert store.sync_credential() == CREDENTIAL
    store.close()
    with site.open_store() as reopened:
        assert reopened.sync_credential() == CREDENTIAL
        reopened.set_sync_credential({**CREDENTIAL, "credential": "rotated"})
        assert reopened.sync_credential() == {**CREDENTIAL, "credential": "rotated"}
        reopened.clear_sync_credential()
        reopened.clear_sync_credential()  # twice is harmless
        assert reopened.sync_credential() is None


def test_sync_credential_never_reaches_view_or_snapshot(site: Site, store: StateStore) -> None:
    store.set_sync_credential(CREDENTIAL)
    store.write_snapshot()
    assert SECRET not in repr(store.view())
    snapshot = site.config.status_snapshot
    assert snapshot is not None and snapshot.exists()
    assert SECRET not in snapshot.read_text(encoding="utf-8")
    # The only place it lives is the private store folder.
    folder = store.state_dir / "store"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in Path(store.state_dir).rglob("*"):
        if path.is_file() and not path.is_relative_to(folder):
            assert SECRET.encode() not in path.read_bytes(), path


def test_sync_credential_refuses_non_json_without_quoting_it(store: StateStore) -> None:
    with pytest.raises(StateError) as caught:
        store.set_sync_credential({"credential": SECRET, "bad": object()})
    assert SECRET not in str(caught.value)
    assert store.sync_credential() is None
