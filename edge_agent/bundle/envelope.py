"""Signed envelopes (DSSE) and Ed25519 signature checks over exact bytes.

An envelope is the DSSE v1 JSON form::

    {"payload": "<base64>", "payloadType": "<type>", "signatures": [{"keyid": "..", "sig": ".."}]}

Each signature is Ed25519 over ``PAE(payloadType, payload)`` (DSSE's pre-authentication
encoding), so a signature made for one document type can never verify as another, and the
payload bytes are authenticated before anyone parses them.

This module verifies signatures against a set of trusted keys and a threshold; it does not
know what a root or a bundle is (see ``trust`` and ``verify``). Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.bundle import canonical
from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code

ROOT_PAYLOAD_TYPE = "application/vnd.edge-agent.root+json; version=1"
BUNDLE_PAYLOAD_TYPE = "application/vnd.edge-agent.bundle+json; version=1"

MAX_SIGNATURES = 32


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope whose signatures are not yet checked."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]


@dataclass(frozen=True, slots=True)
class Role:
    """Who may sign a document: trusted key ids and how many of them must."""

    keyids: frozenset[str]
    threshold: int


def keyid_for(public_key_raw: bytes) -> str:
    """The key id of an Ed25519 public key: hex SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(public_key_raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def encode_envelope(payload_type: str, payload: bytes, signatures: Iterable[Signature]) -> bytes:
    """Serialise an envelope canonically (used by signers and by tests)."""
    return canonical.encode(
        {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in signatures
            ],
        }
    )


def parse_envelope(data: bytes, *, what: str, max_bytes: int) -> Envelope:
    """Parse the envelope structure only; the payload stays opaque bytes."""
    try:
        doc = canonical.decode(data, max_bytes=max_bytes, require_canonical=False)
    except ValueError as exc:
        raise BundleError(Code.METADATA_MALFORMED, f"{what}: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
        raise BundleError(
            Code.METADATA_MALFORMED,
            f"{what}: expected an envelope with payload, payloadType and signatures",
        )
    payload_type, payload_b64, raw_sigs = doc["payloadType"], doc["payload"], doc["signatures"]
    if not isinstance(payload_type, str) or not isinstance(payload_b64, str):
        raise BundleError(
            Code.METADATA_MALFORMED, f"{what}: payload and payloadType must be strings"
        )
    if not isinstance(raw_sigs, list):
        raise BundleError(Code.METADATA_MALFORMED, f"{what}: signatures must be a list")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise BundleError(
            Code.METADATA_MALFORMED,
            f"{what}: {len(raw_sigs)} signatures, limit is {MAX_SIGNATURES}",
        )
    payload = _b64(payload_b64, what, "payload")
    signatures = []
    for entry in raw_sigs:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"keyid", "sig"}
            or not isinstance(entry["keyid"], str)
            or not isinstance(entry["sig"], str)
        ):
            raise BundleError(
                Code.METADATA_MALFORMED, f"{what}: each signature needs string keyid and sig"
            )
        signatures.append(Signature(entry["keyid"], _b64(entry["sig"], what, "signature")))
    return Envelope(payload_type, payload, tuple(signatures))


def verify_envelope(
    envelope: Envelope,
    *,
    what: str,
    expected_type: str,
    keys: Mapping[str, bytes],
    role: Role,
    revoked: frozenset[str] = frozenset(),
) -> None:
    """Check that ``role.threshold`` distinct trusted keys signed the exact payload bytes.

    ``keys`` maps key id to raw public key bytes. Raises BundleError with the most specific
    reason when the threshold is not met: no signatures, a signature reused, a revoked key,
    an unknown key, a signature that does not verify, or simply too few valid ones.
    """
    if envelope.payload_type != expected_type:
        raise BundleError(
            Code.WRONG_TYPE,
            f"{what}: payload type is {envelope.payload_type[:80]!r}, expected {expected_type!r}",
        )
    if not envelope.signatures:
        raise BundleError(Code.SIGNATURE_MISSING, f"{what}: carries no signature")
    seen: set[str] = set()
    for signature in envelope.signatures:
        if signature.keyid in seen:
            raise BundleError(
                Code.DUPLICATE_SIGNATURE,
                f"{what}: key {signature.keyid[:16]!r} signed more than once",
            )
        seen.add(signature.keyid)

    message = pae(envelope.payload_type, envelope.payload)
    valid: set[str] = set()
    revoked_seen, unknown_seen, invalid_seen = [], [], []
    for signature in envelope.signatures:
        if signature.keyid not in role.keyids or signature.keyid not in keys:
            if signature.keyid in revoked:
                revoked_seen.append(signature.keyid)
            else:
                unknown_seen.append(signature.keyid)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(keys[signature.keyid]).verify(signature.sig, message)
        except (InvalidSignature, ValueError):
            invalid_seen.append(signature.keyid)
            continue
        valid.add(signature.keyid)

    if len(valid) >= role.threshold:
        return
    tally = f"{len(valid)} of {role.threshold} required valid signatures"
    if invalid_seen:
        raise BundleError(
            Code.SIGNATURE_INVALID,
            f"{what}: signature by key {invalid_seen[0][:16]!r} does not verify ({tally})",
        )
    if revoked_seen:
        raise BundleError(
            Code.KEY_REVOKED, f"{what}: signed by revoked key {revoked_seen[0][:16]!r} ({tally})"
        )
    if unknown_seen:
        raise BundleError(
            Code.KEY_UNKNOWN,
            f"{what}: signed by key {unknown_seen[0][:16]!r} not trusted for this role ({tally})",
        )
    raise BundleError(Code.THRESHOLD_NOT_MET, f"{what}: {tally}")


def _b64(text: str, what: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BundleError(Code.METADATA_MALFORMED, f"{what}: {field} is not valid base64") from None
