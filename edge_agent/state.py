"""The agent's on-disk state: the only module that touches the embedded store.

Layout of ``state_dir`` (created 0755; everything private below it is 0700/0600)::

    store/          diskcache (SQLite, WAL) — the store of record, private to the agent
    artifacts/      verified artifact blobs, named by SHA-256, private
    staging/        one private folder per import in progress; removed on success or failure
    downloads/      bundles being downloaded by the sync engine (``desired-<pid>-*``),
                    private; a dead process's leftovers are removed when an engine starts
    status.json     a world-readable snapshot for ``edge-agent status`` run by other users

diskcache is configured as a store of record, not a cache (its defaults are wrong here):
no eviction (it evicted a security key once the cache filled), every value kept inside
SQLite (values >= 32 KiB as separate files were lost to ``kill -9`` inside a transaction),
``synchronous=FULL`` (NORMAL can lose the last commit on power loss), and JSON values
(the default pickling is a known, unfixed code-execution risk).

Keys and what they hold (all JSON):

    schema_version      int, SCHEMA_VERSION
    trust               trusted root envelope, revoked key ids, trusted-time mark,
                        revision in force and its digest
    root_history        every root version accepted, oldest first
    policy/current      the policy in force (manifests, settings, source)
    policy/previous     the policy it replaced
    policy/pending      a verified newer policy waiting to be applied (held on site, or
                        waiting for a maintenance window); the trust state already counts it
    summary/pending     the small summary of policy/pending
    control/hold        the on-site hold: reason and since (``edge-agent hold``)
    summary/current     a small summary of policy/current (what status shows, artifact list)
    summary/previous    the same for policy/previous
    imports             the newest MAX_IMPORTS import attempts, newest last
    stats/imports       import attempts ever made, by result (counters for metrics)
    seen_files          SHA-256 of bundle files already handled, with their result
    enforce/inventory   what the agent applied to its target (what it may prune), as JSON
    enforce/last_cycle  the newest reconcile cycle's summary (per-object results, health)
    policy/confirmed_at when a verified bundle last confirmed the policy (committed, or
                        already in force); with sync/state's last success, what staleness
                        is measured from
    enforce/requests    reconcile requests (a counter; an ``enforce`` process watches it)
    sync/credential     the management sync credential: server URL, cluster id, credential
                        id, issued_at and the secret ``credential``; never in ``view()``, the
                        snapshot or a log line (the store is 0700, its files 0600)
    sync/state          what the sync engine knows of its link: ETag of the desired state
                        last verified, newest action sequence, online/offline since, last
                        success, last attempt and error, measured clock skew (no secrets)
    outbox/health_last  the data of the newest health event queued (queued again only when
                        it changes)
    outbox/meta         the outbox's counters: next sequence, first page, per type
                        {count, bytes, oldest sequence}, dropped and coalesced per type
    outbox/page/<n>     page n: [seq, type, bytes, event JSON text] of the queued events
                        whose sequence is in [n*OUTBOX_PAGE, (n+1)*OUTBOX_PAGE), oldest first
    actions/meta        the action journal's next sequence, oldest kept sequence, open ids
    actions/id/<id>     one action: type, sequence, begun_at, finished_at, outcome, detail
    actions/seq/<seq>   the action id begun at that sequence (to list and prune in order)
    agent/key           the agent's own Ed25519 private key (raw, base64), made on first use;
                        it signs status reports carried out by USB. Secret: never in
                        ``view()``, the snapshot or a log line
    reports/carried     status reports written and not yet acknowledged, newest last (at most
                        MAX_CARRIED_REPORTS): report id, created_at, where it was written, how
                        many queued events it carries and their outbox sequences as runs
                        [first, last] (a backlog is mostly consecutive: a few runs, not
                        100,000 numbers)

The outbox is a queue of events for the management server (policy: ``edge_agent.outbox``).
Every operation touches the meta key and the pages of the events it handles (one store
value per OUTBOX_PAGE events, not one per event: per-value overhead dominated): enqueueing or acknowledging 1,000 events costs the same whether 10 or 100,000
are queued. An event stays until acknowledged, so ``kill -9`` between sending a batch and
acknowledging it loses nothing (it is sent again; the server deduplicates by event id).

The action journal makes actions run at most once: ``action_begin`` records an id before
the action runs, in one transaction with the check that it was never begun. An entry is
forgotten only when it is both beyond the newest ACTION_JOURNAL_KEEP and older than
ACTION_JOURNAL_KEEP_DAYS (whichever keeps more), so a re-sent id is refused for at least
90 days. An action begun and never finished (the agent died) is listed by
``interrupted_actions`` and is never begun again.

Committing a verified bundle is one SQLite transaction; artifacts are placed (fsynced,
renamed) before it, so after ``kill -9`` at any point the store holds the old policy or
the new one, never a mix, and every artifact the policy names exists. Placing artifacts,
the commit and collecting unreferenced artifacts happen under an exclusive lock
(``store/commit.lock``), so concurrent importers cannot collect each other's artifacts.
Staging folders left by a killed import are removed the next time the store is opened.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from edge_agent.bundle.envelope import parse_envelope
from edge_agent.bundle.model import parse_root
from edge_agent.bundle.trust import TrustedRoot, TrustState, initial_trust, load_initial_root
from edge_agent.bundle.verify import VerifiedBundle
from edge_agent.clock import format_time, parse_time
from edge_agent.errors import (
    BundleError,
    StateConflictError,
    StateCorruptError,
    StateError,
    StateSchemaError,
    StateWriteError,
)
from edge_agent.files import atomic_write, fsync_dir, process_alive
from edge_agent.outbox import (
    Admit,
    Event,
    OutboxPolicy,
    Reason,
    Refuse,
    TypeUsage,
    event_size,
    next_step,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_IMPORTS = 200
MAX_SEEN_FILES = 2000
OUTBOX_PAGE = 64
ACTION_JOURNAL_KEEP = 10_000
ACTION_JOURNAL_KEEP_DAYS = 90
INTERRUPTED = "interrupted"
ROOT_MAX_BYTES = 1 << 20
MAX_CARRIED_REPORTS = 50

#: diskcache settings that make it a store of record; checked by the tests.
STORE_SETTINGS: Mapping[str, Any] = {
    "eviction_policy": "none",
    "size_limit": 2**62,
    "cull_limit": 0,
    "disk_min_file_size": 2**62,  # never spill a value to a separate file
    "sqlite_synchronous": 2,  # FULL
    "sqlite_journal_mode": "wal",
    "statistics": 0,
    "tag_index": 0,
}

_K_SCHEMA = "schema_version"
_K_TRUST = "trust"
_K_ROOTS = "root_history"
_K_CURRENT = "policy/current"
_K_PREVIOUS = "policy/previous"
_K_SUMMARY = "summary/current"
_K_SUMMARY_PREVIOUS = "summary/previous"
_K_IMPORTS = "imports"
_K_SEEN = "seen_files"
_K_INVENTORY = "enforce/inventory"
_K_LAST_CYCLE = "enforce/last_cycle"
_K_SYNC_CREDENTIAL = "sync/credential"
_K_SYNC_STATE = "sync/state"
_K_CONFIRMED = "policy/confirmed_at"
_K_REQUESTS = "enforce/requests"
_K_HEALTH_LAST = "outbox/health_last"
_K_IMPORT_COUNTS = "stats/imports"
_K_PENDING = "policy/pending"
_K_SUMMARY_PENDING = "summary/pending"
_K_HOLD = "control/hold"
_K_OUTBOX = "outbox/meta"
_K_ACTIONS = "actions/meta"
_K_AGENT_KEY = "agent/key"
_K_CARRIED = "reports/carried"


def _k_outbox_page(page: int) -> str:
    return f"outbox/page/{page}"


def _k_action(action_id: str) -> str:
    return f"actions/id/{action_id}"


def _k_action_seq(seq: int) -> str:
    return f"actions/seq/{seq}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a policy came from."""

    kind: str  # "bundle" (an offline file) or "sync" (downloaded from the management server)
    location: str  # file path, or server URL
    file_sha256: str
    received_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "location": self.location,
            "file_sha256": self.file_sha256,
            "received_at": format_time(self.received_at),
        }


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """One attempt to import a bundle, kept in the import history."""

    at: dt.datetime
    location: str
    file_sha256: str | None
    result: str  # "committed", "already-in-force", "rejected", "failed"
    revision: int | None = None
    bundle_id: str | None = None
    code: str | None = None
    message: str | None = None
    context: str | None = None  # trust root and identity a rejection depended on

    def to_json(self) -> dict[str, Any]:
        return {
            "at": format_time(self.at),
            "location": self.location,
            "file_sha256": self.file_sha256,
            "result": self.result,
            "revision": self.revision,
            "bundle_id": self.bundle_id,
            "code": self.code,
            "message": self.message,
            "context": self.context,
        }


class Staging:
    """A private folder for one import's artifacts; the ``ArtifactSink`` of ``verify``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, Path] = {}

    def store(self, path: str, chunks: Iterable[bytes]) -> None:
        target = self.folder / f"{len(self.files):05d}.blob"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StateWriteError(
                f"staging artifact {path!r} failed: {exc.strerror or exc}"
            ) from None
        self.files[path] = target


class StateStore:
    """The agent's state; see the module docstring. Open with ``StateStore.open``."""

    def __init__(self, state_dir: Path, cache: diskcache.Cache, snapshot_path: Path | None) -> None:
        self.state_dir = state_dir
        self._cache = cache
        self._snapshot_path = snapshot_path
        self._artifacts = state_dir / "artifacts"

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls, state_dir: Path, *, snapshot_path: Path | None = None, timeout_s: float = 30.0
    ) -> StateStore:
        """Open (creating if needed) the store; raise StateError if it cannot be used.

        Only the agent's own user (or root) can open it: the store is private. Others read
        the world-readable snapshot (``status``).
        """
        try:
            if not state_dir.exists():
                state_dir.mkdir(mode=0o755, parents=True)
                os.chmod(state_dir, 0o755)  # noqa: S103 - not masked by umask: status.json is public
            for private in ("store", "artifacts", "staging"):
                folder = state_dir / private
                folder.mkdir(mode=0o700, exist_ok=True)
                if stat.S_IMODE(folder.stat().st_mode) != 0o700:
                    os.chmod(folder, 0o700)
        except OSError as exc:
            raise StateWriteError(f"state directory {state_dir}: {exc.strerror or exc}") from None
        try:
            cache = diskcache.Cache(
                str(state_dir / "store"),
                timeout=timeout_s,
                disk=diskcache.JSONDisk,
                **STORE_SETTINGS,
            )
        except sqlite3.DatabaseError as exc:
            raise _classify(exc, f"state store {state_dir / 'store'}") from None
        store = cls(state_dir, cache, snapshot_path)
        store._check_schema()
        store._remove_abandoned_staging()
        if snapshot_path is not None and store.is_provisioned():
            store.write_snapshot()  # a crash may have come between a commit and its snapshot
        return store

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        version = self._get(_K_SCHEMA)
        if version is None:
            if self._get(_K_TRUST) is not None:
                raise StateCorruptError(
                    f"state store {self.state_dir}: has data but no schema version"
                )
            with self._write("initialising the store"):
                self._cache.set(_K_SCHEMA, SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StateSchemaError(
                f"state store {self.state_dir}: schema version {version!r}, this agent reads {SCHEMA_VERSION}"
            )

    # -- trust -----------------------------------------------------------------------------
    def is_provisioned(self) -> bool:
        return self._get(_K_TRUST) is not None

    def provision(self, initial_root: bytes, *, now: dt.datetime) -> None:
        """Trust the provisioned root if no root is trusted yet; otherwise do nothing."""
        if self.is_provisioned():
            return
        trusted = load_initial_root(initial_root, max_bytes=ROOT_MAX_BYTES)
        state = initial_trust(trusted)
        with self._write("provisioning the trust root"), self._cache.transact():
            if self._cache.get(_K_TRUST) is None:
                self._cache.set(_K_TRUST, _trust_to_json(state))
                self._cache.set(_K_ROOTS, [_root_entry(trusted, now)])
        self.write_snapshot()

    def trust(self) -> TrustState:
        """The trust state verification starts from; StateError before provisioning."""
        raw = self._get(_K_TRUST)
        if raw is None:
            raise StateError(f"state store {self.state_dir}: no trusted root yet (not provisioned)")
        return _trust_from_json(raw, self.state_dir)

    # -- policy ----------------------------------------------------------------------------
    def staging(self) -> contextlib.AbstractContextManager[Staging]:
        """A private staging folder, removed when the block ends (whatever happened)."""
        return _staging(self.state_dir / "staging")

    def commit(
        self,
        bundle: VerifiedBundle,
        *,
        source: Source,
        staging: Staging,
        now: dt.datetime,
        events: Sequence[Event] = (),
        pending: bool = False,
    ) -> None:
        """Make ``bundle`` the policy in force, atomically, with ``events`` queued; or, with
        ``pending``, keep it as the pending policy (applied later by ``promote_pending``)
        while the policy in force stays. Either way the trust state moves on to it (its
        revision is the newest accepted: an older one is a rollback from now on).

        Raises StateError if the trust state changed since ``bundle`` was verified (a
        concurrent import), or StateWriteError if the disk refuses; either way the previous
        state stays and nothing is queued.
        """
        record = ImportRecord(
            now,
            source.location,
            source.file_sha256,
            "pending" if pending else "committed",
            bundle.metadata.revision,
            bundle.metadata.bundle_id,
        )
        policy = _policy_to_json(bundle, source)
        # One writer at a time from placing artifacts to collecting the unreferenced ones,
        # so a concurrent import can never have its blob collected before it commits.
        with self._commit_lock():
            self._place_artifacts(bundle, staging)
            with (
                self._write(f"committing revision {bundle.metadata.revision}"),
                self._cache.transact(),
            ):
                if self._cache.get(_K_TRUST) != _trust_to_json(bundle.based_on):
                    raise StateConflictError(
                        "the policy in force changed while this bundle was verified; import it again"
                    )
                if (
                    not pending
                    and self._cache.get(_K_HOLD) is not None
                    and self._cache.get(_K_CURRENT) is not None
                ):
                    raise StateConflictError(
                        "a hold was set while this bundle was verified; import it again "
                        "(it will be kept pending)"
                    )
                if pending:
                    self._cache.set(_K_PENDING, policy)
                    self._cache.set(_K_SUMMARY_PENDING, _policy_summary(policy))
                else:
                    self._make_current(policy)
                self._cache.set(_K_TRUST, _trust_to_json(bundle.trust))
                if bundle.new_roots:
                    history = list(self._cache.get(_K_ROOTS) or [])
                    history.extend(_root_entry(r, now) for r in bundle.new_roots)
                    self._cache.set(_K_ROOTS, history)
                self._append_import(record)
                self._mark_seen(source.file_sha256, record)
                self._cache.set(_K_CONFIRMED, format_time(now))
                self._enqueue_locked(events, None)
            self._collect_artifacts()
        self.write_snapshot()

    def _make_current(self, policy: Mapping[str, Any]) -> None:
        """previous <- current, current <- ``policy``; any pending policy is superseded."""
        for key, previous_key in ((_K_CURRENT, _K_PREVIOUS), (_K_SUMMARY, _K_SUMMARY_PREVIOUS)):
            previous = self._cache.get(key)
            if previous is not None:
                self._cache.set(previous_key, previous)
        self._cache.set(_K_CURRENT, dict(policy))
        self._cache.set(_K_SUMMARY, _policy_summary(policy))
        self._cache.delete(_K_PENDING)
        self._cache.delete(_K_SUMMARY_PENDING)

    def pending_policy(self) -> Mapping[str, Any] | None:
        """The verified policy waiting to be applied, or None."""
        value = self._get(_K_PENDING)
        return value if isinstance(value, dict) else None

    def promote_pending(
        self, revision: int, *, now: dt.datetime, events: Sequence[Event] = ()
    ) -> bool:
        """Apply the pending policy if it is still ``revision`` (one transaction, with its
        ``events``); False when there is none or another took its place meanwhile."""
        with self._commit_lock():
            with self._write(f"applying pending revision {revision}"), self._cache.transact():
                pending = self._cache.get(_K_PENDING)
                if not isinstance(pending, dict) or pending.get("revision") != revision:
                    return False
                if self._cache.get(_K_HOLD) is not None:
                    return False  # held meanwhile: the hold wins
                self._make_current(pending)
                self._append_import(
                    ImportRecord(
                        now,
                        "pending",
                        pending["source"]["file_sha256"],
                        "applied",
                        revision,
                        pending["bundle_id"],
                    )
                )
                self._enqueue_locked(events, None)
            self._collect_artifacts()
        self.write_snapshot()
        return True

    def hold(self) -> Mapping[str, Any] | None:
        """The on-site hold (reason, since), or None."""
        value = self._get(_K_HOLD)
        return value if isinstance(value, dict) else None

    def set_hold(self, reason: str, *, now: dt.datetime) -> None:
        with self._write("setting the hold"):
            self._cache.set(_K_HOLD, {"reason": reason, "since": format_time(now)})
        self.write_snapshot()

    def clear_hold(self) -> Mapping[str, Any] | None:
        """Release the hold; the one released, or None."""
        with self._write("releasing the hold"), self._cache.transact():
            held = self._cache.get(_K_HOLD)
            self._cache.delete(_K_HOLD)
        self.write_snapshot()
        return held if isinstance(held, dict) else None

    def record_import(self, record: ImportRecord, *, events: Sequence[Event] = ()) -> None:
        """Remember an import attempt that did not commit (rejected, already in force...),
        with ``events`` queued in the same transaction."""
        with self._write("recording an import result"), self._cache.transact():
            self._append_import(record)
            if record.file_sha256 is not None:
                self._mark_seen(record.file_sha256, record)
            if record.result == "already-in-force":
                self._cache.set(_K_CONFIRMED, format_time(record.at))
            self._enqueue_locked(events, None)
        self.write_snapshot()

    def inventory(self) -> Mapping[str, Any] | None:
        """The enforcement inventory as stored (``Inventory.to_json()``), or None."""
        value = self._get(_K_INVENTORY)
        return value if isinstance(value, dict) else None

    def last_cycle(self) -> Mapping[str, Any] | None:
        value = self._get(_K_LAST_CYCLE)
        return value if isinstance(value, dict) else None

    def record_cycle(
        self,
        summary: Mapping[str, Any],
        inventory: Mapping[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> None:
        """Keep one reconcile cycle's outcome, the inventory it leaves and its ``events``,
        atomically."""
        with self._write("recording a reconcile cycle"), self._cache.transact():
            self._cache.set(_K_INVENTORY, dict(inventory))
            self._cache.set(_K_LAST_CYCLE, dict(summary))
            self._enqueue_locked(events, None)
        self.write_snapshot()

    def policy_confirmed_at(self) -> dt.datetime | None:
        """When a verified bundle last confirmed the policy in force (None: never)."""
        value = self._get(_K_CONFIRMED)
        return parse_time(value) if isinstance(value, str) else None

    def request_reconcile(self) -> int:
        """Ask the enforcer for a cycle now (``reconcile-now``); the new request count."""
        with self._write("requesting a reconcile"), self._cache.transact():
            count = int(self._cache.get(_K_REQUESTS) or 0) + 1
            self._cache.set(_K_REQUESTS, count)
        return count

    def reconcile_requests(self) -> int:
        """How many reconcile requests were ever made (watch it for a change)."""
        value = self._get(_K_REQUESTS)
        return int(value) if isinstance(value, int) else 0

    def seen_file(self, file_sha256: str) -> Mapping[str, Any] | None:
        seen = self._get(_K_SEEN) or {}
        entry = seen.get(file_sha256)
        return entry if isinstance(entry, dict) else None

    def current_policy(self) -> Mapping[str, Any] | None:
        value = self._get(_K_CURRENT)
        return value if isinstance(value, dict) else None

    def previous_policy(self) -> Mapping[str, Any] | None:
        value = self._get(_K_PREVIOUS)
        return value if isinstance(value, dict) else None

    def imports(self) -> list[Mapping[str, Any]]:
        return list(self._get(_K_IMPORTS) or [])

    def root_history(self) -> list[Mapping[str, Any]]:
        return list(self._get(_K_ROOTS) or [])

    def downloads_folder(self) -> Path:
        """The private folder the sync engine downloads bundles into, rid of what a killed
        download left behind (never a running process's). Call once when the engine starts."""
        folder = self.state_dir / "downloads"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
            for leftover in folder.glob("desired-*"):
                pid = leftover.name.split("-")[1]
                if not pid.isdigit() or not process_alive(int(pid)):
                    leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise StateWriteError(f"downloads folder {folder}: {exc.strerror or exc}") from None
        return folder

    def artifact_path(self, sha256: str) -> Path:
        return self._artifacts / sha256

    # -- sync credential -------------------------------------------------------------------
    def sync_credential(self) -> Mapping[str, Any] | None:
        """The management sync credential as stored, or None before enrollment.

        It holds the secret ``credential``: callers must not log it or put it in a view.
        """
        value = self._get(_K_SYNC_CREDENTIAL)
        return value if isinstance(value, dict) else None

    def set_sync_credential(self, doc: Mapping[str, Any]) -> None:
        """Keep the sync credential (replacing any previous one), atomically.

        ``doc`` is a JSON object (server URL, cluster id, credential id, ``credential``); its
        shape is the sync client's business, checked there. It never reaches the snapshot.
        """
        if not isinstance(doc, Mapping):
            raise StateError("sync credential: expected a JSON object")
        value = dict(doc)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            # Never quote the value: it holds the secret.
            raise StateError("sync credential: expected JSON-encodable fields") from None
        with self._write("storing the sync credential"):
            self._cache.set(_K_SYNC_CREDENTIAL, value)

    def sync_state(self) -> dict[str, Any]:
        """What the sync engine recorded about its link (no secrets); {} before any sync."""
        value = self._get(_K_SYNC_STATE)
        return dict(value) if isinstance(value, dict) else {}

    def update_sync_state(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the sync state (a None value removes the key); the result."""
        with self._write("recording the sync state"), self._cache.transact():
            value = self._cache.get(_K_SYNC_STATE)
            state = dict(value) if isinstance(value, dict) else {}
            for key, item in changes.items():
                if item is None:
                    state.pop(key, None)
                else:
                    state[key] = item
            self._cache.set(_K_SYNC_STATE, state)
        return state

    def clear_sync_credential(self) -> None:
        """Forget the sync credential (unenrolled); doing so twice is harmless."""
        with self._write("clearing the sync credential"):
            self._cache.delete(_K_SYNC_CREDENTIAL)

    # -- outbox --------------------------------------------------------------------------
    def enqueue(self, events: Iterable[Event], *, policy: OutboxPolicy | None = None) -> None:
        """Queue ``events`` in order, applying the outbox policy, in one transaction."""
        events = list(events)
        with self._write("queueing events"), self._cache.transact():
            self._enqueue_locked(events, policy)
        log.debug("queued %d events", len(events))

    def note_health(self, event: Event, *, policy: OutboxPolicy | None = None) -> bool:
        """Queue a ``health`` event unless its data equals the last one queued; True if queued."""
        with self._write("queueing a health event"), self._cache.transact():
            data = json.loads(json.dumps(dict(event.data)))
            if self._cache.get(_K_HEALTH_LAST) == data:
                return False
            self._cache.set(_K_HEALTH_LAST, data)
            self._enqueue_locked([event], policy)
        return True

    def clear_health_mark(self) -> None:
        """Forget the last health event queued: the next one is queued whatever it says
        (after an enrolment or a ``resync``, the server may not have it)."""
        with self._write("clearing the health mark"):
            self._cache.delete(_K_HEALTH_LAST)

    def _enqueue_locked(self, events: Iterable[Event], policy: OutboxPolicy | None) -> None:
        """``enqueue`` inside a transaction the caller holds."""
        encoded = [(e.type, e.encode()) for e in events]
        if not encoded:
            return
        policy = policy or OutboxPolicy()
        meta = self._outbox_meta()
        pages = _Pages(self._cache)
        for event_type, text in encoded:
            size = event_size(text)
            while True:
                step = next_step(policy, _usage(meta), event_type, size)
                if isinstance(step, Admit):
                    seq = meta["next_seq"]
                    meta["next_seq"] = seq + 1
                    pages.get(seq // OUTBOX_PAGE).append([seq, event_type, size, text])
                    pages.touch(seq // OUTBOX_PAGE)
                    usage = meta["types"].setdefault(
                        event_type, {"count": 0, "bytes": 0, "oldest": seq}
                    )
                    usage["count"] += 1
                    usage["bytes"] += size
                    break
                if isinstance(step, Refuse):
                    _bump(meta["dropped"], event_type)
                    break
                victim = meta["types"][step.type]["oldest"]
                self._outbox_remove(meta, pages, [victim])
                _bump(
                    meta["coalesced" if step.reason is Reason.COALESCED else "dropped"],
                    step.type,
                )
        self._outbox_save(meta, pages)

    def outbox_batch(self, max_events: int, max_bytes: int) -> list[tuple[int, str]]:
        """The oldest queued events as ``(seq, event JSON)``, oldest first, without removing.

        At most ``max_events`` and ``max_bytes`` of event JSON, but always at least one event
        when any is queued (an event larger than ``max_bytes`` must still go out).
        """
        with self._write("reading the outbox"), self._cache.transact():
            meta = self._outbox_meta()
            batch: list[tuple[int, str]] = []
            total = 0
            page = meta["head_page"]
            last_page = (meta["next_seq"] - 1) // OUTBOX_PAGE
            while page <= last_page and len(batch) < max_events:
                for seq, _type, size, text in self._cache.get(_k_outbox_page(page)) or []:
                    if len(batch) >= max_events or (batch and total + size > max_bytes):
                        page = last_page  # full: stop after this page
                        break
                    batch.append((seq, text))
                    total += size
                page += 1
            return batch

    def ack(self, seqs: Iterable[int]) -> None:
        """Remove exactly the events ``seqs`` (delivered); unknown or repeated seqs are ignored."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return
        with self._write("acknowledging events"), self._cache.transact():
            meta = self._outbox_meta()
            pages = _Pages(self._cache)
            self._outbox_remove(meta, pages, wanted)
            self._outbox_save(meta, pages)

    def refuse(self, seq: int) -> str | None:
        """Remove one queued event the server refuses outright (a 422 for it alone), counted
        under ``refused`` by type so that it is never lost silently; its type, or None."""
        with self._write("removing a refused event"), self._cache.transact():
            meta = self._outbox_meta()
            pages = _Pages(self._cache)
            entries = pages.get(seq // OUTBOX_PAGE)
            kind = next((e[1] for e in entries if e[0] == seq), None)
            if kind is None:
                return None
            self._outbox_remove(meta, pages, [seq])
            _bump(meta.setdefault("refused", {}), str(kind))
            self._outbox_save(meta, pages)
            return str(kind)

    def outbox_count(self) -> int:
        """How many events are queued (one read of the outbox's meta value)."""
        meta = self._get(_K_OUTBOX)
        if not isinstance(meta, dict):
            return 0
        return sum(int(u.get("count", 0)) for u in (meta.get("types") or {}).values())

    def outbox_stats(self) -> dict[str, Any]:
        """``{count, bytes, oldest_time, dropped: {type: n}, coalesced: {type: n}}``."""
        with self._write("reading the outbox"), self._cache.transact():
            meta = self._outbox_meta()
            oldest_time = None
            live = [u["oldest"] for u in meta["types"].values()]
            if live:
                oldest = min(live)
                page = self._cache.get(_k_outbox_page(oldest // OUTBOX_PAGE)) or []
                texts = [entry[3] for entry in page if entry[0] == oldest]
                if texts:
                    oldest_time = json.loads(texts[0]).get("time")
        return {
            "count": sum(u["count"] for u in meta["types"].values()),
            "bytes": sum(u["bytes"] for u in meta["types"].values()),
            "oldest_time": oldest_time,
            "dropped": dict(meta["dropped"]),
            "coalesced": dict(meta["coalesced"]),
            "refused": dict(meta.get("refused", {})),
        }

    def _outbox_meta(self) -> dict[str, Any]:
        meta = self._cache.get(_K_OUTBOX)
        if meta is None:
            return {"next_seq": 0, "head_page": 0, "types": {}, "dropped": {}, "coalesced": {}}
        if not isinstance(meta, dict) or not {"next_seq", "head_page", "types"} <= meta.keys():
            raise StateCorruptError(f"state store {self.state_dir}: outbox record is unreadable")
        return meta

    def _outbox_remove(self, meta: dict[str, Any], pages: _Pages, seqs: list[int]) -> None:
        """Remove the queued events among ``seqs`` (sorted); keep per-type usage exact."""
        lost_oldest: dict[str, int] = {}
        for seq in seqs:
            if not 0 <= seq < meta["next_seq"]:
                continue
            entries = pages.get(seq // OUTBOX_PAGE)
            index = bisect.bisect_left(entries, seq, key=lambda e: int(e[0]))
            if index == len(entries) or entries[index][0] != seq:
                continue  # already removed
            _, event_type, size, _text = entries.pop(index)
            pages.touch(seq // OUTBOX_PAGE)
            usage = meta["types"][event_type]
            usage["count"] -= 1
            usage["bytes"] -= size
            if usage["oldest"] == seq:
                lost_oldest.setdefault(event_type, seq)
        for event_type, after in lost_oldest.items():
            usage = meta["types"][event_type]
            if usage["count"] == 0:
                del meta["types"][event_type]
                continue
            usage["oldest"] = self._outbox_find(meta, pages, event_type, after)

    def _outbox_find(self, meta: dict[str, Any], pages: _Pages, event_type: str, after: int) -> int:
        """The oldest queued event of ``event_type`` with a sequence above ``after``.

        A type's oldest sequence only moves forward, so over the outbox's life each
        page is scanned about once per type.
        """
        last_page = (meta["next_seq"] - 1) // OUTBOX_PAGE
        for page in range(after // OUTBOX_PAGE, last_page + 1):
            for seq, kind, _size, _text in pages.get(page):
                if seq > after and kind == event_type:
                    return int(seq)
        raise StateCorruptError(
            f"state store {self.state_dir}: outbox counts {event_type!r} events it does not hold"
        )

    def _outbox_save(self, meta: dict[str, Any], pages: _Pages) -> None:
        pages.flush()
        last_page = (meta["next_seq"] - 1) // OUTBOX_PAGE
        while meta["head_page"] < last_page and not pages.get(meta["head_page"]):
            meta["head_page"] += 1
        self._cache.set(_K_OUTBOX, meta)
        self._forget_delivered_reports(meta)

    def _forget_delivered_reports(self, meta: Mapping[str, Any]) -> None:
        """Forget carried reports none of whose events is queued any more (delivered online,
        by a newer report's receipt, or coalesced): nothing waits on their receipt. A report
        carries the oldest queued events, so it is done once the oldest event still queued is
        newer than its newest."""
        carried = self._cache.get(_K_CARRIED)
        if not carried:
            return
        live = [int(u["oldest"]) for u in meta["types"].values()]
        oldest = min(live) if live else int(meta["next_seq"])
        kept = [r for r in carried if r["runs"] and r["runs"][-1][1] >= oldest]
        if len(kept) != len(carried):
            self._cache.set(_K_CARRIED, kept)

    # -- the agent's key and carried status reports ----------------------------------------
    def agent_key(self) -> bytes:
        """The agent's Ed25519 private key (32 raw bytes), made and kept on first use.

        Made inside one transaction with the check that none exists, so two processes asking
        at once get the same key. Secret: callers must never log it.
        """
        with self._write("reading the agent key"), self._cache.transact():
            held = self._cache.get(_K_AGENT_KEY)
            if held is None:
                held = _b64(os.urandom(32))
                self._cache.set(_K_AGENT_KEY, held)
        try:
            raw = base64.b64decode(held, validate=True)
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise StateCorruptError(f"state store {self.state_dir}: the agent key is unreadable")
        return raw

    def record_report(
        self, report_id: str, *, created_at: dt.datetime, where: str, seqs: Sequence[int]
    ) -> None:
        """Remember a report written to ``where`` carrying the queued events ``seqs``: they
        stay queued until management acknowledges the report (``acknowledge_reports``) or
        they are delivered otherwise. A report that carried no queued event is not kept."""
        if not seqs:
            return
        entry = {
            "report_id": report_id,
            "created_at": format_time(created_at),
            "where": where,
            "events": len(set(seqs)),
            "runs": _runs(seqs),
        }
        with self._write("recording a status report"), self._cache.transact():
            carried = [r for r in self.carried_reports() if r["report_id"] != report_id]
            carried.append(entry)
            self._cache.set(_K_CARRIED, carried[-MAX_CARRIED_REPORTS:])
            self._forget_delivered_reports(self._outbox_meta())  # delivered while it was written

    def carried_reports(self) -> list[dict[str, Any]]:
        """Reports written and not yet acknowledged, oldest first."""
        value = self._get(_K_CARRIED)
        return [dict(r) for r in value] if isinstance(value, list) else []

    def acknowledge_reports(self, report_ids: Iterable[str]) -> tuple[list[str], int]:
        """Management has the reports ``report_ids``: remove the events they carried from the
        outbox (delivered) and forget the reports, in one transaction. Ids of reports not
        carried (already acknowledged, or from another store) are ignored. Returns the
        report ids acknowledged and how many queued events that delivered."""
        wanted = set(report_ids)
        with self._write("acknowledging status reports"), self._cache.transact():
            carried = self.carried_reports()
            done = [r for r in carried if r["report_id"] in wanted]
            if not done:
                return [], 0
            meta = self._outbox_meta()
            before = sum(u["count"] for u in meta["types"].values())
            pages = _Pages(self._cache)
            self._cache.set(_K_CARRIED, [r for r in carried if r["report_id"] not in wanted])
            seqs = {s for r in done for first, last in r["runs"] for s in range(first, last + 1)}
            self._outbox_remove(meta, pages, sorted(seqs))
            self._outbox_save(meta, pages)  # also forgets older reports this delivered
            delivered = before - sum(u["count"] for u in meta["types"].values())
        return [r["report_id"] for r in done], delivered

    # -- action journal ----------------------------------------------------------------
    def action_begin(self, action_id: str, action_type: str, *, now: dt.datetime) -> bool:
        """Record ``action_id`` as begun; False if it was ever begun before (do not run it).

        The check and the record are one transaction, so of two processes offered the same
        action exactly one gets True.
        """
        with self._write(f"beginning action {action_id[:64]!r}"), self._cache.transact():
            if self._cache.get(_k_action(action_id)) is not None:
                return False
            meta = self._actions_meta()
            seq = meta["next_seq"]
            meta["next_seq"] = seq + 1
            self._cache.set(
                _k_action(action_id),
                {
                    "id": action_id,
                    "type": action_type,
                    "seq": seq,
                    "begun_at": format_time(now),
                    "finished_at": None,
                    "outcome": None,
                    "detail": None,
                },
            )
            self._cache.set(_k_action_seq(seq), action_id)
            meta["open"].append(action_id)
            self._actions_prune(meta, now)
            self._cache.set(_K_ACTIONS, meta)
            return True

    def action_finish(
        self,
        action_id: str,
        outcome: str,
        detail: str | None = None,
        *,
        now: dt.datetime,
        events: Sequence[Event] = (),
    ) -> None:
        """Record how a begun action ended (``succeeded``, ``failed``, ``interrupted``...),
        with ``events`` (its result) queued in the same transaction."""
        with self._write(f"finishing action {action_id[:64]!r}"), self._cache.transact():
            entry = self._cache.get(_k_action(action_id))
            if not isinstance(entry, dict):
                raise StateError(f"action {action_id[:64]!r}: finished but never begun")
            entry.update(outcome=outcome, detail=detail, finished_at=format_time(now))
            self._cache.set(_k_action(action_id), entry)
            meta = self._actions_meta()
            if action_id in meta["open"]:
                meta["open"].remove(action_id)
                self._cache.set(_K_ACTIONS, meta)
            self._enqueue_locked(events, None)

    def action_journal(self, limit: int = 50) -> list[Mapping[str, Any]]:
        """The newest ``limit`` actions, newest first; an unfinished one has outcome None."""
        with self._write("reading the action journal"), self._cache.transact():
            meta = self._actions_meta()
            result: list[Mapping[str, Any]] = []
            seq = meta["next_seq"] - 1
            while seq >= meta["oldest_seq"] and len(result) < limit:
                action_id = self._cache.get(_k_action_seq(seq))
                entry = self._cache.get(_k_action(action_id)) if action_id else None
                if isinstance(entry, dict):
                    result.append(entry)
                seq -= 1
            return result

    def interrupted_actions(self) -> list[Mapping[str, Any]]:
        """Actions begun but never finished, oldest first.

        Call on start, before running any action: each one was cut short by the agent's
        death. Never run them again; record ``action_finish(id, INTERRUPTED, ...)``.
        """
        meta = self._get(_K_ACTIONS) or {"open": []}
        entries = [self._get(_k_action(action_id)) for action_id in meta["open"]]
        return [e for e in entries if isinstance(e, dict) and e.get("outcome") is None]

    def _actions_meta(self) -> dict[str, Any]:
        meta = self._cache.get(_K_ACTIONS)
        if meta is None:
            return {"next_seq": 0, "oldest_seq": 0, "open": []}
        if not isinstance(meta, dict):
            raise StateCorruptError(f"state store {self.state_dir}: action journal is unreadable")
        return meta

    def _actions_prune(self, meta: dict[str, Any], now: dt.datetime) -> None:
        """Forget entries beyond the newest ACTION_JOURNAL_KEEP that are older than 90 days."""
        horizon = now - dt.timedelta(days=ACTION_JOURNAL_KEEP_DAYS)
        while meta["next_seq"] - meta["oldest_seq"] > ACTION_JOURNAL_KEEP:
            seq = meta["oldest_seq"]
            action_id = self._cache.get(_k_action_seq(seq))
            entry = self._cache.get(_k_action(action_id)) if action_id else None
            if isinstance(entry, dict):
                if parse_time(entry["begun_at"]) > horizon or entry["outcome"] is None:
                    return  # still within 90 days (or never finished): keep it
                self._cache.delete(_k_action(action_id))
            self._cache.delete(_k_action_seq(seq))
            meta["oldest_seq"] = seq + 1

    def settings(self) -> Mapping[str, Any]:
        """The diskcache settings in force, as stored (for checks and diagnostics)."""
        return {key: getattr(self._cache, key) for key in STORE_SETTINGS}

    # -- status snapshot -----------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """Everything ``status`` shows, as plain JSON (no manifests, no key material)."""
        policy = self._get(_K_SUMMARY)
        previous = self._get(_K_SUMMARY_PREVIOUS)
        trust_raw = self._get(_K_TRUST)
        trust = _trust_from_json(trust_raw, self.state_dir) if trust_raw else None
        return {
            "schema_version": SCHEMA_VERSION,
            "policy": policy,
            "previous_policy": previous,
            "trust": _trust_summary(trust) if trust else None,
            "imports": self.imports()[-20:],
            "import_counts": dict(self._get(_K_IMPORT_COUNTS) or {}),
            "pending_policy": self._get(_K_SUMMARY_PENDING),
            "hold": self.hold(),
            "last_cycle": self.last_cycle(),
            "outbox": self.outbox_stats(),
            "policy_confirmed_at": self._get(_K_CONFIRMED),
            "sync": self._sync_view(),
            "reports": [
                {k: r[k] for k in ("report_id", "created_at", "where", "events")}
                for r in self.carried_reports()
            ],
        }

    def _sync_view(self) -> dict[str, Any] | None:
        """The sync state and the credential's public part; never the secret."""
        state = self.sync_state()
        held = self.sync_credential()
        if held is None and not state:
            return None
        public = {k: held.get(k) for k in ("server", "credential_id", "issued_at")} if held else {}
        state.pop("etag", None)
        return {**state, **public}

    def write_snapshot(self) -> None:
        """Refresh the world-readable status snapshot; failures are logged, never fatal."""
        if self._snapshot_path is None:
            return
        try:
            data = json.dumps(self.view(), sort_keys=True, indent=1).encode("utf-8")
            atomic_write(self._snapshot_path, data, mode=0o644)
        except (OSError, StateError) as exc:
            log.warning("status snapshot %s not written: %s", self._snapshot_path, exc)

    # -- internals ---------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        try:
            return self._cache.get(key)
        except sqlite3.DatabaseError as exc:
            raise _classify(exc, f"state store {self.state_dir}: reading {key!r}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateCorruptError(
                f"state store {self.state_dir}: value {key!r} is unreadable: {exc}"
            ) from None

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise _classify(exc, f"state store {self.state_dir}: {what}") from None
        except OSError as exc:
            raise StateWriteError(
                f"state store {self.state_dir}: {what}: {exc.strerror or exc}"
            ) from None

    def _append_import(self, record: ImportRecord) -> None:
        history = list(self._cache.get(_K_IMPORTS) or [])
        history.append(record.to_json())
        self._cache.set(_K_IMPORTS, history[-MAX_IMPORTS:])
        counts = dict(self._cache.get(_K_IMPORT_COUNTS) or {})
        counts[record.result] = int(counts.get(record.result, 0)) + 1
        self._cache.set(_K_IMPORT_COUNTS, counts)

    def _mark_seen(self, file_sha256: str, record: ImportRecord) -> None:
        seen = dict(self._cache.get(_K_SEEN) or {})
        seen.pop(file_sha256, None)
        seen[file_sha256] = {
            "at": format_time(record.at),
            "result": record.result,
            "code": record.code,
            "context": record.context,
        }
        while len(seen) > MAX_SEEN_FILES:
            seen.pop(next(iter(seen)))
        self._cache.set(_K_SEEN, seen)

    def _place_artifacts(self, bundle: VerifiedBundle, staging: Staging) -> None:
        try:
            for artifact in bundle.artifacts:
                final = self._artifacts / artifact.sha256
                if final.exists():
                    continue
                os.replace(staging.files[artifact.path], final)
            fsync_dir(self._artifacts)
        except OSError as exc:
            raise StateWriteError(
                f"placing artifacts in {self._artifacts}: {exc.strerror or exc}"
            ) from None

    def _collect_artifacts(self) -> None:
        keep: set[str] = set()
        for summary in (
            self._get(_K_SUMMARY),
            self._get(_K_SUMMARY_PREVIOUS),
            self._get(_K_SUMMARY_PENDING),
        ):
            if summary:
                keep.update(a["sha256"] for a in summary.get("artifacts", []))
        for blob in self._artifacts.iterdir():
            if blob.name not in keep:
                with contextlib.suppress(OSError):
                    blob.unlink()

    @contextlib.contextmanager
    def sole(self, role: str) -> Iterator[None]:
        """Hold ``store/<role>.lock`` exclusively for the block, or raise StateError at once
        when another process holds it (one sync engine per store: two would both run an
        action they each saw begun by the other as interrupted). Released by the kernel when
        the process dies, so a kill -9 never leaves it stale."""
        path = self.state_dir / "store" / f"{role}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateWriteError(
                f"state store {self.state_dir}: {role} lock: {exc.strerror}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"state store {self.state_dir}: another {role} process is running"
                ) from None
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[None]:
        try:
            fd = os.open(self.state_dir / "store" / "commit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateWriteError(
                f"state store {self.state_dir}: commit lock: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_abandoned_staging(self) -> None:
        """Remove staging folders of imports whose process is gone (killed mid-import)."""
        for folder in (self.state_dir / "staging").glob("import-*"):
            pid = folder.name.split("-")[1]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------


class _Pages:
    """Outbox pages read and changed within one transaction; ``flush`` writes them."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._pages: dict[int, list[list[Any]]] = {}
        self._dirty: set[int] = set()

    def get(self, page: int) -> list[list[Any]]:
        if page not in self._pages:
            value = self._cache.get(_k_outbox_page(page))
            self._pages[page] = list(value) if isinstance(value, list) else []
        return self._pages[page]

    def touch(self, page: int) -> None:
        self._dirty.add(page)

    def flush(self) -> None:
        for page in sorted(self._dirty):
            entries = self._pages[page]
            if entries:
                self._cache.set(_k_outbox_page(page), entries)
            else:
                self._cache.delete(_k_outbox_page(page))
        self._dirty.clear()


def _usage(meta: Mapping[str, Any]) -> dict[str, TypeUsage]:
    return {
        t: TypeUsage(u["count"], u["bytes"], u["oldest"])
        for t, u in meta["types"].items()
        if u["count"] > 0
    }


def _runs(seqs: Iterable[int]) -> list[list[int]]:
    """Sequences as sorted runs of consecutive numbers, ``[[first, last], ...]``."""
    runs: list[list[int]] = []
    for seq in sorted({int(s) for s in seqs}):
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


@contextlib.contextmanager
def _staging(parent: Path) -> Iterator[Staging]:
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"import-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise StateWriteError(
            f"cannot create a staging folder in {parent}: {exc.strerror or exc}"
        ) from None
    try:
        yield Staging(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _classify(exc: sqlite3.DatabaseError, what: str) -> StateError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and (
        "full" in text or "locked" in text or "readonly" in text
    ):
        return StateWriteError(f"{what}: {text}")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StateCorruptError(
            f"{what}: {text}; move the store aside and provision the newest root.json to start "
            "again (rollback protection, revoked keys and trusted time restart from that root)"
        )
    return StateError(f"{what}: {text}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _root_entry(trusted: TrustedRoot, now: dt.datetime) -> dict[str, Any]:
    return {
        "version": trusted.root.version,
        "envelope": _b64(trusted.envelope),
        "sha256": hashlib.sha256(trusted.envelope).hexdigest(),
        "accepted_at": format_time(now),
    }


def _trust_to_json(state: TrustState) -> dict[str, Any]:
    return {
        "root_envelope": _b64(state.root.envelope),
        "revoked_keyids": sorted(state.revoked_keyids),
        "time_high_water": format_time(state.time_high_water) if state.time_high_water else None,
        "revision": state.revision,
        "digest": state.digest,
    }


def _trust_from_json(raw: Any, state_dir: Path) -> TrustState:
    try:
        envelope_bytes = base64.b64decode(raw["root_envelope"], validate=True)
        envelope = parse_envelope(envelope_bytes, what="stored root", max_bytes=ROOT_MAX_BYTES)
        root = parse_root(envelope.payload, max_bytes=ROOT_MAX_BYTES)
        high_water = raw["time_high_water"]
        return TrustState(
            root=TrustedRoot(root, envelope_bytes),
            revoked_keyids=frozenset(raw["revoked_keyids"]),
            time_high_water=parse_time(high_water) if high_water else None,
            revision=raw["revision"],
            digest=raw["digest"],
        )
    except (KeyError, TypeError, ValueError, BundleError) as exc:
        raise StateCorruptError(
            f"state store {state_dir}: trusted root record is unreadable: {exc}"
        ) from None


def _policy_to_json(bundle: VerifiedBundle, source: Source) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "bundle_id": meta.bundle_id,
        "revision": meta.revision,
        "digest": bundle.digest,
        "target": meta.target.to_json(),
        "issued_at": format_time(meta.issued_at),
        "expires_at": format_time(meta.expires_at),
        "settings": meta.settings.to_json(),
        "layers": [
            {
                "name": layer.name,
                "manifests": [
                    {"path": m.path, "sha256": m.sha256, "text": m.text, "objects": list(m.objects)}
                    for m in layer.manifests
                ],
            }
            for layer in bundle.layers
        ],
        "artifacts": [
            {"path": a.path, "kind": a.kind, "sha256": a.sha256, "length": a.length}
            for a in bundle.artifacts
        ],
        "metadata_envelope": _b64(bundle.metadata_envelope),
        "source": source.to_json(),
    }


def _policy_summary(policy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bundle_id": policy["bundle_id"],
        "revision": policy["revision"],
        "digest": policy["digest"],
        "target": policy["target"],
        "issued_at": policy["issued_at"],
        "expires_at": policy["expires_at"],
        "settings": policy["settings"],
        "layers": [
            {
                "name": layer["name"],
                "manifests": len(layer["manifests"]),
                "objects": sum(len(m["objects"]) for m in layer["manifests"]),
            }
            for layer in policy["layers"]
        ],
        "artifacts": [
            {"path": a["path"], "kind": a["kind"], "length": a["length"], "sha256": a["sha256"]}
            for a in policy["artifacts"]
        ],
        "source": policy["source"],
    }


def _trust_summary(trust: TrustState) -> dict[str, Any]:
    root = trust.root.root
    return {
        "root_version": root.version,
        "root_expires_at": format_time(root.expires_at),
        "root_keys": sorted(root.root_role.keyids),
        "root_threshold": root.root_role.threshold,
        "policy_keys": sorted(root.policy_role.keyids),
        "policy_threshold": root.policy_role.threshold,
        "revoked_keys": sorted(trust.revoked_keyids),
        "time_high_water": format_time(trust.time_high_water) if trust.time_high_water else None,
    }
