"""What the management stub does, independent of HTTP: the server's routes call these.

``ManagementService`` owns the data directory::

    DATA/stub.db                    SQLite (mgmt_stub.storage), WAL
    DATA/profiles/NAME/VERSION/     each profile version as a folder (profile.yaml, layers/)
    DATA/bundles/REVISION.bundle    every signed bundle ever built, by revision

and signs with the key directory given (``mgmt-stub keys init``). A cluster's desired state
is a bundle built once per change (a profile version reaching an assignment, a rollback, a
re-issue) and shared by every cluster of the assignment: the target in the bundle is the
assignment's selector. Revisions come from one server-wide sequence, so every bundle built
is newer than every bundle before it and a cluster's desired revision only ever increases.

Every failure a caller can cause is a ``Problem`` (an HTTP status, a short type, and a
one-line detail); anything else is a bug.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.bundle.model import is_valid_cluster_id, is_valid_label
from edge_agent.clock import Clock, SystemClock, format_time, parse_time
from edge_agent.files import fsync_dir
from edge_agent.report import (
    MAX_RECEIPT_IDS,
    ReportError,
    receipt_payload,
    report_cluster,
    verify_report,
)
from mgmt_stub import credentials as creds
from mgmt_stub.builder import ProfileError, build_bundle
from mgmt_stub.keys import KeyDirectory, sign_envelope
from mgmt_stub.rollout import (
    IMMEDIATE,
    AssignmentRef,
    Member,
    Selector,
    Strategy,
    choose_assignment,
    plan_rollout,
)
from mgmt_stub.storage import Row, Storage

log = logging.getLogger("mgmt_stub")

ROLES = ("viewer", "operator", "admin")
VERDICTS = ("healthy", "degraded", "failing", "not-initialised")
ACTION_TYPES = ("resync", "collect-diagnostics", "reconcile-now", "rotate-credential")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml")
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_REPORT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_REPORT_EVENTS = 200_000
EVENT_RETENTION_DAYS = 90  # also the window in which a re-sent event id is recognised
BUNDLE_DAYS = 30
RENEW_DAYS = 10  # re-sign a stable bundle when it has this long left
MAX_EVENT_DATA = 16 << 10


class Problem(Exception):
    """A request the stub refuses: HTTP status, a short type and a one-line detail."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind = status, kind
        self.detail = " ".join(detail.split())[:400]

    def to_json(self) -> dict[str, Any]:
        """The RFC 9457 problem-details document every error answer carries."""
        return problem_doc(self.status, self.kind, self.detail)


def problem_doc(status: int, kind: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"urn:edge-agent:problem:{kind}",
        "title": kind.replace("-", " "),
        "status": status,
        "detail": detail,
    }


@dataclass(frozen=True, slots=True)
class Desired:
    revision: int
    etag: str  # quoted, as in the ETag header
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str


@dataclass(slots=True)
class _Cred:
    cluster_id: str
    digest: str
    revoked: bool
    replaces: str | None


_last_text: tuple[dt.datetime, str] | None = None


def now_text(clock: Clock) -> str:
    """``format_time(clock.now())``, formatted once per second (it is on every request)."""
    global _last_text
    now = clock.now().replace(microsecond=0)
    if _last_text is None or _last_text[0] != now:
        _last_text = (now, format_time(now))
    return _last_text[1]


_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)


def _is_time(text: object) -> bool:
    """Whether ``text`` is an RFC 3339 UTC time as the wire uses it (as parse_time, faster)."""
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return False
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return True


class ManagementService:
    def __init__(
        self,
        data_dir: Path,
        keys_dir: Path,
        *,
        clock: Clock | None = None,
        notify: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.data = data_dir
        self.keys = KeyDirectory(keys_dir)
        self.keys.current_root()  # fail at start, not at the first build, if keys are missing
        self.clock = clock or SystemClock()
        self.notify = notify or (lambda ids: None)
        for sub in ("profiles", "bundles"):
            (data_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.db = Storage(data_dir / "stub.db")
        self._creds: dict[str, _Cred] = {}  # credential id -> cached row
        self._desired: dict[str, Desired | None] = {}
        self._action_seqs: dict[str, int] = {}  # newest action sequence per cluster (cache)
        self._seen: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._next_renewal: dt.datetime | None = None

    def close(self) -> None:
        self.flush_seen()
        self.db.close()

    # -- authentication ------------------------------------------------------------------
    def authenticate_operator(self, token: str | None, need: str) -> Operator:
        secret = creds.parse_secret(token or "", "eop")
        row = self.db.operator(secret.id) if secret else None
        if secret is None or row is None or not creds.matches(secret, row["secret_hash"]):
            raise Problem(401, "unauthenticated", "an operator credential is required")
        if row["revoked_at"]:
            raise Problem(401, "credential-revoked", "this operator credential was revoked")
        if ROLES.index(row["role"]) < ROLES.index(need):
            raise Problem(
                403, "forbidden", f"role {row['role']!r} may not do this; it needs {need!r}"
            )
        return Operator(row["name"], row["role"])

    def authenticate_agent(self, token: str | None) -> str:
        return self.authenticate_agent_credential(token)[0]

    def authenticate_agent_credential(self, token: str | None) -> tuple[str, str]:
        """(cluster id, credential id) of a valid agent credential; Problem(401) otherwise."""
        secret = creds.parse_secret(token or "", "eac")
        if secret is None:
            raise Problem(401, "unauthenticated", "an agent credential is required")
        cached = self._creds.get(secret.id)
        if cached is None:
            row = self.db.credential(secret.id)
            if row is None:
                raise Problem(401, "unauthenticated", "unknown agent credential")
            cached = _Cred(
                row["cluster_id"], row["secret_hash"], bool(row["revoked_at"]), row["replaces"]
            )
            self._creds[secret.id] = cached
        if not creds.matches(secret, cached.digest):
            raise Problem(401, "unauthenticated", "unknown agent credential")
        if cached.revoked:
            raise Problem(401, "credential-revoked", "this agent credential was revoked")
        if cached.replaces:  # first use of a rotated credential retires the one it replaces
            with self.db.transaction():
                self.db.revoke_credential(cached.replaces, now_text(self.clock))
            old = self._creds.get(cached.replaces)
            if old:
                old.revoked = True
            cached.replaces = None
        self._seen[cached.cluster_id] = now_text(self.clock)
        return cached.cluster_id, secret.id

    def _forget_credentials(self, cluster_id: str) -> None:
        """Drop a cluster's cached credentials; the next use re-reads them from the DB."""
        for cred_id in [k for k, v in self._creds.items() if v.cluster_id == cluster_id]:
            del self._creds[cred_id]

    def flush_seen(self) -> None:
        if self._seen:
            seen, self._seen = self._seen, {}
            self.db.touch_clusters(seen)

    # -- operators -----------------------------------------------------------------------
    def create_operator(self, actor: str, name: str, role: str) -> str:
        if not _NAME.fullmatch(name):
            raise Problem(422, "invalid", f"operator name {name[:64]!r} must be 1-63 of [a-z0-9-]")
        if role not in ROLES:
            raise Problem(422, "invalid", f"role must be one of {', '.join(ROLES)}")
        secret = creds.new_secret("eop")
        with self.db.transaction():
            if self.db.operator_by_name(name):
                raise Problem(409, "exists", f"operator {name!r} already exists")
            self.db.add_operator(secret.id, name, role, secret.digest, now_text(self.clock))
            self._audit(actor, "operator.create", name, {"role": role})
        return secret.text

    def revoke_operator(self, actor: str, name: str) -> None:
        with self.db.transaction():
            if not self.db.revoke_operator(name, now_text(self.clock)):
                raise Problem(404, "not-found", f"no active operator {name[:64]!r}")
            self._audit(actor, "operator.revoke", name, {})

    def operators(self) -> list[Row]:
        return self.db.operators()

    # -- bootstrap tokens and enrollment -----------------------------------------------
    def create_token(
        self,
        actor: str,
        *,
        ttl_s: int,
        uses: int,
        cluster_id: str | None,
        labels: Mapping[str, str],
        description: str,
    ) -> tuple[str, Row]:
        if cluster_id is not None:
            _check_cluster_id(cluster_id)
        _check_labels(labels)
        secret = creds.new_secret("ebt")
        now = self.clock.now()
        row = {
            "id": secret.id,
            "secret_hash": secret.digest,
            "created_at": format_time(now),
            "created_by": actor,
            "expires_at": format_time(now + dt.timedelta(seconds=ttl_s)),
            "max_uses": uses,
            "cluster_id": cluster_id,
            "labels": dict(labels),
            "description": description,
        }
        with self.db.transaction():
            self.db.add_token(row)
            self._audit(actor, "token.create", secret.id, {"uses": uses, "ttl_s": ttl_s})
        public = {k: v for k, v in row.items() if k != "secret_hash"}
        return secret.text, {**public, "uses": 0, "revoked_at": None}

    def tokens(self) -> list[Row]:
        return self.db.tokens()

    def revoke_token(self, actor: str, token_id: str) -> None:
        with self.db.transaction():
            if not self.db.revoke_token(token_id, now_text(self.clock)):
                raise Problem(404, "not-found", f"no active bootstrap token {token_id[:32]!r}")
            self._audit(actor, "token.revoke", token_id, {})

    def enroll(
        self, token: str | None, cluster_id: str, labels: Mapping[str, str], agent_key: str | None
    ) -> tuple[str, str]:
        """Spend one use of a bootstrap token; return (credential id, credential)."""
        secret = creds.parse_secret(token or "", "ebt")
        row = self.db.token(secret.id) if secret else None
        if secret is None or row is None or not creds.matches(secret, row["secret_hash"]):
            raise Problem(401, "unauthenticated", "a valid bootstrap token is required")
        if row["revoked_at"]:
            raise Problem(401, "token-revoked", "this bootstrap token was revoked")
        if parse_time(row["expires_at"]) <= self.clock.now():
            raise Problem(
                401, "token-expired", f"this bootstrap token expired at {row['expires_at']}"
            )
        if row["uses"] >= row["max_uses"]:
            raise Problem(401, "token-used-up", "this bootstrap token has no uses left")
        _check_cluster_id(cluster_id)
        _check_labels(labels)
        if row["cluster_id"] is not None and row["cluster_id"] != cluster_id:
            raise Problem(403, "forbidden", "this bootstrap token is for another cluster id")
        key = _agent_key(agent_key) if agent_key else None
        merged = {**labels, **row["labels"]}  # the token's labels win over the agent's claim
        now = now_text(self.clock)
        secret_out = creds.new_secret("eac")
        with self.db.transaction():
            existing = self.db.cluster(cluster_id)
            if existing is not None and row["cluster_id"] != cluster_id:
                raise Problem(
                    409,
                    "already-enrolled" if existing["enrolled_at"] else "registered",
                    f"cluster {cluster_id!r} is already "
                    f"{'enrolled' if existing['enrolled_at'] else 'registered'}; enrolling it "
                    f"needs a token created for that cluster id",
                )
            if existing is None:
                self.db.add_cluster(cluster_id, merged, now)
            else:
                self.db.revoke_credentials(cluster_id, now)
            fields: dict[str, Any] = {"labels": merged, "enrolled_at": now}
            if key is not None:
                fields["agent_key"] = key
            self.db.update_cluster(cluster_id, **fields)
            self.db.add_credential(secret_out.id, cluster_id, secret_out.digest, now, None)
            self.db.use_token(row["id"])
            self._audit(f"token:{row['id']}", "cluster.enroll", cluster_id, {"labels": merged})
            self._place(cluster_id)
        self._forget_credentials(cluster_id)
        self._seen[cluster_id] = now  # enrolling is contact
        return secret_out.id, secret_out.text

    def rotate_credential(self, cluster_id: str, caller: str) -> tuple[str, str]:
        """A new credential replacing ``caller`` (the one this request authenticated with).

        ``caller`` keeps working until the new one is first used. Any other live credential
        of the cluster (an earlier rotation whose answer was lost) is revoked, never
        ``caller``: an agent that retries after a lost answer is never locked out.
        """
        secret = creds.new_secret("eac")
        now = now_text(self.clock)
        with self.db.transaction():
            self.db.revoke_credentials(cluster_id, now, except_id=caller)
            self.db.add_credential(secret.id, cluster_id, secret.digest, now, caller)
            self._audit(f"cluster:{cluster_id}", "credential.rotate", cluster_id, {})
        self._forget_credentials(cluster_id)
        return secret.id, secret.text

    # -- clusters ------------------------------------------------------------------------
    def register_cluster(
        self, actor: str, cluster_id: str, labels: Mapping[str, str], agent_key: str | None
    ) -> Row:
        """Make a cluster known without enrollment (an air-gapped site served by USB)."""
        _check_cluster_id(cluster_id)
        _check_labels(labels)
        key = _agent_key(agent_key) if agent_key else None
        with self.db.transaction():
            if self.db.cluster(cluster_id) is not None:
                raise Problem(
                    409,
                    "exists",
                    f"cluster {cluster_id!r} already exists"
                    + ("; to give it a new agent key: mgmt-stub cluster agent-key" if key else ""),
                )
            self.db.add_cluster(cluster_id, labels, now_text(self.clock))
            if key:
                self.db.update_cluster(cluster_id, agent_key=key)
            self._audit(actor, "cluster.register", cluster_id, {"labels": dict(labels)})
            self._place(cluster_id)
        return self.cluster(cluster_id)

    def set_labels(self, actor: str, cluster_id: str, labels: Mapping[str, str]) -> Row:
        _check_labels(labels)
        with self.db.transaction():
            self.cluster(cluster_id)
            self.db.update_cluster(cluster_id, labels=dict(labels))
            self._audit(actor, "cluster.labels", cluster_id, {"labels": dict(labels)})
            self._place(cluster_id)
        return self.cluster(cluster_id)

    def set_agent_key(self, actor: str, cluster_id: str, agent_key: str) -> Row:
        """Replace the key a cluster's status reports are checked with (a site whose state
        store was reset made a new one; a cluster registered without one)."""
        key = _agent_key(agent_key)
        with self.db.transaction():
            row = self.cluster(cluster_id)
            self.db.update_cluster(cluster_id, agent_key=key)
            self._audit(
                actor,
                "cluster.agent-key",
                cluster_id,
                {"replaced": bool(row["agent_key"]), "key_sha256": _short_hash(key)},
            )
        return self.cluster(cluster_id)

    def revoke_cluster(self, actor: str, cluster_id: str) -> int:
        with self.db.transaction():
            self.cluster(cluster_id)
            count = self.db.revoke_credentials(cluster_id, now_text(self.clock))
            self._audit(actor, "cluster.revoke", cluster_id, {"credentials": count})
        self._forget_credentials(cluster_id)
        return count

    def cluster(self, cluster_id: str) -> Row:
        row = self.db.cluster(cluster_id)
        if row is None:
            raise Problem(404, "not-found", f"no cluster {cluster_id[:64]!r}")
        if cluster_id in self._seen:
            row["last_seen"] = self._seen[cluster_id]
        return row

    def clusters(self, selector: Selector | None = None) -> list[Row]:
        rows = self.db.clusters()
        for row in rows:
            row["last_seen"] = self._seen.get(row["id"], row["last_seen"])
        if selector is None:
            return rows
        return [r for r in rows if selector.matches(r["id"], r["labels"])]

    def events(self, cluster_id: str, limit: int) -> list[Row]:
        self.cluster(cluster_id)
        return self.db.events(cluster_id, limit)

    # -- agent API -----------------------------------------------------------------------
    def desired(self, cluster_id: str) -> Desired | None:
        if cluster_id in self._desired:
            return self._desired[cluster_id]
        row = self.db.cluster(cluster_id)
        value = None
        if row is not None and row["desired"] is not None:
            bundle = self.db.bundle(row["desired"])
            assert bundle is not None
            value = Desired(
                bundle["revision"],
                f'"{bundle["sha256"]}"',
                self.data / "bundles" / f"{bundle['revision']}.bundle",
                bundle["size"],
            )
        self._desired[cluster_id] = value
        return value

    def wait_state(self, cluster_id: str) -> tuple[str | None, int]:
        """What a waiting agent compares: its desired ETag and newest action sequence."""
        desired = self.desired(cluster_id)
        return (desired.etag if desired else None), self.action_seq(cluster_id)

    def action_seq(self, cluster_id: str) -> int:
        """The cluster's newest action sequence (sent with every desired-state answer, so an
        idle agent asks for actions only when there are new ones)."""
        seq = self._action_seqs.get(cluster_id)
        if seq is None:
            seq = self._action_seqs[cluster_id] = self.db.action_seq(cluster_id)
        return seq

    def pending_actions(self, cluster_id: str) -> list[Row]:
        return self.db.pending_actions(cluster_id)

    def post_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], via: str = "online"
    ) -> tuple[int, int]:
        """Record one batch idempotently by event id; return (accepted, duplicates)."""
        result = self.record_event_batches([(cluster_id, self.check_events(events), via)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def check_events(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The batch's events, checked; Problem(422) for the first bad one."""
        checked = [_check_event(e) for e in events]
        ids = [e["id"] for e in checked]
        if len(set(ids)) != len(ids):
            raise Problem(422, "invalid", "an event id appears twice in one batch")
        return checked

    def record_event_batches(
        self, batches: Sequence[tuple[str, Sequence[Mapping[str, Any]], str]]
    ) -> list[tuple[int, int] | Exception]:
        """Record checked batches (cluster, events, via) in one transaction: one fsync for
        all of them (the server's group commit). Each batch is its own savepoint, so one
        failing batch fails alone; a failed commit fails them all."""
        now = now_text(self.clock)
        results: list[tuple[int, int] | Exception] = []
        try:
            with self.db.transaction():
                for cluster_id, events, via in batches:
                    try:
                        with self.db.savepoint():
                            fresh = self.db.add_events(cluster_id, events, now, via)
                            for event, new in zip(events, fresh, strict=True):
                                if new:
                                    self._apply_event(cluster_id, event)
                    except Problem as exc:
                        results.append(exc)
                        continue
                    except Exception as exc:  # a bug: it fails this batch, never the group
                        log.exception("recording events of cluster %s failed", cluster_id)
                        results.append(
                            Problem(500, "internal-error", f"events not recorded: {exc}")
                        )
                        continue
                    accepted = sum(fresh)
                    results.append((accepted, len(fresh) - accepted))
        except sqlite3.Error as exc:
            raise Problem(
                503, "storage-unavailable", f"events not recorded, try again later: {exc}"
            ) from None
        return results

    def _apply_event(self, cluster_id: str, event: Mapping[str, Any]) -> None:
        data = event["data"]
        if event["type"] == "health":
            row = self.db.report_state(cluster_id)
            # Ordered by the agent's time, but never later than ours: one event from a clock
            # set to 2099 must not make every later, correct report look older.
            at = min(event["time"], now_text(self.clock))
            if row["last_report_at"] and at < row["last_report_at"]:
                return  # an older report delivered late never overwrites a newer one
            verdict = data.get("verdict")
            revision = data.get("revision")
            drift = data.get("drift")
            fields: dict[str, Any] = {"last_report_at": at}
            if verdict in VERDICTS:
                fields["health"] = verdict
            if isinstance(revision, int) and not isinstance(revision, bool):
                fields["reported"] = revision
            if isinstance(drift, int) and not isinstance(drift, bool) and drift >= 0:
                fields["drift"] = drift
            summary = data.get("summary")  # replaced, not kept: an old one would mislead
            fields["summary"] = summary[:300] if isinstance(summary, str) else None
            self.db.update_cluster(cluster_id, **fields)
            if row["assignment"] and self.db.active_rollout(row["assignment"]):
                self._dirty.add(row["assignment"])
        elif event["type"] == "action-result":
            action_id = data.get("action_id")
            outcome = data.get("outcome")
            if isinstance(action_id, str) and outcome in ("succeeded", "failed"):
                self.db.complete_action(
                    cluster_id,
                    action_id,
                    "done" if outcome == "succeeded" else "failed",
                    {"outcome": outcome, "detail": str(data.get("detail", ""))[:1000]},
                    event["time"],
                )

    def ingest(self, actor: str, data: bytes) -> dict[str, Any]:
        """Record a signed status report carried by USB as if its events came online."""
        try:
            claimed = report_cluster(data)
        except ReportError as exc:
            raise Problem(422, "report-invalid", str(exc)) from None
        row = self.db.cluster(claimed)
        if row is None:
            raise Problem(404, "not-found", f"report is from unknown cluster {claimed[:64]!r}")
        if not row["agent_key"]:
            raise Problem(
                409,
                "no-agent-key",
                f"cluster {claimed!r} has no agent key to check the report with "
                f"(give it one: mgmt-stub cluster agent-key {claimed} KEY)",
            )
        try:
            report = verify_report(data, agent_key=base64.b64decode(row["agent_key"]))
        except ReportError as exc:
            raise Problem(422, "report-invalid", str(exc)) from None
        try:
            parse_time(report.created_at)
        except ValueError as exc:
            raise Problem(422, "report-invalid", f"status report: {exc}") from None
        if not _REPORT_ID.fullmatch(report.report_id):
            raise Problem(
                422, "report-invalid", "status report: report_id must be 1-64 of [A-Za-z0-9._-]"
            )
        if len(report.events) > MAX_REPORT_EVENTS:
            raise Problem(
                422, "report-invalid", f"status report: more than {MAX_REPORT_EVENTS} events"
            )
        for index, event in enumerate(report.events):
            if not isinstance(event, dict) or set(event) != {"id", "type", "time", "data"}:
                raise Problem(
                    422,
                    "report-invalid",
                    f"status report: event {index} must be an object with exactly id, type, "
                    f"time and data",
                )
        with self.db.transaction():
            accepted, duplicates = self.post_events(report.cluster_id, report.events, via="usb")
            new = self.db.add_report(
                report.cluster_id,
                report.report_id,
                report.created_at,
                now_text(self.clock),
                len(report.events),
            )
            # The site's clock, but never later than ours (as for event times): one report
            # from a clock set to 2099 must not pin the report age in the future.
            created = min(report.created_at, now_text(self.clock))
            if not row["last_ingest_at"] or created > row["last_ingest_at"]:
                self.db.update_cluster(report.cluster_id, last_ingest_at=created)
            self._audit(
                actor,
                "report.ingest",
                report.cluster_id,
                {"report_id": report.report_id, "accepted": accepted, "duplicates": duplicates},
            )
        receipt = self.receipt(report.cluster_id)
        assert receipt is not None  # this report was just recorded
        return {
            "cluster_id": report.cluster_id,
            "report_id": report.report_id,
            "new_report": new,
            "accepted": accepted,
            "duplicates": duplicates,
            "receipt": base64.b64encode(receipt).decode("ascii"),
        }

    def receipt(self, cluster_id: str) -> bytes | None:
        """A receipt naming the cluster's newest ingested reports, signed by the policy
        role's keys (the agent checks it with the root it trusts); None before any report."""
        ids = self.db.report_ids(cluster_id, MAX_RECEIPT_IDS)
        if not ids:
            return None
        payload_type, payload = receipt_payload(cluster_id, ids, now_text(self.clock))
        return sign_envelope(payload_type, payload, self.keys.policy_signers())

    # -- profiles ------------------------------------------------------------------------
    def put_profile(self, actor: str, name: str, doc: Mapping[str, Any]) -> tuple[Row, bool]:
        """Store a new version if the content changed; roll it out to its assignments."""
        if not _PROFILE_NAME.fullmatch(name):
            raise Problem(
                422, "invalid", f"profile name {name[:64]!r} must be 1-64 of [A-Za-z0-9._-]"
            )
        content = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(content).hexdigest()
        latest = self.db.latest_profile(name)
        if latest is not None and latest["content_sha256"] == digest:
            return latest, False
        version = (latest["version"] if latest else 0) + 1
        folder = self.data / "profiles" / name / str(version)
        staging = folder.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
        try:
            _write_profile(staging, name, doc)
            self._check_profile(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)  # a leftover of a crash before the commit
        _fsync_tree(staging)
        os.replace(staging, folder)
        fsync_dir(folder.parent)
        row = {
            "name": name,
            "version": version,
            "content_sha256": digest,
            "description": str(doc.get("description", ""))[:500],
            "created_at": now_text(self.clock),
            "created_by": actor,
        }
        with self.db.transaction():
            self.db.add_profile_version(row)
            self._audit(actor, "profile.put", name, {"version": version, "sha256": digest})
            for assignment in self.db.assignments():
                if assignment["profile"] == name:
                    self._new_target(assignment, version, reason=f"profile {name} v{version}")
        return row, True

    def _check_profile(self, folder: Path) -> None:
        from mgmt_stub.builder import load_profile

        try:
            load_profile(folder)
        except ProfileError as exc:
            raise Problem(
                422, "profile-invalid", str(exc).replace(str(folder), "profile")
            ) from None

    def profiles(self) -> list[Row]:
        return self.db.profiles()

    def profile(self, name: str) -> dict[str, Any]:
        versions = self.db.profile_versions(name)
        if not versions:
            raise Problem(404, "not-found", f"no profile {name[:64]!r}")
        return {"name": name, "versions": versions}

    # -- assignments and rollouts --------------------------------------------------------
    def put_assignment(
        self,
        actor: str,
        name: str,
        *,
        profile: str,
        selector: Selector,
        priority: int,
        strategy: Strategy,
    ) -> Row:
        if not _NAME.fullmatch(name):
            raise Problem(
                422, "invalid", f"assignment name {name[:64]!r} must be 1-63 of [a-z0-9-]"
            )
        if selector.cluster_id is not None:
            _check_cluster_id(selector.cluster_id)
        elif not selector.labels:
            raise Problem(422, "invalid", "selector needs a cluster_id or at least one label")
        else:
            _check_labels(selector.labels)
        latest = self.db.latest_profile(profile)
        if latest is None:
            raise Problem(422, "invalid", f"no profile {profile[:64]!r}")
        now = now_text(self.clock)
        with self.db.transaction():
            before = self.db.assignment(name)
            self.db.put_assignment(
                {
                    "name": name,
                    "profile": profile,
                    "selector": selector.to_json(),
                    "priority": priority,
                    "strategy": _strategy_json(strategy),
                    "stable": None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            self._audit(
                actor,
                "assignment.put",
                name,
                {"profile": profile, "selector": selector.to_json(), "priority": priority},
            )
            after = self.db.assignment(name)
            assert after is not None
            active = self.db.active_rollout(name)
            if active and before and before["strategy"] != after["strategy"]:
                # Loosening (or tightening) the budget applies to the rollout under way.
                self.db.update_rollout(active["id"], strategy=after["strategy"])
            if before is None or before["selector"] != selector.to_json():
                # The bundle's target is the selector: a bundle for the old selector is no use
                # to the new members, so a new selector goes out at once, not staged.
                self._new_target(
                    after, latest["version"], reason=f"assignment {name}", immediate=True
                )
            elif before["profile"] != profile:
                self._new_target(after, latest["version"], reason=f"assignment {name}")
            self._place_all()
        return self.assignment(name)

    def delete_assignment(self, actor: str, name: str) -> None:
        with self.db.transaction():
            if not self.db.delete_assignment(name):
                raise Problem(404, "not-found", f"no assignment {name[:64]!r}")
            rollout = self.db.active_rollout(name)
            if rollout:
                self.db.update_rollout(
                    rollout["id"], state="cancelled", updated_at=now_text(self.clock)
                )
            self._audit(actor, "assignment.delete", name, {})
            self._place_all()

    def assignment(self, name: str) -> Row:
        row = self.db.assignment(name)
        if row is None:
            raise Problem(404, "not-found", f"no assignment {name[:64]!r}")
        row["rollout"] = self.db.active_rollout(name)
        row["members"] = self.db.member_count(name)
        return row

    def assignments(self) -> list[Row]:
        return [self.assignment(a["name"]) for a in self.db.assignments()]

    def rollouts(self) -> list[Row]:
        return self.db.rollouts()

    def rollout_control(self, actor: str, rollout_id: int, verb: str) -> Row:
        rollout = self.db.rollout(rollout_id)
        if rollout is None:
            raise Problem(404, "not-found", f"no rollout {rollout_id}")
        state = rollout["state"]
        now = now_text(self.clock)
        with self.db.transaction():
            if verb == "pause":
                if state != "active":
                    raise Problem(409, "conflict", f"rollout {rollout_id} is {state}, not active")
                self.db.update_rollout(rollout_id, state="paused", updated_at=now)
            elif verb == "resume":
                if state != "paused":
                    raise Problem(409, "conflict", f"rollout {rollout_id} is {state}, not paused")
                self.db.update_rollout(rollout_id, state="active", updated_at=now)
            elif verb == "rollback":
                if state not in ("active", "paused"):
                    raise Problem(
                        409,
                        "conflict",
                        f"rollout {rollout_id} is {state}; only an active or paused rollout rolls back",
                    )
                assignment = self.db.assignment(rollout["assignment"])
                assert assignment is not None
                previous = self.db.bundle(rollout["from_revision"])
                assert previous is not None
                self.db.update_rollout(rollout_id, state="rolled-back", updated_at=now)
                # Agents refuse lower revisions, so the old content goes out as a new one.
                revision = self._build(
                    assignment,
                    previous["profile"],
                    previous["profile_version"],
                    reason=f"rollback of rollout {rollout_id}",
                )
                self.db.set_stable(assignment["name"], revision)
            else:
                raise Problem(404, "not-found", f"no rollout verb {verb[:32]!r}")
            self._audit(
                actor, f"rollout.{verb}", str(rollout_id), {"assignment": rollout["assignment"]}
            )
            self._reconcile(rollout["assignment"])
        row = self.db.rollout(rollout_id)
        assert row is not None
        return row

    def _new_target(
        self, assignment: Row, profile_version: int, *, reason: str, immediate: bool = False
    ) -> None:
        """A new profile version for an assignment: build it, then roll it out."""
        name = assignment["name"]
        revision = self._build(assignment, assignment["profile"], profile_version, reason=reason)
        active = self.db.active_rollout(name)
        now = now_text(self.clock)
        if active:
            self.db.update_rollout(active["id"], state="superseded", updated_at=now)
        strategy = _strategy_from(assignment["strategy"])
        if assignment["stable"] is None or strategy.immediate or immediate:
            self.db.set_stable(name, revision)
        else:
            self.db.add_rollout(
                {
                    "assignment": name,
                    "from_revision": assignment["stable"],
                    "to_revision": revision,
                    "state": "active",
                    "phase": "canary",
                    "strategy": assignment["strategy"],
                    "created_at": now,
                    "updated_at": now,
                }
            )
        self._reconcile(name)

    def _build(self, assignment: Row, profile: str, profile_version: int, *, reason: str) -> int:
        """Build and record one bundle of ``profile`` at ``profile_version`` for an assignment."""
        revision = self.db.next_revision()
        folder = self.data / "profiles" / profile / str(profile_version)
        output = self.data / "bundles" / f"{revision}.bundle"
        now = self.clock.now()
        target = Selector.from_json(assignment["selector"]).to_json()
        try:
            bundle_id = build_bundle(
                folder,
                keys=self.keys,
                target=target,
                revision=revision,
                output=output,
                now=now,
                expires_days=BUNDLE_DAYS,
            )
        except ProfileError as exc:
            detail = str(exc).replace(str(folder), f"profile {profile} v{profile_version}")
            raise Problem(422, "profile-invalid", detail) from None
        fsync_dir(output.parent)  # the row below must never name a file a power cut lost
        data = output.read_bytes()
        self.db.add_bundle(
            {
                "revision": revision,
                "bundle_id": bundle_id,
                "assignment": assignment["name"],
                "profile": profile,
                "profile_version": profile_version,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "target": target,
                "created_at": format_time(now),
                "expires_at": format_time(now + dt.timedelta(days=BUNDLE_DAYS)),
                "reason": reason,
            }
        )
        return revision

    def _place(self, cluster_id: str) -> None:
        """Put one cluster under the assignment that governs it (inside a transaction)."""
        row = self.db.cluster(cluster_id)
        assert row is not None
        refs = [_ref(a) for a in self.db.assignments()]
        name = choose_assignment(cluster_id, row["labels"], refs)
        if name != row["assignment"]:
            self.db.set_desired([(cluster_id, name, row["desired"])])
            if row["assignment"]:
                self._dirty.add(row["assignment"])
        if name is None:
            return
        assignment = self.db.assignment(name)
        assert assignment is not None
        rollout = self.db.active_rollout(name)
        stable = assignment["stable"]
        top = rollout["to_revision"] if rollout else stable
        current = row["desired"] or 0
        if top is not None and current > top:
            self._reconcile(name)  # holds something newer: the assignment is re-issued
        elif stable is not None and current < stable:
            # The stable revision at once (O(1)); a rollout picks the cluster up on its next
            # step (within a second), without re-planning every member per enrollment.
            self._set_desired([(cluster_id, name, stable)])
            if rollout:
                self._dirty.add(name)

    def _place_all(self) -> None:
        refs = [_ref(a) for a in self.db.assignments()]
        moves = []
        for row in self.db.clusters():
            name = choose_assignment(row["id"], row["labels"], refs)
            if name != row["assignment"]:
                moves.append((row["id"], name, row["desired"]))
        self.db.set_desired(moves)
        for ref in refs:
            self._reconcile(ref.name)

    def _reconcile(self, name: str, *, reissued: bool = False) -> None:
        """Bring an assignment's members' desired revisions up to date (in a transaction)."""
        self._dirty.discard(name)
        assignment = self.db.assignment(name)
        if assignment is None:
            return
        rows = self.db.members(name)
        members = [
            Member(r["id"], r["labels"], r["desired"], r["reported"], r["health"]) for r in rows
        ]
        rollout = self.db.active_rollout(name)
        if rollout is None:
            if assignment["stable"] is None:
                return
            plan = plan_rollout(
                rollout_id=0,
                stable=None,
                target=assignment["stable"],
                strategy=IMMEDIATE,
                paused=False,
                members=members,
            )
        else:
            plan = plan_rollout(
                rollout_id=rollout["id"],
                stable=assignment["stable"],
                target=rollout["to_revision"],
                strategy=_strategy_from(rollout["strategy"]),
                paused=rollout["state"] == "paused",
                members=members,
            )
        top = assignment["stable"] if rollout is None else rollout["to_revision"]
        if any(rev > top for rev in plan.desired.values()) and not reissued:
            # A member holds a revision newer than this assignment's newest (built for another
            # assignment). Agents refuse anything lower, so this assignment's content goes out
            # again as the newest revision of all: one build, after which nothing is above it.
            # (A member between stable and target just waits for its turn.)
            source = self.db.bundle(top)
            assert source is not None
            revision = self._build(
                assignment,
                source["profile"],
                source["profile_version"],
                reason="re-issue above another assignment's revision",
            )
            if rollout is None:
                self.db.set_stable(name, revision)
            else:
                self.db.update_rollout(rollout["id"], to_revision=revision)
            self._reconcile(name, reissued=True)
            return
        changes = [
            (m.cluster_id, name, plan.desired[m.cluster_id])
            for m in members
            if plan.desired[m.cluster_id] != m.desired
        ]
        self._set_desired(changes)
        if rollout is not None:
            fields: dict[str, Any] = {
                "phase": plan.phase,
                "done": plan.done,
                "members": len(members),
            }
            if plan.phase == "complete":
                fields["state"] = "complete"
                self.db.set_stable(name, rollout["to_revision"])
            if any(rollout[k] != v for k, v in fields.items()):
                self.db.update_rollout(rollout["id"], updated_at=now_text(self.clock), **fields)

    def _set_desired(self, changes: Sequence[tuple[str, str | None, int | None]]) -> None:
        if not changes:
            return
        self.db.set_desired(changes)
        for cluster_id, _, _ in changes:
            self._desired.pop(cluster_id, None)
        self.notify([c for c, _, _ in changes])

    def tick(self) -> None:
        """Periodic work: flush last-seen times, advance rollouts whose members reported,
        and re-sign bundles before they expire."""
        self.flush_seen()
        for name in sorted(self._dirty):
            try:
                with self.db.transaction():
                    self._reconcile(name)
            except Exception:
                self._dirty.add(name)  # tried again at the next tick
                raise
        if self._next_renewal is None or self.clock.now() >= self._next_renewal:
            self._next_renewal = self.clock.now() + dt.timedelta(hours=1)
            self.renew_bundles()
            cutoff = self.clock.now() - dt.timedelta(days=EVENT_RETENTION_DAYS)
            with self.db.transaction():
                self.db.prune_events(format_time(cutoff))

    def renew_bundles(self) -> list[int]:
        """Re-issue every stable bundle within RENEW_DAYS of expiry as a new revision.

        An agent keeps enforcing an expired policy, but a cluster enrolling later, or an
        offline export, must get a bundle agents accept. A rollout in progress is left
        alone (its target is fresh); its assignment is renewed once it completes.
        """
        horizon = self.clock.now() + dt.timedelta(days=RENEW_DAYS)
        renewed = []
        for assignment in self.db.assignments():
            stable = assignment["stable"]
            bundle = self.db.bundle(stable) if stable is not None else None
            if bundle is None or parse_time(bundle["expires_at"]) > horizon:
                continue
            if self.db.active_rollout(assignment["name"]) is not None:
                continue
            with self.db.transaction():
                revision = self._build(
                    assignment,
                    bundle["profile"],
                    bundle["profile_version"],
                    reason=f"renewal of revision {stable} (expires {bundle['expires_at']})",
                )
                self.db.set_stable(assignment["name"], revision)
                self._audit("system", "bundle.renew", assignment["name"], {"revision": revision})
                self._reconcile(assignment["name"])
            renewed.append(revision)
        return renewed

    # -- actions -------------------------------------------------------------------------
    def queue_action(
        self, actor: str, action_type: str, selector: Selector, params: Mapping[str, Any]
    ) -> list[Row]:
        if action_type not in ACTION_TYPES:
            raise Problem(422, "invalid", f"action type must be one of {', '.join(ACTION_TYPES)}")
        if len(json.dumps(params)) > 4096:
            raise Problem(422, "invalid", "action params exceed 4096 bytes")
        targets = self.clusters(selector)
        if not targets:
            raise Problem(404, "not-found", f"no cluster matches {selector.describe()}")
        now = now_text(self.clock)
        queued = []
        with self.db.transaction():
            for cluster in targets:
                action = {
                    "id": uuid.uuid4().hex,
                    "cluster_id": cluster["id"],
                    "type": action_type,
                    "params": dict(params),
                    "created_at": now,
                    "created_by": actor,
                }
                action["seq"] = self.db.add_action(action)
                queued.append(action)
                self._action_seqs.pop(cluster["id"], None)
            self._audit(
                actor,
                "action.queue",
                selector.describe(),
                {"type": action_type, "clusters": len(queued)},
            )
        self.notify([a["cluster_id"] for a in queued])
        return queued

    def actions(self, cluster_id: str | None) -> list[Row]:
        return self.db.actions(cluster_id)

    # -- bundles -------------------------------------------------------------------------
    def bundles(self) -> list[Row]:
        return self.db.bundles()

    def export(
        self, actor: str, *, cluster_id: str | None, selector: Selector | None
    ) -> tuple[Row, Path]:
        """The signed bundle a cluster (or every cluster of a selector) is meant to run."""
        if cluster_id is not None:
            clusters = [self.cluster(cluster_id)]
        elif selector is not None:
            clusters = self.clusters(selector)
            if not clusters:
                raise Problem(404, "not-found", f"no cluster matches {selector.describe()}")
        else:
            raise Problem(422, "invalid", "name a cluster or a selector")
        revisions = {c["desired"] for c in clusters}
        if None in revisions:
            lacking = next(c["id"] for c in clusters if c["desired"] is None)
            raise Problem(409, "no-desired-state", f"cluster {lacking!r} has no desired state")
        if len(revisions) > 1:
            raise Problem(
                409,
                "mixed-desired-state",
                f"the clusters matched want {len(revisions)} different revisions "
                f"({', '.join(str(r) for r in sorted(revisions)[:5])}); export per cluster",
            )
        bundle = self.db.bundle(revisions.pop())
        assert bundle is not None
        with self.db.transaction():
            self._audit(
                actor,
                "bundle.export",
                cluster_id or (selector.describe() if selector else ""),
                {"revision": bundle["revision"]},
            )
        return bundle, self.data / "bundles" / f"{bundle['revision']}.bundle"

    # -- audit ---------------------------------------------------------------------------
    def _audit(self, actor: str, action: str, subject: str, detail: Mapping[str, Any]) -> None:
        self.db.audit(now_text(self.clock), actor, action, subject, dict(detail))

    def audit_log(self, limit: int) -> list[Row]:
        return self.db.audit_log(limit)


def _ref(row: Row) -> AssignmentRef:
    return AssignmentRef(row["name"], Selector.from_json(row["selector"]), row["priority"])


def _strategy_json(s: Strategy) -> dict[str, Any]:
    return {
        "canary_labels": dict(s.canary_labels) if s.canary_labels else None,
        "canary_percent": s.canary_percent,
        "max_unavailable": s.max_unavailable,
        "max_unavailable_percent": s.max_unavailable_percent,
    }


def _strategy_from(doc: Mapping[str, Any]) -> Strategy:
    return Strategy(
        canary_labels=doc.get("canary_labels"),
        canary_percent=int(doc.get("canary_percent", 0)),
        max_unavailable=int(doc.get("max_unavailable", 0)),
        max_unavailable_percent=int(doc.get("max_unavailable_percent", 0)),
    )


def _check_cluster_id(value: str) -> None:
    if not is_valid_cluster_id(value):
        raise Problem(422, "invalid", f"{value[:64]!r} is not a valid cluster id (DNS-1123 name)")


def _check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > 64:
        raise Problem(422, "invalid", "at most 64 labels")
    for key, value in labels.items():
        if not isinstance(value, str) or not is_valid_label(key, value):
            raise Problem(422, "invalid", f"label {key[:64]!r} is not a valid Kubernetes label")


def _agent_key(text: str) -> str:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Problem(422, "invalid", "agent_key is not valid base64") from None
    if len(raw) != 32:
        raise Problem(422, "invalid", "agent_key must be a 32-byte Ed25519 public key")
    return base64.b64encode(raw).decode("ascii")


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
MAX_DATA_DEPTH = 32
_INT64 = 2**63


def _json_problem(value: object, depth: int) -> str | None:
    """What makes an event's data unfit to store and show, or None: nesting deeper than
    MAX_DATA_DEPTH, integers outside int64 (SQLite's), non-finite numbers (not JSON)."""
    if depth > MAX_DATA_DEPTH:
        return f"is nested deeper than {MAX_DATA_DEPTH} levels"
    if isinstance(value, dict):
        children: Iterable[object] = value.values()
    elif isinstance(value, list):
        children = value
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    elif isinstance(value, int):
        return None if -_INT64 <= value < _INT64 else "holds an integer outside 64 bits"
    elif isinstance(value, float):
        return None if math.isfinite(value) else "holds a number that is not finite"
    else:
        return f"holds a {type(value).__name__}"
    for child in children:
        problem = _json_problem(child, depth + 1)
        if problem:
            return problem
    return None


def _check_event(event: Mapping[str, Any]) -> dict[str, Any]:
    event_id, kind, time, data = event["id"], event["type"], event["time"], event["data"]
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise Problem(422, "invalid", "event id must be 1-128 of [A-Za-z0-9._:-]")
    if not isinstance(kind, str) or not _EVENT_TYPE.fullmatch(kind):
        raise Problem(422, "invalid", f"event {event_id}: type must be 1-32 of [a-z0-9-]")
    if not _is_time(time):
        raise Problem(422, "invalid", f"event {event_id}: time must be YYYY-MM-DDTHH:MM:SSZ")
    if not isinstance(data, dict) or len(_compact(data)) > MAX_EVENT_DATA:
        raise Problem(422, "invalid", f"event {event_id}: data must be an object of at most 16 KiB")
    problem = _json_problem(data, 1)
    if problem:
        raise Problem(422, "invalid", f"event {event_id}: data {problem}")
    return {"id": event_id, "type": kind, "time": time, "data": data}


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        else:
            fsync_dir(path)
    fsync_dir(folder)


def _write_profile(folder: Path, name: str, doc: Mapping[str, Any]) -> None:
    """Lay an uploaded profile out as a folder the builder reads (names checked first)."""
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise Problem(422, "profile-invalid", "layers must be a non-empty list")
    folder.mkdir(mode=0o700, parents=True)
    spec_layers = []
    for layer in layers:
        layer_name = layer.get("name") if isinstance(layer, dict) else None
        manifests = layer.get("manifests") if isinstance(layer, dict) else None
        if not isinstance(layer_name, str) or not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", layer_name
        ):
            raise Problem(422, "profile-invalid", "layer name must be 1-63 of [a-z0-9-]")
        if not isinstance(manifests, dict) or not manifests:
            raise Problem(
                422,
                "profile-invalid",
                f"layer {layer_name!r}: manifests must be a non-empty object",
            )
        target = folder / "layers" / layer_name
        if target.exists():
            raise Problem(422, "profile-invalid", f"layer name {layer_name!r} is used twice")
        target.mkdir(parents=True)
        for file_name, text in manifests.items():
            if not _FILE_NAME.fullmatch(file_name) or not isinstance(text, str):
                raise Problem(
                    422,
                    "profile-invalid",
                    f"layer {layer_name!r}: manifest name {file_name[:64]!r} must be a plain "
                    f"*.yaml file name and its content a string",
                )
            (target / file_name).write_text(text, encoding="utf-8")
        spec_layers.append({"name": layer_name, "path": f"layers/{layer_name}"})
    spec: dict[str, Any] = {"name": name, "layers": spec_layers}
    if doc.get("description"):
        spec["description"] = str(doc["description"])
    if doc.get("settings") is not None:
        # Unset optional settings stay out of the signed bundle (absent means the default).
        spec["settings"] = {k: v for k, v in doc["settings"].items() if v is not None}
    (folder / "profile.yaml").write_text(json.dumps(spec), encoding="utf-8")


def bootstrap_admin(data_dir: Path, keys_dir: Path) -> Path | None:
    """On first start, create operator ``admin`` and write its credential to a 0600 file.

    Returns the file written, or None when operators exist already. Local file access is the
    root of operator trust; the credential is never printed or logged.
    """
    service = ManagementService(data_dir, keys_dir)
    try:
        if service.db.operators():
            return None
        credential = service.create_operator("local:bootstrap", "admin", "admin")
        path = data_dir / "admin.credential"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(credential + "\n")
        return path
    finally:
        service.close()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
