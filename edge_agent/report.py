"""Signed status reports: how an air-gapped site's events reach the management side by USB.

A report is a DSSE envelope (the same envelope as a bundle's metadata) whose payload type is
``STATUS_REPORT_PAYLOAD_TYPE`` and whose payload is canonical JSON::

    {"_type": "status-report", "format_version": 1, "cluster_id": "...",
     "report_id": "<1-64 of [A-Za-z0-9._-]>", "created_at": "YYYY-MM-DDTHH:MM:SSZ",
     "events": [{"id": ..., "type": ..., "time": ..., "data": {...}}, ...]}

It is signed by the agent's own Ed25519 key, whose public half the agent presented at
enrollment (or an operator registered). Events carry the same fields as an online event
batch and are deduplicated by id the same way. The agent writes reports (``sign_report``),
the management stub reads them (``verify_report``).

The way back is a **receipt**: a DSSE envelope of payload type ``RECEIPT_PAYLOAD_TYPE``
whose canonical JSON payload names the reports management has recorded::

    {"_type": "report-receipt", "format_version": 1, "cluster_id": "...",
     "issued_at": "YYYY-MM-DDTHH:MM:SSZ", "report_ids": ["...", ...]}

signed by the policy role's keys (the keys that sign bundles, threshold included), so the
agent checks it against the root it already trusts. Only then are the events a report
carried marked delivered. A receipt changes nothing but the outbox: a forged or replayed
one can at most acknowledge what management really recorded.

One format, one module: pure, no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import (
    Role,
    Signature,
    encode_envelope,
    keyid_for,
    pae,
    parse_envelope,
    verify_envelope,
)
from edge_agent.errors import BundleError, BundleErrorCode

STATUS_REPORT_PAYLOAD_TYPE = "application/vnd.edge-agent.status-report+json; version=1"
REPORT_TYPE = "status-report"
MAX_REPORT_BYTES = 32 << 20
RECEIPT_PAYLOAD_TYPE = "application/vnd.edge-agent.report-receipt+json; version=1"
RECEIPT_TYPE = "report-receipt"
MAX_RECEIPT_BYTES = 1 << 20
MAX_RECEIPT_IDS = 1000
REPORT_SUFFIX = ".report"
RECEIPT_SUFFIX = ".receipt"
_REPORT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ReportError(Exception):
    """The report or receipt is malformed, not for this cluster, or its signature does not
    verify. ``code`` is the bundle error code when a signature check failed."""

    def __init__(self, message: str, *, code: BundleErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class StatusReport:
    cluster_id: str
    report_id: str
    created_at: str
    events: list[dict[str, Any]]


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_report(
    key: Ed25519PrivateKey,
    *,
    cluster_id: str,
    report_id: str,
    created_at: str,
    events: list[dict[str, Any]],
) -> bytes:
    """The signed report bytes (a DSSE envelope over the canonical payload)."""
    payload = canonical.encode(
        {
            "_type": REPORT_TYPE,
            "format_version": 1,
            "cluster_id": cluster_id,
            "report_id": report_id,
            "created_at": created_at,
            "events": events,
        }
    )
    signature = key.sign(pae(STATUS_REPORT_PAYLOAD_TYPE, payload))
    keyid = keyid_for(public_key_raw(key))
    return encode_envelope(STATUS_REPORT_PAYLOAD_TYPE, payload, [Signature(keyid, signature)])


def report_cluster(data: bytes) -> str:
    """The cluster a report claims to come from (unverified: only to find its key)."""
    try:
        envelope = parse_envelope(data, what="status report", max_bytes=MAX_REPORT_BYTES)
        doc = canonical.decode(envelope.payload, max_bytes=MAX_REPORT_BYTES)
    except BundleError as exc:
        raise ReportError(str(exc), code=exc.code) from None
    except ValueError as exc:  # canonical.decode: not UTF-8, not JSON, too deep, a float
        raise ReportError(f"status report: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cluster_id"), str):
        raise ReportError("status report: payload has no cluster_id")
    return str(doc["cluster_id"])[:253]


def verify_report(data: bytes, *, agent_key: bytes) -> StatusReport:
    """Check the signature with the agent's key before reading anything; return the report."""
    keyid = keyid_for(agent_key)
    doc = _signed_document(
        data,
        what="status report",
        payload_type=STATUS_REPORT_PAYLOAD_TYPE,
        doc_type=REPORT_TYPE,
        fields={"_type", "format_version", "cluster_id", "report_id", "created_at", "events"},
        max_bytes=MAX_REPORT_BYTES,
        keys={keyid: agent_key},
        role=Role(frozenset({keyid}), 1),
    )
    if not isinstance(doc["events"], list):
        raise ReportError("status report: events must be a list")
    for name in ("cluster_id", "report_id", "created_at"):
        if not isinstance(doc[name], str):
            raise ReportError(f"status report: {name} must be a string")
    return StatusReport(doc["cluster_id"], doc["report_id"], doc["created_at"], doc["events"])


@dataclass(frozen=True, slots=True)
class Receipt:
    cluster_id: str
    issued_at: str
    report_ids: tuple[str, ...]


def report_file_name(cluster_id: str, report_id: str) -> str:
    return f"edge-status-{cluster_id}-{report_id}{REPORT_SUFFIX}"


def receipt_file_name(cluster_id: str) -> str:
    return f"edge-receipt-{cluster_id}{RECEIPT_SUFFIX}"


def receipt_payload(
    cluster_id: str, report_ids: Sequence[str], issued_at: str
) -> tuple[str, bytes]:
    """``(payload type, payload)`` of a receipt, for the management side to sign."""
    ids = list(report_ids)[-MAX_RECEIPT_IDS:]
    payload = canonical.encode(
        {
            "_type": RECEIPT_TYPE,
            "format_version": 1,
            "cluster_id": cluster_id,
            "issued_at": issued_at,
            "report_ids": ids,
        }
    )
    return RECEIPT_PAYLOAD_TYPE, payload


def verify_receipt(
    data: bytes,
    *,
    cluster_id: str,
    keys: Mapping[str, bytes],
    role: Role,
    revoked: frozenset[str] = frozenset(),
) -> Receipt:
    """Check the receipt's signatures against the trusted policy role before reading it, and
    that it is for ``cluster_id``; return it."""
    doc = _signed_document(
        data,
        what="receipt",
        payload_type=RECEIPT_PAYLOAD_TYPE,
        doc_type=RECEIPT_TYPE,
        fields={"_type", "format_version", "cluster_id", "issued_at", "report_ids"},
        max_bytes=MAX_RECEIPT_BYTES,
        keys=keys,
        role=role,
        revoked=revoked,
    )
    if doc["cluster_id"] != cluster_id:
        raise ReportError(
            f"receipt: it is for cluster {str(doc['cluster_id'])[:64]!r}, this is {cluster_id!r}"
        )
    ids = doc["report_ids"]
    if (
        not isinstance(ids, list)
        or len(ids) > MAX_RECEIPT_IDS
        or not all(isinstance(i, str) and _REPORT_ID.fullmatch(i) for i in ids)
    ):
        raise ReportError(
            f"receipt: report_ids must be a list of at most {MAX_RECEIPT_IDS} report ids"
        )
    if not isinstance(doc["issued_at"], str):
        raise ReportError("receipt: issued_at must be a string")
    return Receipt(doc["cluster_id"], doc["issued_at"], tuple(ids))


def _signed_document(
    data: bytes,
    *,
    what: str,
    payload_type: str,
    doc_type: str,
    fields: set[str],
    max_bytes: int,
    keys: Mapping[str, bytes],
    role: Role,
    revoked: frozenset[str] = frozenset(),
) -> Mapping[str, Any]:
    """The payload of an envelope whose signatures meet ``role``, checked before it is read:
    a canonical JSON object with exactly ``fields``, of ``doc_type`` and format version 1."""
    try:
        envelope = parse_envelope(data, what=what, max_bytes=max_bytes)
        verify_envelope(
            envelope,
            what=what,
            expected_type=payload_type,
            keys=keys,
            role=role,
            revoked=revoked,
        )
        doc = canonical.decode(envelope.payload, max_bytes=max_bytes)
    except BundleError as exc:
        raise ReportError(str(exc), code=exc.code) from None
    except ValueError as exc:  # canonical.decode: not UTF-8, not JSON, too deep, a float
        raise ReportError(f"{what}: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ReportError(f"{what}: payload is not an object")
    if set(doc) != fields:
        raise ReportError(f"{what}: fields must be exactly {', '.join(sorted(fields))}")
    if doc["_type"] != doc_type or doc["format_version"] != 1:
        raise ReportError(f"{what}: not a format_version 1 {doc_type}")
    return doc
