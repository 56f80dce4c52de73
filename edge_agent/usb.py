"""Status out by USB: write signed status reports, take management's receipts back.

An air-gapped site never reports home. ``export_status`` writes what management would have
heard online into one file a person carries out: every event still queued (oldest first,
at most MAX_CARRIED_EVENTS / MAX_CARRIED_BYTES), plus a ``health`` event made now (verdict,
revision in force, drift, hold, pending) and an ``import-history`` event (the newest import
attempts), signed with the agent's own key (``StateStore.agent_key``). The carried events
stay queued: ``StateStore.record_report`` remembers which ones went out in which report.

Management ingests the report (``mgmt-stub ingest``) and hands back a receipt signed by the
policy role's keys. ``accept_receipt`` checks it against the trust root in force, then
``StateStore.acknowledge_reports`` removes the events those reports carried, in one
transaction. Online sync acknowledges them the ordinary way (they are sent again and
deduplicated by id). Nothing is ever marked delivered on the strength of a file having been
written: a stick lost on the way loses nothing.

The report is written to a hidden temporary name, fsynced and renamed, so a stick pulled
mid-write never holds a torn report under the real name (the next export to that folder
removes the hidden leftover); a write that fails (read-only stick, full disk) leaves no file
and records nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.clock import Clock, format_time
from edge_agent.config import AgentConfig
from edge_agent.errors import StateError
from edge_agent.files import fsync_dir, process_alive
from edge_agent.findings import health_data
from edge_agent.importer import import_dropped_file
from edge_agent.report import (
    MAX_RECEIPT_BYTES,
    RECEIPT_SUFFIX,
    ReportError,
    public_key_raw,
    report_file_name,
    sign_report,
    verify_receipt,
)
from edge_agent.state import StateStore
from edge_agent.telemetry import stamp
from edge_agent.watch import DEFAULT_SUFFIXES

log = logging.getLogger(__name__)

MAX_CARRIED_EVENTS = 100_000
MAX_CARRIED_BYTES = 20 << 20  # a report is at most 32 MiB; base64 makes 20 MiB about 27
HISTORY_BYTES = 15_000  # an event's data is at most 16 KiB on the management side

DROP_SUFFIXES = (*DEFAULT_SUFFIXES, RECEIPT_SUFFIX)
"""What a drop folder offers ``DropHandler``: bundles and receipts."""

_RANDOM = random.SystemRandom()


class ExportError(Exception):
    """The report could not be written (the folder is missing, read-only or full)."""


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    report_id: str
    events: int  # queued events carried (the two made for the report not counted)
    size: int


@dataclass(frozen=True, slots=True)
class Acknowledged:
    report_ids: list[str]  # reports this store was waiting on, now acknowledged
    delivered: int  # queued events that removed


def agent_public_key(store: StateStore) -> bytes:
    """The agent's Ed25519 public key (raw); management checks reports with it."""
    return public_key_raw(Ed25519PrivateKey.from_private_bytes(store.agent_key()))


def export_status(store: StateStore, config: AgentConfig, folder: Path, clock: Clock) -> Exported:
    """Write a signed status report into ``folder``; ExportError if it cannot be written."""
    if not folder.is_dir():
        raise ExportError(f"export folder {folder} does not exist or is not a folder")
    key = Ed25519PrivateKey.from_private_bytes(store.agent_key())
    now = clock.now()
    report_id = f"{now:%Y%m%dT%H%M%SZ}-{_RANDOM.getrandbits(40):010x}"
    queued = store.outbox_batch(MAX_CARRIED_EVENTS, MAX_CARRIED_BYTES)
    view = store.view()
    events: list[dict[str, Any]] = [json.loads(text) for _seq, text in queued]
    events.append(stamp("health", health_data(view, now), clock).to_json())
    events.append(stamp("import-history", _history(store.imports()), clock).to_json())
    data = sign_report(
        key,
        cluster_id=config.cluster_id,
        report_id=report_id,
        created_at=format_time(now),
        events=events,
    )
    path = folder / report_file_name(config.cluster_id, report_id)
    _remove_torn(folder, config.cluster_id)
    try:
        _write_new(path, data)
    except OSError as exc:
        raise ExportError(f"status report not written to {folder}: {exc.strerror or exc}") from None
    store.record_report(
        report_id, created_at=now, where=str(path), seqs=[seq for seq, _text in queued]
    )
    store.write_snapshot()
    log.info(
        "status report %s written to %s: %d queued events carried, %d bytes",
        report_id,
        path,
        len(queued),
        len(data),
    )
    return Exported(path, report_id, len(queued), len(data))


def read_receipt(path: Path) -> bytes:
    """A receipt file's bytes, refused from its size alone when too large (OSError, ValueError)."""
    with path.open("rb") as handle:
        data = handle.read(MAX_RECEIPT_BYTES + 1)
    if len(data) > MAX_RECEIPT_BYTES:
        raise ValueError(f"receipt {path}: larger than {MAX_RECEIPT_BYTES} bytes")
    return data


def accept_receipt(store: StateStore, config: AgentConfig, data: bytes) -> Acknowledged:
    """Check a receipt against the trust root in force and acknowledge the reports it names
    (ReportError when it does not verify or is for another cluster: nothing changes)."""
    trust = store.trust()
    receipt = verify_receipt(
        data,
        cluster_id=config.cluster_id,
        keys=trust.root.root.keys,
        role=trust.root.root.policy_role,
        revoked=trust.revoked_keyids,
    )
    report_ids, delivered = store.acknowledge_reports(receipt.report_ids)
    if report_ids:
        store.write_snapshot()
        log.info(
            "receipt of %s: reports %s acknowledged, %d carried events delivered",
            receipt.issued_at,
            ", ".join(report_ids),
            delivered,
        )
    else:
        log.info("receipt of %s: no report waiting on it (already acknowledged)", receipt.issued_at)
    return Acknowledged(report_ids, delivered)


class DropHandler:
    """What a file in a drop folder is for (``DropWatcher``'s callback): a ``*.receipt`` is
    taken, anything else imported as a bundle. True when done with it, False to offer it
    again.

    One stick can carry a receipt together with the bundle whose root rotation brings the
    keys the receipt is signed with, and a scan offers them in name order. So a receipt
    whose signatures do not verify under the root in force is kept aside (its path, at most
    MAX_WAITING) and taken again once a bundle changed the trust root.
    """

    MAX_WAITING = 100

    def __init__(self, *, store: StateStore, config: AgentConfig, clock: Clock) -> None:
        self._store, self._config, self._clock = store, config, clock
        self._waiting: dict[Path, None] = {}  # receipts refused for their signatures

    def __call__(self, path: Path) -> bool:
        if path.name.casefold().endswith(RECEIPT_SUFFIX):
            return self._receipt(path)
        before = self._root_version() if self._waiting else None
        done = import_dropped_file(path, store=self._store, config=self._config, clock=self._clock)
        if before is not None and self._root_version() != before:
            for waiting in list(self._waiting):
                del self._waiting[waiting]
                self._receipt(waiting)
        return done

    def _receipt(self, path: Path) -> bool:
        try:
            accept_receipt(self._store, self._config, read_receipt(path))
        except OSError as exc:
            log.warning("receipt %s cannot be read: %s", path, exc.strerror or exc)
            return False
        except ValueError as exc:  # too large
            log.warning("%s", exc)
        except ReportError as exc:
            log.warning("receipt %s rejected: %s", path, exc)
            if exc.code is not None and len(self._waiting) < self.MAX_WAITING:
                self._waiting[path] = None  # maybe signed with keys a bundle will bring
        except StateError as exc:
            log.warning("receipt %s not taken: %s", path, exc)
            return not exc.transient
        return True

    def _root_version(self) -> int | None:
        try:
            return self._store.trust().root.root.version
        except StateError:
            return None


def export_on_arrival(
    folder: Path, *, store: StateStore, config: AgentConfig, clock: Clock
) -> Exported | None:
    """A stick arrived in a drop folder: leave a status report on it if it is writable."""
    if not os.access(folder, os.W_OK):
        log.info("drop folder %s is not writable: no status report left on it", folder)
        return None
    try:
        return export_status(store, config, folder, clock)
    except ExportError as exc:
        log.warning("%s", exc)
    except StateError as exc:
        log.warning("status report for %s not made: %s", folder, exc)
    return None


def _history(imports: list[Any]) -> dict[str, Any]:
    """The newest import attempts that fit in one event, newest last."""
    kept: list[dict[str, Any]] = []
    size = 0
    for record in reversed(imports):
        entry = {k: record.get(k) for k in ("at", "revision", "result", "code") if record.get(k)}
        message = record.get("message")
        if message:
            entry["message"] = str(message)[:200]
        size += len(json.dumps(entry)) + 1
        if size > HISTORY_BYTES:
            break
        kept.append(entry)
    return {"imports": kept[::-1], "total": len(imports)}


def _remove_torn(folder: Path, cluster_id: str) -> None:
    """Remove the temporary files of this cluster's reports whose writer died (a stick
    pulled, the power gone, before the rename); never a live writer's."""
    for leftover in folder.glob(f".{report_file_name(cluster_id, '*')}.*.tmp"):
        pid = leftover.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()
                log.info("torn status report %s removed", leftover)


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` durably: a hidden temporary name, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
