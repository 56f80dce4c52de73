"""The optional staleness settings of a policy: ``stale_after_s`` and ``on_stale``.

Checked through the public metadata parser (``parse_metadata``) the agent runs on every
signature-checked bundle, and through the stub's profile loader that produces them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import canonical
from edge_agent.bundle.model import (
    MAX_STALE_AFTER_S,
    MIN_STALE_AFTER_S,
    Settings,
    StaleAction,
    parse_metadata,
)
from edge_agent.errors import BundleError, BundleErrorCode
from mgmt_stub.builder import ProfileError, load_profile
from mgmt_stub.builder import metadata_payload as profile_payload
from tests.factory import GOOD_SETTINGS, metadata_document, metadata_payload

MAX_BYTES = 1 << 20
BASE = dict(GOOD_SETTINGS)


def parsed(**extra: Any) -> Settings:
    return parse_metadata(
        metadata_payload(settings={**BASE, **extra}), max_bytes=MAX_BYTES
    ).settings


def refused(payload: bytes) -> BundleError:
    with pytest.raises(BundleError) as caught:
        parse_metadata(payload, max_bytes=MAX_BYTES)
    assert caught.value.code is BundleErrorCode.METADATA_MALFORMED
    assert "\n" not in str(caught.value)
    return caught.value


# -- accepted ----------------------------------------------------------------------------------


def test_the_bounds_are_five_minutes_and_ten_years() -> None:
    assert (MIN_STALE_AFTER_S, MAX_STALE_AFTER_S) == (300, 315_360_000)


def test_without_the_rule_the_policy_is_authoritative_forever() -> None:
    settings = parsed()
    assert settings.stale_after_s is None
    assert settings.on_stale is StaleAction.REPORT
    assert settings.to_json() == {
        "mode": "enforce",
        "reconcile_interval_s": 60,
        "sync_interval_s": 300,
        "stale_after_s": None,
        "on_stale": "report",
        "maintenance_windows": [],
        "urgent": False,
    }


@pytest.mark.parametrize("limit", [300, 301, 2_592_000, 315_360_000])
def test_stale_after_s_alone_reports_when_stale(limit: int) -> None:
    settings = parsed(stale_after_s=limit)
    assert (settings.stale_after_s, settings.on_stale) == (limit, StaleAction.REPORT)


@pytest.mark.parametrize(
    ("word", "action"), [("report", StaleAction.REPORT), ("audit", StaleAction.AUDIT)]
)
def test_on_stale_with_stale_after_s(word: str, action: StaleAction) -> None:
    settings = parsed(stale_after_s=3600, on_stale=word)
    assert (settings.stale_after_s, settings.on_stale) == (3600, action)
    assert settings.to_json()["on_stale"] == word
    assert settings.to_json()["stale_after_s"] == 3600


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit",
    [299, 315_360_001, 0, -300, True, False, None, "3600", [3600], {"s": 3600}],
    ids=repr,
)
def test_a_bad_stale_after_s_is_malformed(limit: Any) -> None:
    error = refused(metadata_payload(settings={**BASE, "stale_after_s": limit}))
    assert "stale_after_s" in str(error)
    assert "300" in str(error) and "315360000" in str(error)


def test_a_float_stale_after_s_is_malformed() -> None:
    document = metadata_document()
    document["settings"] = {**BASE, "stale_after_s": 3600.0}
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    refused(payload)


@pytest.mark.parametrize("word", ["report", "audit"])
def test_on_stale_without_stale_after_s_is_malformed(word: str) -> None:
    error = refused(metadata_payload(settings={**BASE, "on_stale": word}))
    assert "on_stale needs stale_after_s" in str(error)


@pytest.mark.parametrize(
    "word", ["AUDIT", "Report", "enforce", "ignore", "", None, 1, True, ["audit"]], ids=repr
)
def test_a_bad_on_stale_is_malformed(word: Any) -> None:
    error = refused(metadata_payload(settings={**BASE, "stale_after_s": 3600, "on_stale": word}))
    assert "on_stale must be 'report' or 'audit'" in str(error)


@pytest.mark.parametrize("key", ["stale_after", "staleAfterS", "on_stale_action", "stale"])
def test_an_unknown_setting_is_still_malformed(key: str) -> None:
    error = refused(metadata_payload(settings={**BASE, "stale_after_s": 3600, key: 1}))
    assert "unknown field" in str(error)


def test_the_required_settings_are_still_required_with_the_rule() -> None:
    settings = {"mode": "enforce", "reconcile_interval_s": 60, "stale_after_s": 3600}
    error = refused(metadata_payload(settings=settings))
    assert "missing field 'sync_interval_s'" in str(error)


# -- the profile loader ------------------------------------------------------------------------

CONFIG_MAP = (
    b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hello, namespace: default}\ndata: {a: b}\n"
)


def profile(tmp_path: Path, settings_yaml: str) -> Path:
    folder = tmp_path / "site"
    (folder / "layers" / "base").mkdir(parents=True)
    (folder / "layers" / "base" / "hello.yaml").write_bytes(CONFIG_MAP)
    (folder / "profile.yaml").write_text(
        "name: site\n" + settings_yaml + "layers:\n  - {name: base, path: layers/base}\n",
        encoding="utf-8",
    )
    return folder


def payload_of(folder: Path) -> bytes:
    issued = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
    return profile_payload(
        load_profile(folder),
        target={"cluster_id": "site-1"},
        revision=3,
        issued_at=issued,
        expires_at=issued + dt.timedelta(days=30),
        bundle_id="site-r3-000000000000",
    )


def test_a_profile_without_the_rule_signs_only_the_three_settings(tmp_path: Path) -> None:
    folder = profile(
        tmp_path, "settings: {mode: enforce, reconcile_interval_s: 60, sync_interval_s: 300}\n"
    )
    assert load_profile(folder).settings == BASE
    payload = payload_of(folder)
    assert b"stale_after_s" not in payload and b"on_stale" not in payload
    expected = canonical.encode({"settings": BASE})[1:-1]  # the key and its object, as signed
    assert expected in payload


def test_a_profile_without_settings_gets_the_defaults_only(tmp_path: Path) -> None:
    folder = profile(tmp_path, "")
    assert load_profile(folder).settings == {
        "mode": "enforce",
        "reconcile_interval_s": 60,
        "sync_interval_s": 300,
    }


def test_a_profile_with_the_rule_signs_it_and_the_agent_reads_it(tmp_path: Path) -> None:
    folder = profile(
        tmp_path,
        "settings: {mode: audit, reconcile_interval_s: 120, sync_interval_s: 600,"
        " stale_after_s: 2592000, on_stale: audit}\n",
    )
    assert load_profile(folder).settings == {
        "mode": "audit",
        "reconcile_interval_s": 120,
        "sync_interval_s": 600,
        "stale_after_s": 2_592_000,
        "on_stale": "audit",
    }
    settings = parse_metadata(payload_of(folder), max_bytes=MAX_BYTES).settings
    assert (settings.stale_after_s, settings.on_stale) == (2_592_000, StaleAction.AUDIT)


def test_a_profile_with_only_stale_after_s_leaves_on_stale_out(tmp_path: Path) -> None:
    folder = profile(tmp_path, "settings: {stale_after_s: 86400}\n")
    assert load_profile(folder).settings == {**BASE, "stale_after_s": 86400}
    assert b"on_stale" not in payload_of(folder)


def test_a_profile_with_a_misspelt_setting_is_refused(tmp_path: Path) -> None:
    folder = profile(tmp_path, "settings: {stale_after: 86400}\n")
    with pytest.raises(ProfileError, match="unknown setting 'stale_after'"):
        load_profile(folder)
