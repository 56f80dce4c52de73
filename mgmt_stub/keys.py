"""The management side's signing keys and root documents, kept in one key directory.

Layout of a key directory (created 0700)::

    private/<keyid>.pem     Ed25519 private keys, PKCS#8 PEM, mode 0600
    revoked/<keyid>.pem     private keys of keys removed by a rotation (kept for audit)
    roots/<N>.json          every root version, as signed envelopes (1, 2, ...)
    root.json               a copy of the newest root: what a new agent is provisioned with

``init`` creates root version 1; ``rotate`` writes version N+1 signed by a threshold of
version N's root keys and of its own. Private key bytes are never printed or logged;
only key ids (hex SHA-256 of the public key) are.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import (
    ROOT_PAYLOAD_TYPE,
    Signature,
    encode_envelope,
    keyid_for,
    pae,
    parse_envelope,
)
from edge_agent.bundle.model import FORMAT_VERSION, ROOT_TYPE, Root, parse_root
from edge_agent.clock import format_time
from edge_agent.files import atomic_write


class KeyStoreError(Exception):
    """The key directory is missing, incomplete or would be overwritten."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    keyid: str
    private: Ed25519PrivateKey

    def sign(self, payload_type: str, payload: bytes) -> Signature:
        return Signature(self.keyid, self.private.sign(pae(payload_type, payload)))


def generate_key() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey(keyid_for(raw), private)


def public_raw(key: SigningKey) -> bytes:
    return key.private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def root_payload(
    *,
    version: int,
    expires_at: dt.datetime,
    root_keys: Iterable[SigningKey],
    root_threshold: int,
    policy_keys: Iterable[SigningKey],
    policy_threshold: int,
) -> bytes:
    """Canonical bytes of a root document naming the given keys."""
    root_keys, policy_keys = list(root_keys), list(policy_keys)
    keys = {
        k.keyid: {"keytype": "ed25519", "public": public_raw(k).hex()}
        for k in root_keys + policy_keys
    }
    return canonical.encode(
        {
            "_type": ROOT_TYPE,
            "format_version": FORMAT_VERSION,
            "version": version,
            "expires_at": format_time(expires_at),
            "keys": keys,
            "roles": {
                "root": {"keyids": sorted(k.keyid for k in root_keys), "threshold": root_threshold},
                "policy": {
                    "keyids": sorted(k.keyid for k in policy_keys),
                    "threshold": policy_threshold,
                },
            },
        }
    )


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[SigningKey]) -> bytes:
    return encode_envelope(payload_type, payload, [k.sign(payload_type, payload) for k in signers])


class KeyDirectory:
    """A key directory on disk; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- reading -----------------------------------------------------------------------
    def root_versions(self) -> list[int]:
        roots = self.path / "roots"
        if not roots.is_dir():
            raise KeyStoreError(
                f"key directory {self.path} has no roots/ (run 'mgmt-stub keys init')"
            )
        return sorted(int(p.stem) for p in roots.glob("*.json") if p.stem.isdigit())

    def root_envelope(self, version: int) -> bytes:
        return (self.path / "roots" / f"{version}.json").read_bytes()

    def current_root(self) -> tuple[Root, bytes]:
        versions = self.root_versions()
        if not versions:
            raise KeyStoreError(f"key directory {self.path} holds no root document")
        data = self.root_envelope(versions[-1])
        envelope = parse_envelope(data, what="root", max_bytes=1 << 20)
        return parse_root(envelope.payload, max_bytes=1 << 20), data

    def signing_key(self, keyid: str) -> SigningKey:
        path = self.path / "private" / f"{keyid}.pem"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyStoreError(
                f"private key {keyid[:16]} is not in {self.path / 'private'}"
            ) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyStoreError(f"private key {keyid[:16]} is not an Ed25519 key")
        return SigningKey(keyid, private)

    def policy_signers(self) -> list[SigningKey]:
        root, _ = self.current_root()
        available = [
            k
            for k in sorted(root.policy_role.keyids)
            if (self.path / "private" / f"{k}.pem").exists()
        ]
        if len(available) < root.policy_role.threshold:
            raise KeyStoreError(
                f"only {len(available)} of {root.policy_role.threshold} policy keys needed are in {self.path}"
            )
        return [self.signing_key(k) for k in available[: root.policy_role.threshold]]

    # -- writing -----------------------------------------------------------------------
    def init(
        self,
        *,
        now: dt.datetime,
        expires_days: int,
        root_keys: int = 1,
        root_threshold: int = 1,
        policy_keys: int = 1,
        policy_threshold: int = 1,
    ) -> Root:
        if (self.path / "roots").exists():
            raise KeyStoreError(f"key directory {self.path} is already initialised")
        if not 1 <= root_threshold <= root_keys or not 1 <= policy_threshold <= policy_keys:
            raise KeyStoreError("each threshold must be between 1 and the number of keys")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        roots = [self._new_key() for _ in range(root_keys)]
        policies = [self._new_key() for _ in range(policy_keys)]
        payload = root_payload(
            version=1,
            expires_at=now + dt.timedelta(days=expires_days),
            root_keys=roots,
            root_threshold=root_threshold,
            policy_keys=policies,
            policy_threshold=policy_threshold,
        )
        self._write_root(1, sign_envelope(ROOT_PAYLOAD_TYPE, payload, roots))
        return self.current_root()[0]

    def rotate(
        self,
        *,
        now: dt.datetime,
        expires_days: int,
        revoke: Iterable[str] = (),
        new_policy_keys: int = 0,
        new_root_keys: int = 0,
        policy_threshold: int | None = None,
        root_threshold: int | None = None,
    ) -> Root:
        old, _ = self.current_root()
        revoked = {self._resolve(old, k) for k in revoke}
        old_root_signers = [
            self.signing_key(k) for k in sorted(old.root_role.keyids) if self._has(k)
        ]
        if len(old_root_signers) < old.root_role.threshold:
            raise KeyStoreError("not enough root private keys to sign the next root version")
        roots = [k for k in old_root_signers if k.keyid not in revoked]
        roots += [self._new_key() for _ in range(new_root_keys)]
        policies = [
            self.signing_key(k)
            for k in sorted(old.policy_role.keyids)
            if k not in revoked and self._has(k)
        ]
        policies += [self._new_key() for _ in range(new_policy_keys)]
        if not roots or not policies:
            raise KeyStoreError("a rotation must leave at least one root key and one policy key")
        r_threshold = min(root_threshold or old.root_role.threshold, len(roots))
        p_threshold = min(policy_threshold or old.policy_role.threshold, len(policies))
        version = old.version + 1
        payload = root_payload(
            version=version,
            expires_at=now + dt.timedelta(days=expires_days),
            root_keys=roots,
            root_threshold=r_threshold,
            policy_keys=policies,
            policy_threshold=p_threshold,
        )
        signers = {
            k.keyid: k for k in old_root_signers[: old.root_role.threshold] + roots[:r_threshold]
        }
        self._write_root(version, sign_envelope(ROOT_PAYLOAD_TYPE, payload, signers.values()))
        (self.path / "revoked").mkdir(mode=0o700, exist_ok=True)
        for keyid in revoked:
            src = self.path / "private" / f"{keyid}.pem"
            if src.exists():
                src.rename(self.path / "revoked" / f"{keyid}.pem")
        return self.current_root()[0]

    def _resolve(self, root: Root, prefix: str) -> str:
        matches = [k for k in root.keys if k.startswith(prefix.lower())]
        if len(matches) != 1:
            raise KeyStoreError(
                f"key id prefix {prefix!r} matches {len(matches)} keys of the current root"
            )
        return matches[0]

    def _has(self, keyid: str) -> bool:
        return (self.path / "private" / f"{keyid}.pem").exists()

    def _new_key(self) -> SigningKey:
        key = generate_key()
        private_dir = self.path / "private"
        private_dir.mkdir(mode=0o700, exist_ok=True)
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(private_dir / f"{key.keyid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return key

    def _write_root(self, version: int, envelope: bytes) -> None:
        roots = self.path / "roots"
        roots.mkdir(mode=0o700, exist_ok=True)
        atomic_write(roots / f"{version}.json", envelope, mode=0o644)
        atomic_write(self.path / "root.json", envelope, mode=0o644)
