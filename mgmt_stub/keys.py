"""The management side's signing keys and root documents, kept in one key directory.

Layout of a key directory (created 0700)::

    private/<keyid>.pem     Ed25519 private keys, PKCS#8 PEM, mode 0600
    revoked/<keyid>.pem     private keys of keys removed by a rotation (kept for audit)
    roots/<N>.json          every root version, as signed envelopes (1, 2, ...)
    root.json               a copy of the newest root: what a new agent is provisioned with

``init`` creates root version 1; ``rotate`` writes version N+1 signed by a threshold of
version N's root keys and of its own. A rotation carries every key of version N forward
(by its public key, read from the current root) unless it is explicitly revoked, so keys
whose private half lives elsewhere (another officer, an HSM) are never dropped by
accident; only the signing threshold needs to be present here. Thresholds are never
lowered silently. Private key bytes are never printed or logged; only key ids (hex
SHA-256 of the public key) are.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
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
class PublicKey:
    """The public half of a key: what a root document lists. No private file needed."""

    keyid: str
    raw: bytes  # the 32-byte raw Ed25519 public key

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        return cls(keyid_for(raw), raw)


@dataclass(frozen=True, slots=True)
class SigningKey:
    keyid: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.keyid, public_raw(self))

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
    root_keys: Iterable[PublicKey | SigningKey],
    root_threshold: int,
    policy_keys: Iterable[PublicKey | SigningKey],
    policy_threshold: int,
) -> bytes:
    """Canonical bytes of a root document naming the given public keys.

    Only public keys are needed, so keys held elsewhere (another officer, an HSM) can be
    listed; a ``SigningKey`` stands for its public half.
    """
    roots = [_public(k) for k in root_keys]
    policies = [_public(k) for k in policy_keys]
    keys = {k.keyid: {"keytype": "ed25519", "public": k.raw.hex()} for k in roots + policies}
    return canonical.encode(
        {
            "_type": ROOT_TYPE,
            "format_version": FORMAT_VERSION,
            "version": version,
            "expires_at": format_time(expires_at),
            "keys": keys,
            "roles": {
                "root": {"keyids": sorted({k.keyid for k in roots}), "threshold": root_threshold},
                "policy": {
                    "keyids": sorted({k.keyid for k in policies}),
                    "threshold": policy_threshold,
                },
            },
        }
    )


def _public(key: PublicKey | SigningKey) -> PublicKey:
    return key.public if isinstance(key, SigningKey) else key


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
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyStoreError(
                f"private key file {path} is not an unencrypted PEM private key"
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
        """Write root version N+1: every key of version N carried forward unless revoked.

        Keys whose private file is not in this directory (held by another officer, or in
        an HSM) stay in the new root: only their public key is needed to list them. The
        new root is signed by a threshold of version N's root keys and a threshold of its
        own whose private keys are here. Thresholds are kept (or set explicitly) and never
        lowered to fit: a revocation that leaves a role fewer keys than its threshold is
        refused unless new keys in the same rotation make up for it. Everything is planned
        and checked before anything is written.
        """
        old, _ = self.current_root()
        revoked = {self._resolve(old, k) for k in revoke}
        fresh_roots = [generate_key() for _ in range(new_root_keys)]
        fresh_policies = [generate_key() for _ in range(new_policy_keys)]
        roots = [PublicKey(k, old.keys[k]) for k in sorted(old.root_role.keyids - revoked)]
        roots += [k.public for k in fresh_roots]
        policies = [PublicKey(k, old.keys[k]) for k in sorted(old.policy_role.keyids - revoked)]
        policies += [k.public for k in fresh_policies]
        r_threshold = self._threshold(
            "root", root_threshold, old.root_role.threshold, len(roots), revoked, "--new-root-key"
        )
        p_threshold = self._threshold(
            "policy",
            policy_threshold,
            old.policy_role.threshold,
            len(policies),
            revoked,
            "--new-policy-key",
        )
        version = old.version + 1

        # Signers: a threshold of version N's root keys (keys staying in the root first,
        # so a key being revoked signs only when it must), then a threshold of the new
        # root's keys, preferring keys that already sign.
        present_old = sorted(
            (k for k in old.root_role.keyids if self._has(k)), key=lambda k: (k in revoked, k)
        )
        if len(present_old) < old.root_role.threshold:
            raise KeyStoreError(
                f"root version {version} must be signed by {old.root_role.threshold} of the "
                f"{len(old.root_role.keyids)} root keys of version {old.version}, but only "
                f"{len(present_old)} of their private keys are in {self.path / 'private'}"
            )
        old_signers = present_old[: old.root_role.threshold]
        fresh_ids = {k.keyid for k in fresh_roots}
        present_new = sorted(
            (k.keyid for k in roots if k.keyid in fresh_ids or self._has(k.keyid)),
            key=lambda k: (k not in old_signers, k in fresh_ids, k),
        )
        if len(present_new) < r_threshold:
            raise KeyStoreError(
                f"root version {version} must also be signed by {r_threshold} of its own "
                f"{len(roots)} root keys, but only {len(present_new)} of their private keys "
                f"are in {self.path / 'private'}"
            )
        fresh_by_id = {k.keyid: k for k in fresh_roots}
        signers = {
            keyid: fresh_by_id[keyid] if keyid in fresh_by_id else self.signing_key(keyid)
            for keyid in old_signers + present_new[:r_threshold]
        }
        payload = root_payload(
            version=version,
            expires_at=now + dt.timedelta(days=expires_days),
            root_keys=roots,
            root_threshold=r_threshold,
            policy_keys=policies,
            policy_threshold=p_threshold,
        )
        envelope = sign_envelope(ROOT_PAYLOAD_TYPE, payload, signers.values())

        written: list[Path] = []
        try:
            for key in fresh_roots + fresh_policies:
                written.append(self._store_key(key))
            self._write_root(version, envelope)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        (self.path / "revoked").mkdir(mode=0o700, exist_ok=True)
        for keyid in revoked:
            src = self.path / "private" / f"{keyid}.pem"
            if src.exists():
                src.rename(self.path / "revoked" / f"{keyid}.pem")
        return self.current_root()[0]

    @staticmethod
    def _threshold(
        role: str,
        requested: int | None,
        current: int,
        count: int,
        revoked: set[str],
        add_option: str,
    ) -> int:
        """The role's threshold in the next root: kept unless set explicitly, never cut to fit."""
        threshold = current if requested is None else requested
        if threshold < 1:
            raise KeyStoreError(f"the {role} threshold must be at least 1, got {threshold}")
        if count < threshold and revoked:
            revoking = ", ".join(sorted(k[:16] for k in revoked))
            raise KeyStoreError(
                f"revoking {revoking} would leave the {role} role {count} key(s), fewer than "
                f"its threshold {threshold}; add keys in the same rotation ({add_option}) "
                f"or revoke fewer"
            )
        if count < threshold:
            raise KeyStoreError(
                f"the {role} threshold {threshold} is more than the role's {count} key(s)"
            )
        return threshold

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
        self._store_key(key)
        return key

    def _store_key(self, key: SigningKey) -> Path:
        """Write a private key file (0600, never overwriting); return its path."""
        private_dir = self.path / "private"
        private_dir.mkdir(mode=0o700, exist_ok=True)
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = private_dir / f"{key.keyid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def _write_root(self, version: int, envelope: bytes) -> None:
        roots = self.path / "roots"
        roots.mkdir(mode=0o700, exist_ok=True)
        atomic_write(roots / f"{version}.json", envelope, mode=0o644)
        atomic_write(self.path / "root.json", envelope, mode=0o644)
