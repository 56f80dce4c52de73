"""Importing a bundle file: read it once, verify it, commit it, record the outcome.

This is the shell around ``bundle.verify``: it opens the file, hashes it while verification
streams it, stages artifacts in a private folder, and asks the state store to commit. The
online sync path (``edge_agent.sync.engine``) calls ``verify_and_commit`` with the file it
downloaded, so both paths meet at the same verification function and the same commit.

Every outcome (committed, already in force, rejected, failed) is recorded in the import
history and queued as an ``import`` event for the management plane in the same
transaction, followed by a health event if the health changed.

It never writes to the folder the bundle came from (USB media may be read-only).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from edge_agent.bundle.trust import TrustState
from edge_agent.bundle.verify import DiscardSink, VerifiedBundle, verify_bundle
from edge_agent.clock import Clock
from edge_agent.config import AgentConfig
from edge_agent.control import admit
from edge_agent.errors import BundleError, BundleErrorCode, StateError
from edge_agent.findings import import_data
from edge_agent.outbox import Event
from edge_agent.state import ImportRecord, Source, StateStore
from edge_agent.telemetry import note_health, stamp

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImportResult:
    outcome: str  # "committed", "pending" (verified, waiting: hold or window) or "already-in-force"
    bundle: VerifiedBundle
    file_sha256: str


class BundleInput:
    """An untrusted bundle byte stream that hashes everything read through it.

    ``sha256()`` reads the rest of the stream and returns the hash of all of it: the
    identity under which the file is remembered as seen.
    """

    def __init__(self, stream: BinaryIO, *, kind: str, location: str, max_bytes: int) -> None:
        self._stream = stream
        self._hasher = hashlib.sha256()
        self._count = 0
        self._max = max_bytes
        self.kind = kind
        self.location = location

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hasher.update(data)
        self._count += len(data)
        return data

    def sha256(self) -> str | None:
        """Hash of the whole input, or None if it is larger than the bundle size limit."""
        while self._count <= self._max:
            if not self.read(1 << 20):
                return self._hasher.hexdigest()
        return None


def verify_file(
    path: Path, *, trust: TrustState, config: AgentConfig, clock: Clock
) -> VerifiedBundle:
    """Verify without side effects: nothing is staged, committed or recorded."""
    with _open(path) as handle:
        return verify_bundle(
            handle,
            trust=trust,
            identity=config.identity,
            now=clock.now(),
            limits=config.limits,
            sink=DiscardSink(),
        )


def import_file(
    path: Path, *, store: StateStore, config: AgentConfig, clock: Clock
) -> ImportResult:
    """Verify and commit one bundle file; see ``verify_and_commit``."""
    with _open(path) as handle:
        return verify_and_commit(
            BundleInput(
                handle, kind="bundle", location=str(path), max_bytes=config.limits.max_bundle_bytes
            ),
            store=store,
            config=config,
            clock=clock,
        )


def verify_and_commit(
    source: BundleInput, *, store: StateStore, config: AgentConfig, clock: Clock
) -> ImportResult:
    """The one path from untrusted bytes to the policy in force, for every source.

    Records the outcome in the import history. Raises BundleError (rejected) or StateError
    (could not commit); in both cases the previous policy stays in force.
    """
    now = clock.now()
    trust = store.trust()
    context = rejection_context(trust, config)
    try:
        with store.staging() as staging:
            bundle = verify_bundle(
                cast(BinaryIO, source),
                trust=trust,
                identity=config.identity,
                now=now,
                limits=config.limits,
                sink=staging,
            )
            sha = source.sha256()
            assert sha is not None, "verify_bundle enforces the same size limit"
            meta = bundle.metadata
            if bundle.already_in_force:
                pending = store.pending_policy()
                waiting = pending is not None and pending.get("revision") == meta.revision
                record = ImportRecord(
                    now,
                    source.location,
                    sha,
                    "pending" if waiting else "already-in-force",
                    meta.revision,
                    meta.bundle_id,
                    message="already verified; waiting to be applied" if waiting else None,
                )
                store.record_import(record, events=[_event(record, source.kind, clock)])
                note_health(store, clock)
                log.info(
                    "bundle %s: revision %d is already %s",
                    source.location,
                    meta.revision,
                    "pending" if waiting else "in force",
                )
                return ImportResult(record.result, bundle, sha)
            admission = admit(meta.settings.to_json(), store, config, clock)
            committed = ImportRecord(
                now,
                source.location,
                sha,
                "committed" if admission.apply else "pending",
                meta.revision,
                meta.bundle_id,
                message=None if admission.apply else admission.reason,
            )
            store.commit(
                bundle,
                source=Source(source.kind, source.location, sha, now),
                staging=staging,
                now=now,
                events=[_event(committed, source.kind, clock)],
                pending=not admission.apply,
            )
    except BundleError as exc:
        # A file still being copied (truncated) is not remembered: it will be offered again.
        sha_or_none = None if exc.retryable else _drain_hash(source)
        _record(
            store,
            ImportRecord(
                now,
                source.location,
                sha_or_none,
                "rejected",
                code=exc.code.value,
                message=exc.detail,
                context=context,
            ),
            source.kind,
            clock,
        )
        log.warning("bundle %s rejected: %s", source.location, exc)
        raise
    except StateError as exc:
        _record(
            store,
            ImportRecord(now, source.location, None, "failed", message=str(exc)),
            source.kind,
            clock,
        )
        log.error("bundle %s not committed: %s", source.location, exc)
        raise
    note_health(store, clock)
    if not admission.apply:
        log.info(
            "bundle %s verified: revision %d (%s) pending: %s",
            source.location,
            meta.revision,
            meta.bundle_id,
            admission.reason,
        )
        return ImportResult("pending", bundle, sha)
    log.info(
        "bundle %s committed: revision %d (%s) now in force",
        source.location,
        meta.revision,
        meta.bundle_id,
    )
    return ImportResult("committed", bundle, sha)


def import_dropped_file(
    path: Path, *, store: StateStore, config: AgentConfig, clock: Clock
) -> bool:
    """Import a file found in a drop folder; True when done with it, False to offer it again.

    A file is skipped without verifying when the store has seen it: committed or already
    in force, or rejected under the same trust root and agent identity (a rejection that
    may pass after a root rotation or a config fix is tried again then). A file larger than
    the bundle limit is refused from its size alone, without being read.
    """
    now = clock.now()
    try:
        size = path.stat().st_size
    except OSError as exc:
        log.warning("bundle %s cannot be read: %s", path, exc.strerror or exc)
        return False
    limit = config.limits.max_bundle_bytes
    if size > limit:
        message = f"file {path} is {size} bytes, limit is {limit}"
        _record(
            store,
            ImportRecord(
                now,
                str(path),
                None,
                "rejected",
                code=BundleErrorCode.TOO_LARGE.value,
                message=message,
            ),
            "bundle",
            clock,
        )
        log.warning("bundle %s rejected: %s", path, message)
        return True
    try:
        sha = file_sha256(path, max_bytes=limit)
        seen = store.seen_file(sha) if sha is not None else None
        if seen is not None and (
            seen.get("result") in ("committed", "already-in-force", "pending")
            or seen.get("context") == rejection_context(store.trust(), config)
        ):
            log.debug("bundle %s already handled (%s)", path, seen.get("result"))
            return True
        import_file(path, store=store, config=config, clock=clock)
    except BundleError as exc:
        return not exc.retryable
    except StateError as exc:
        return not exc.transient
    return True


def rejection_context(trust: TrustState, config: AgentConfig) -> str:
    """What a rejection depended on besides the file: the trust root and who this agent is.

    The same bytes rejected under the same context are rejected again; after a root rotation
    or a change of identity they may pass, so they are worth verifying again."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(config.labels.items()))
    return f"root-v{trust.root.root.version}/{config.cluster_id}/{labels}"


def _drain_hash(source: BundleInput) -> str | None:
    try:
        return source.sha256()
    except OSError:
        return None


def _event(record: ImportRecord, kind: str, clock: Clock) -> Event:
    return stamp("import", import_data(record.to_json(), kind), clock)


def _record(store: StateStore, record: ImportRecord, kind: str, clock: Clock) -> None:
    try:
        store.record_import(record, events=[_event(record, kind, clock)])
    except StateError as exc:
        log.error("import result for %s not recorded: %s", record.location, exc)
        return
    note_health(store, clock)


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise BundleError(
            BundleErrorCode.READ_FAILED, f"cannot open {path}: {exc.strerror or exc}"
        ) from None


def file_sha256(path: Path, *, max_bytes: int) -> str | None:
    """SHA-256 of a whole file, or None if it is larger than ``max_bytes``."""
    with _open(path) as handle:
        return BundleInput(handle, kind="bundle", location=str(path), max_bytes=max_bytes).sha256()
