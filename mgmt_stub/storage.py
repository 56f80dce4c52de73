"""The stub's one storage module: SQLite in the data directory, WAL mode.

Nothing else in ``mgmt_stub`` writes SQL; a networked database would replace this module
alone. One connection, used from the server's event loop thread only (every statement is an
indexed lookup or a short transaction). ``synchronous=FULL``: an event batch the server has
acknowledged survives a power cut, because the agent deletes it from its outbox on the
acknowledgement. High-rate, low-value writes (``last_seen``) are buffered by the caller and
flushed in one transaction.

Times are stored as ISO-8601 UTC text (``edge_agent.clock.format_time``); JSON columns as
compact JSON text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    secret_hash TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created_at TEXT NOT NULL,
    created_by TEXT NOT NULL, expires_at TEXT NOT NULL, max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0, cluster_id TEXT, labels TEXT NOT NULL,
    description TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, created_at TEXT NOT NULL,
    enrolled_at TEXT, agent_key TEXT, assignment TEXT, desired INTEGER,
    reported INTEGER, health TEXT, drift INTEGER, summary TEXT, last_seen TEXT,
    last_report_at TEXT, last_ingest_at TEXT, events INTEGER NOT NULL DEFAULT 0,
    action_seq INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS clusters_assignment ON clusters (assignment);
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT, replaces TEXT);
CREATE INDEX IF NOT EXISTS credentials_cluster ON credentials (cluster_id);
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT NOT NULL, version INTEGER NOT NULL, content_sha256 TEXT NOT NULL,
    description TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS assignments (
    name TEXT PRIMARY KEY, profile TEXT NOT NULL, selector TEXT NOT NULL,
    priority INTEGER NOT NULL, strategy TEXT NOT NULL, stable INTEGER,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    revision INTEGER PRIMARY KEY AUTOINCREMENT, bundle_id TEXT NOT NULL,
    assignment TEXT NOT NULL, profile TEXT NOT NULL, profile_version INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, target TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, assignment TEXT NOT NULL,
    from_revision INTEGER, to_revision INTEGER NOT NULL, state TEXT NOT NULL,
    phase TEXT NOT NULL, strategy TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    members INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS rollouts_assignment ON rollouts (assignment, state);
CREATE TABLE IF NOT EXISTS events (
    cluster_id TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL,
    time TEXT NOT NULL, received_at TEXT NOT NULL, via TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (cluster_id, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, seq INTEGER NOT NULL,
    type TEXT NOT NULL, params TEXT NOT NULL, created_at TEXT NOT NULL,
    created_by TEXT NOT NULL, state TEXT NOT NULL, result TEXT, completed_at TEXT);
CREATE INDEX IF NOT EXISTS actions_pending ON actions (cluster_id, state, seq);
CREATE TABLE IF NOT EXISTS reports (
    cluster_id TEXT NOT NULL, report_id TEXT NOT NULL, created_at TEXT NOT NULL,
    ingested_at TEXT NOT NULL, events INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, report_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL);
"""

Row = dict[str, Any]

_JSON_COLUMNS = {"labels", "selector", "strategy", "target", "data", "params", "result", "detail"}


class StorageError(Exception):
    """The database cannot be opened or has an unknown schema."""


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    row = {}
    for (name, *_), value in zip(cursor.description, values, strict=True):
        row[name] = json.loads(value) if name in _JSON_COLUMNS and value is not None else value
    return row


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Storage:
    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = _row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)  # idempotent; executescript commits by itself
            with self.transaction():
                row = self._one("SELECT value FROM meta WHERE key='schema_version'")
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                elif row["value"] != str(SCHEMA_VERSION):
                    raise StorageError(
                        f"{path}: schema version {row['value']} is not {SCHEMA_VERSION}"
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._db.in_transaction:  # nested: part of the outer transaction
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed: never left open
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit inside a transaction: undone alone if it raises."""
        self._db.execute("SAVEPOINT unit")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO unit")
            self._db.execute("RELEASE unit")
            raise
        self._db.execute("RELEASE unit")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._db.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._db.execute(sql, params).fetchall())

    # -- operators -----------------------------------------------------------------------
    def add_operator(self, id_: str, name: str, role: str, secret_hash: str, at: str) -> None:
        self._db.execute(
            "INSERT INTO operators (id, name, role, secret_hash, created_at) VALUES (?,?,?,?,?)",
            (id_, name, role, secret_hash, at),
        )

    def operator(self, id_: str) -> Row | None:
        return self._one("SELECT * FROM operators WHERE id=?", (id_,))

    def operator_by_name(self, name: str) -> Row | None:
        return self._one("SELECT * FROM operators WHERE name=?", (name,))

    def operators(self) -> list[Row]:
        return self._all(
            "SELECT id, name, role, created_at, revoked_at FROM operators ORDER BY name"
        )

    def revoke_operator(self, name: str, at: str) -> bool:
        cur = self._db.execute(
            "UPDATE operators SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (at, name)
        )
        return cur.rowcount > 0

    # -- bootstrap tokens ----------------------------------------------------------------
    def add_token(self, row: Row) -> None:
        row = {**row, "labels": _json(row["labels"])}
        cols = ", ".join(row)
        self._db.execute(
            f"INSERT INTO tokens ({cols}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
            tuple(row.values()),
        )

    def token(self, id_: str) -> Row | None:
        return self._one("SELECT * FROM tokens WHERE id=?", (id_,))

    def tokens(self) -> list[Row]:
        return self._all(
            "SELECT id, created_at, created_by, expires_at, max_uses, uses, cluster_id, labels, "
            "description, revoked_at FROM tokens ORDER BY created_at, id"
        )

    def use_token(self, id_: str) -> None:
        self._db.execute("UPDATE tokens SET uses = uses + 1 WHERE id=?", (id_,))

    def revoke_token(self, id_: str, at: str) -> bool:
        cur = self._db.execute(
            "UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (at, id_)
        )
        return cur.rowcount > 0

    # -- clusters and their credentials -------------------------------------------------
    def cluster(self, id_: str) -> Row | None:
        return self._one("SELECT * FROM clusters WHERE id=?", (id_,))

    def clusters(self) -> list[Row]:
        return self._all("SELECT * FROM clusters ORDER BY id")

    def report_state(self, id_: str) -> Row:
        """What applying a health report needs of a cluster (no JSON decoding)."""
        row = self._one("SELECT last_report_at, assignment FROM clusters WHERE id=?", (id_,))
        assert row is not None, id_
        return row

    def action_seq(self, id_: str) -> int:
        row = self._one("SELECT action_seq FROM clusters WHERE id=?", (id_,))
        return int(row["action_seq"]) if row else 0

    def add_cluster(self, id_: str, labels: Mapping[str, str], at: str) -> None:
        self._db.execute(
            "INSERT INTO clusters (id, labels, created_at) VALUES (?,?,?)",
            (id_, _json(labels), at),
        )

    def update_cluster(self, id_: str, **fields: Any) -> None:
        if not fields:
            return
        values = [(_json(v) if k in _JSON_COLUMNS else v) for k, v in fields.items()]
        sets = ", ".join(f"{k}=?" for k in fields)
        self._db.execute(f"UPDATE clusters SET {sets} WHERE id=?", (*values, id_))  # noqa: S608

    def touch_clusters(self, seen: Mapping[str, str]) -> None:
        with self.transaction():
            self._db.executemany(
                "UPDATE clusters SET last_seen=? WHERE id=?",
                [(at, cid) for cid, at in seen.items()],
            )

    def add_credential(
        self, id_: str, cluster_id: str, secret_hash: str, at: str, replaces: str | None
    ) -> None:
        self._db.execute(
            "INSERT INTO credentials (id, cluster_id, secret_hash, created_at, replaces) "
            "VALUES (?,?,?,?,?)",
            (id_, cluster_id, secret_hash, at, replaces),
        )

    def credential(self, id_: str) -> Row | None:
        return self._one("SELECT * FROM credentials WHERE id=?", (id_,))

    def credentials(self, cluster_id: str) -> list[Row]:
        return self._all(
            "SELECT id, cluster_id, created_at, revoked_at, replaces FROM credentials "
            "WHERE cluster_id=? ORDER BY created_at",
            (cluster_id,),
        )

    def revoke_credentials(self, cluster_id: str, at: str, *, except_id: str | None = None) -> int:
        cur = self._db.execute(
            "UPDATE credentials SET revoked_at=? WHERE cluster_id=? AND revoked_at IS NULL "
            "AND id IS NOT ?",
            (at, cluster_id, except_id),
        )
        return cur.rowcount

    def revoke_credential(self, id_: str, at: str) -> None:
        self._db.execute(
            "UPDATE credentials SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (at, id_)
        )

    # -- profiles ------------------------------------------------------------------------
    def add_profile_version(self, row: Row) -> None:
        self._db.execute(
            "INSERT INTO profiles (name, version, content_sha256, description, created_at, "
            "created_by) VALUES (:name, :version, :content_sha256, :description, :created_at, "
            ":created_by)",
            row,
        )

    def profile_versions(self, name: str) -> list[Row]:
        return self._all("SELECT * FROM profiles WHERE name=? ORDER BY version", (name,))

    def latest_profile(self, name: str) -> Row | None:
        return self._one(
            "SELECT * FROM profiles WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
        )

    def profiles(self) -> list[Row]:
        return self._all(
            "SELECT p.* FROM profiles p WHERE version = "
            "(SELECT MAX(version) FROM profiles q WHERE q.name = p.name) ORDER BY name"
        )

    # -- assignments ---------------------------------------------------------------------
    def put_assignment(self, row: Row) -> None:
        self._db.execute(
            "INSERT INTO assignments (name, profile, selector, priority, strategy, stable, "
            "created_at, updated_at) VALUES (:name, :profile, :selector, :priority, :strategy, "
            ":stable, :created_at, :updated_at) ON CONFLICT(name) DO UPDATE SET "
            "profile=excluded.profile, selector=excluded.selector, "
            "priority=excluded.priority, strategy=excluded.strategy, "
            "updated_at=excluded.updated_at",
            {**row, "selector": _json(row["selector"]), "strategy": _json(row["strategy"])},
        )

    def set_stable(self, name: str, revision: int) -> None:
        self._db.execute("UPDATE assignments SET stable=? WHERE name=?", (revision, name))

    def assignment(self, name: str) -> Row | None:
        return self._one("SELECT * FROM assignments WHERE name=?", (name,))

    def assignments(self) -> list[Row]:
        return self._all("SELECT * FROM assignments ORDER BY name")

    def delete_assignment(self, name: str) -> bool:
        return self._db.execute("DELETE FROM assignments WHERE name=?", (name,)).rowcount > 0

    def members(self, assignment: str) -> list[Row]:
        return self._all(
            "SELECT id, labels, desired, reported, health FROM clusters WHERE assignment=?",
            (assignment,),
        )

    def member_count(self, assignment: str) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM clusters WHERE assignment=?", (assignment,))
        return int(row["n"]) if row else 0

    def set_desired(self, changes: Iterable[tuple[str, str | None, int | None]]) -> None:
        """(cluster, assignment, desired revision) for each cluster that changes."""
        self._db.executemany(
            "UPDATE clusters SET assignment=?, desired=? WHERE id=?",
            [(a, d, c) for c, a, d in changes],
        )

    # -- bundles -------------------------------------------------------------------------
    def next_revision(self) -> int:
        """The revision the next bundle will get: above every revision ever issued."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name='bundles'")
        return (row["seq"] if row else 0) + 1

    def add_bundle(self, row: Row) -> None:
        self._db.execute(
            "INSERT INTO bundles (revision, bundle_id, assignment, profile, profile_version, "
            "sha256, size, target, created_at, expires_at, reason) VALUES (:revision, "
            ":bundle_id, :assignment, :profile, :profile_version, :sha256, :size, :target, "
            ":created_at, :expires_at, :reason)",
            {**row, "target": _json(row["target"])},
        )

    def bundle(self, revision: int) -> Row | None:
        return self._one("SELECT * FROM bundles WHERE revision=?", (revision,))

    def bundles(self, assignment: str | None = None) -> list[Row]:
        if assignment is None:
            return self._all("SELECT * FROM bundles ORDER BY revision")
        return self._all(
            "SELECT * FROM bundles WHERE assignment=? ORDER BY revision", (assignment,)
        )

    # -- rollouts ------------------------------------------------------------------------
    def add_rollout(self, row: Row) -> int:
        cur = self._db.execute(
            "INSERT INTO rollouts (assignment, from_revision, to_revision, state, phase, "
            "strategy, created_at, updated_at) VALUES (:assignment, :from_revision, "
            ":to_revision, :state, :phase, :strategy, :created_at, :updated_at)",
            {**row, "strategy": _json(row["strategy"])},
        )
        return int(cur.lastrowid or 0)

    def rollout(self, id_: int) -> Row | None:
        return self._one("SELECT * FROM rollouts WHERE id=?", (id_,))

    def active_rollout(self, assignment: str) -> Row | None:
        return self._one(
            "SELECT * FROM rollouts WHERE assignment=? AND state IN ('active', 'paused') "
            "ORDER BY id DESC LIMIT 1",
            (assignment,),
        )

    def rollouts(self) -> list[Row]:
        return self._all("SELECT * FROM rollouts ORDER BY id")

    def update_rollout(self, id_: int, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self._db.execute(
            f"UPDATE rollouts SET {sets} WHERE id=?",  # noqa: S608
            (*fields.values(), id_),
        )

    # -- events --------------------------------------------------------------------------
    def add_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], received_at: str, via: str
    ) -> list[bool]:
        """Insert each event unless its id was seen for this cluster; True where new."""
        fresh = []
        for e in events:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO events (cluster_id, event_id, type, time, received_at, "
                "via, data) VALUES (?,?,?,?,?,?,?)",
                (cluster_id, e["id"], e["type"], e["time"], received_at, via, _json(e["data"])),
            )
            fresh.append(cur.rowcount > 0)
        count = sum(fresh)
        if count:
            self._db.execute(
                "UPDATE clusters SET events = events + ? WHERE id=?", (count, cluster_id)
            )
        return fresh

    def prune_events(self, before: str) -> int:
        return self._db.execute("DELETE FROM events WHERE received_at < ?", (before,)).rowcount

    def events(self, cluster_id: str, limit: int) -> list[Row]:
        return self._all(
            "SELECT event_id AS id, type, time, received_at, via, data FROM events "
            "WHERE cluster_id=? ORDER BY time DESC, event_id LIMIT ?",
            (cluster_id, limit),
        )

    def report_ids(self, cluster_id: str, limit: int) -> list[str]:
        """The ids of the ``limit`` reports of a cluster ingested last, newest last (by our
        clock: a site's clock may be anywhere)."""
        rows = self._db.execute(
            "SELECT report_id FROM reports WHERE cluster_id = ? "
            "ORDER BY ingested_at DESC, report_id DESC LIMIT ?",
            (cluster_id, limit),
        ).fetchall()
        return [str(r["report_id"]) for r in reversed(rows)]

    def add_report(self, cluster_id: str, report_id: str, created_at: str, at: str, n: int) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO reports VALUES (?,?,?,?,?)",
            (cluster_id, report_id, created_at, at, n),
        )
        return cur.rowcount > 0

    # -- actions -------------------------------------------------------------------------
    def add_action(self, row: Row) -> int:
        """Queue one action; return its per-cluster sequence number."""
        cur = self._db.execute(
            "UPDATE clusters SET action_seq = action_seq + 1 WHERE id=? RETURNING action_seq",
            (row["cluster_id"],),
        )
        seq = int(cur.fetchone()["action_seq"])
        self._db.execute(
            "INSERT INTO actions (id, cluster_id, seq, type, params, created_at, created_by, "
            "state) VALUES (?,?,?,?,?,?,?, 'pending')",
            (
                row["id"],
                row["cluster_id"],
                seq,
                row["type"],
                _json(row["params"]),
                row["created_at"],
                row["created_by"],
            ),
        )
        return seq

    def pending_actions(self, cluster_id: str) -> list[Row]:
        return self._all(
            "SELECT id, seq, type, params, created_at FROM actions "
            "WHERE cluster_id=? AND state='pending' ORDER BY seq",
            (cluster_id,),
        )

    def actions(self, cluster_id: str | None = None, limit: int = 500) -> list[Row]:
        if cluster_id is None:
            return self._all("SELECT * FROM actions ORDER BY created_at DESC LIMIT ?", (limit,))
        return self._all(
            "SELECT * FROM actions WHERE cluster_id=? ORDER BY seq DESC LIMIT ?",
            (cluster_id, limit),
        )

    def complete_action(
        self, cluster_id: str, action_id: str, state: str, result: Any, at: str
    ) -> bool:
        cur = self._db.execute(
            "UPDATE actions SET state=?, result=?, completed_at=? "
            "WHERE id=? AND cluster_id=? AND state='pending'",
            (state, _json(result), at, action_id, cluster_id),
        )
        return cur.rowcount > 0

    # -- audit ---------------------------------------------------------------------------
    def audit(self, at: str, actor: str, action: str, subject: str, detail: Any) -> None:
        self._db.execute(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?,?,?,?,?)",
            (at, actor, action, subject, _json(detail)),
        )

    def audit_log(self, limit: int) -> list[Row]:
        return self._all("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
