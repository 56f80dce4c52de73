"""A state view by hand (the JSON ``StateStore.view()`` returns), for the pure modules' tests.

``state_view`` is a site with revision 7 of hello-web in force under root version 1, nothing
queued, no cycle yet; each keyword changes one part of it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SETTINGS = {"mode": "enforce", "reconcile_interval_s": 60, "sync_interval_s": 300}


def state_view(
    *,
    settings: dict[str, Any] | None = None,
    source_kind: str = "usb",
    received_at: str = "2026-11-20T00:00:00Z",
    confirmed_at: str | None = None,
    sync: dict[str, Any] | None = None,
    root_expires_at: str = "2027-11-24T12:00:00Z",
    imports: list[dict[str, Any]] | None = None,
    last_cycle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    location = "https://mgmt.example.net" if source_kind == "sync" else "/media/usb/r7.bundle"
    return {
        "schema_version": 1,
        "policy": {
            "bundle_id": "hello-web-r7",
            "revision": 7,
            "digest": "ab" * 32,
            "target": {"cluster_id": "site-1"},
            "issued_at": "2026-11-20T00:00:00Z",
            "expires_at": "2026-12-20T00:00:00Z",
            "settings": settings or dict(DEFAULT_SETTINGS),
            "layers": [{"name": "base", "manifests": 1, "objects": 2}],
            "artifacts": [],
            "source": {
                "kind": source_kind,
                "location": location,
                "file_sha256": "cd" * 32,
                "received_at": received_at,
            },
        },
        "previous_policy": None,
        "trust": {
            "root_version": 1,
            "root_expires_at": root_expires_at,
            "root_keys": ["a" * 64],
            "root_threshold": 1,
            "policy_keys": ["b" * 64],
            "policy_threshold": 1,
            "revoked_keys": [],
            "time_high_water": "2026-11-20T00:00:00Z",
        },
        "imports": imports or [],
        "last_cycle": last_cycle,
        "outbox": {
            "count": 0,
            "bytes": 0,
            "oldest_time": None,
            "dropped": {},
            "coalesced": {},
            "refused": {},
        },
        "policy_confirmed_at": confirmed_at,
        "sync": sync,
    }
