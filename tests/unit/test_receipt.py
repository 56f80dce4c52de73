"""Receipts (``edge_agent.report``): what the agent accepts as management's acknowledgement.

Real keys and real signatures: a key directory with two policy keys and a threshold of two,
so a receipt signed by one of them alone is not enough.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from edge_agent.bundle import canonical
from edge_agent.report import (
    MAX_RECEIPT_IDS,
    RECEIPT_PAYLOAD_TYPE,
    ReportError,
    receipt_payload,
    verify_receipt,
)
from mgmt_stub.keys import KeyDirectory, sign_envelope

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    directory = KeyDirectory(tmp_path_factory.mktemp("receipt") / "keys")
    directory.init(now=NOW, expires_days=30, policy_keys=2, policy_threshold=2)
    return directory


def check(keys: KeyDirectory, data: bytes, *, cluster: str = "site-1", **kwargs: object) -> object:
    root, _ = keys.current_root()
    return verify_receipt(data, cluster_id=cluster, keys=root.keys, role=root.policy_role, **kwargs)


def signed(keys: KeyDirectory, cluster: str, ids: list[str], signers: int = 2) -> bytes:
    payload_type, payload = receipt_payload(cluster, ids, "2026-12-01T10:00:00Z")
    return sign_envelope(payload_type, payload, keys.policy_signers()[:signers])


def test_a_receipt_signed_by_the_policy_threshold_names_its_reports(keys: KeyDirectory) -> None:
    receipt = check(keys, signed(keys, "site-1", ["r1", "r2"]))
    assert receipt.report_ids == ("r1", "r2")  # type: ignore[attr-defined]
    assert receipt.issued_at == "2026-12-01T10:00:00Z"  # type: ignore[attr-defined]


def test_one_policy_signature_of_a_threshold_of_two_is_refused(keys: KeyDirectory) -> None:
    with pytest.raises(ReportError, match="receipt"):
        check(keys, signed(keys, "site-1", ["r1"], signers=1))


def test_a_key_revoked_by_a_root_rotation_is_refused(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(now=NOW, expires_days=30)
    old = keys.policy_signers()[0].keyid
    data = signed(keys, "site-1", ["r1"], signers=1)
    keys.rotate(now=NOW, expires_days=30, revoke=[old], new_policy_keys=1)
    with pytest.raises(ReportError, match="revoked"):
        check(keys, data, revoked=frozenset({old}))


def test_a_receipt_for_another_cluster_is_refused_and_names_it(keys: KeyDirectory) -> None:
    with pytest.raises(ReportError, match="'site-2', this is 'site-1'"):
        check(keys, signed(keys, "site-2", ["r1"]))


def test_a_changed_payload_is_refused(keys: KeyDirectory) -> None:
    doc = json.loads(signed(keys, "site-1", ["r1"]))
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["report_ids"] = ["r1", "someone-elses"]
    doc["payload"] = base64.b64encode(canonical.encode(payload)).decode()
    with pytest.raises(ReportError, match="signature"):
        check(keys, json.dumps(doc).encode())


@pytest.mark.parametrize(
    "change",
    [
        {"report_ids": "r1"},
        {"report_ids": ["../../etc"]},
        {"report_ids": [1]},
        {"report_ids": [f"r{i}" for i in range(MAX_RECEIPT_IDS + 1)]},
        {"format_version": 2},
        {"extra": True},
        {"issued_at": 5},
    ],
)
def test_a_malformed_receipt_signed_properly_is_still_refused(
    keys: KeyDirectory, change: dict[str, object]
) -> None:
    doc = {
        "_type": "report-receipt",
        "format_version": 1,
        "cluster_id": "site-1",
        "issued_at": "2026-12-01T10:00:00Z",
        "report_ids": ["r1"],
        **change,
    }
    data = sign_envelope(RECEIPT_PAYLOAD_TYPE, canonical.encode(doc), keys.policy_signers())
    with pytest.raises(ReportError, match="receipt: "):
        check(keys, data)


def test_a_report_envelope_or_garbage_is_not_a_receipt(keys: KeyDirectory, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="payload type"):
        check(
            keys,
            sign_envelope(
                "application/vnd.edge-agent.status-report+json; version=1",
                b"{}",
                keys.policy_signers(),
            ),
        )
    with pytest.raises(ReportError):
        check(keys, b"\x00not json")


def test_the_payload_keeps_the_newest_ids_when_there_are_too_many() -> None:
    ids = [f"r{i}" for i in range(MAX_RECEIPT_IDS + 5)]
    _, payload = receipt_payload("site-1", ids, "2026-12-01T10:00:00Z")
    assert json.loads(payload)["report_ids"] == ids[5:]
