"""What each outcome tells the management plane: the data of the events the agent queues.

Pure: outcomes (import records, reconcile cycle summaries, the status view) in, event
``(type, data)`` pairs out. The shell stamps them into ``outbox.Event`` values (id, time) and
queues them in the same transaction as the outcome itself, so an outcome and its event are
never separated by a crash.

What is sent, and why so little: an idle, healthy site queues nothing at all. A cycle
becomes a ``reconcile`` event only when it changed something, failed, or enforced a new
revision; a ``drift`` event only when it found drift; a ``health`` event only when the
health document differs from the last one queued (the server keeps the newest). Every
import (committed, already in force, rejected, failed) is an ``import`` event, and every
action a single ``action-result``. Data stays below the server's 16 KiB per event: texts are
cut to ``MAX_TEXT`` characters and a drift list stops at ``MAX_LISTED`` objects or
``MAX_LIST_BYTES`` of JSON, whichever comes first (``count`` always says how many drifted).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from edge_agent.status import assess, staleness_of

MAX_LISTED = 50
MAX_TEXT = 300
MAX_LIST_BYTES = 8 * 1024
_CHANGES = ("created", "healed", "pruned", "failed")


def _cut(text: Any) -> str | None:
    if text is None:
        return None
    value = str(text)
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"


def import_data(record: Mapping[str, Any], source_kind: str) -> dict[str, Any]:
    """An ``import`` event: one attempt to make a bundle the policy in force."""
    return {
        "result": record["result"],
        "source": source_kind,
        "location": _cut(record.get("location")),
        "revision": record.get("revision"),
        "bundle_id": record.get("bundle_id"),
        "file_sha256": record.get("file_sha256"),
        "code": record.get("code"),
        "message": _cut(record.get("message")),
    }


def cycle_events(
    previous: Mapping[str, Any] | None, summary: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The ``reconcile`` and ``drift`` events of one recorded cycle (often none)."""
    counts = summary.get("counts") or {}
    new_revision = previous is None or previous.get("revision") != summary.get("revision")
    changed = any(counts.get(name) for name in _CHANGES)
    events: list[tuple[str, dict[str, Any]]] = []
    if summary.get("error") or changed or new_revision:
        events.append(
            (
                "reconcile",
                {
                    "revision": summary.get("revision"),
                    "mode": summary.get("mode"),
                    "target": summary.get("target"),
                    "counts": dict(counts),
                    "error": _cut(summary.get("error")),
                    "line": _cut(summary.get("line")),
                },
            )
        )
    drifted = [
        o
        for o in summary.get("objects") or []
        if o.get("action") in ("drifted", "healed", "would-prune")
    ]
    if drifted:
        events.append(
            (
                "drift",
                {
                    "revision": summary.get("revision"),
                    "mode": summary.get("mode"),
                    "count": len(drifted),
                    "objects": _listed(drifted),
                },
            )
        )
    return events


def _listed(drifted: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    size = 0
    for o in drifted[:MAX_LISTED]:
        entry = {"ref": _cut(o["ref"]), "action": o["action"], "detail": _cut(o.get("detail"))}
        size += len(json.dumps(entry, separators=(",", ":")).encode())
        if size > MAX_LIST_BYTES:
            break
        listed.append(entry)
    return listed


def health_data(view: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The ``health`` event's data: what the dashboard and staged rollouts read.

    ``revision`` is the revision the newest reconcile cycle enforced (applied), not merely
    the one committed: a rollout moves on only when the new revision is applied and healthy.
    It has no time in it, so two equal states compare equal.
    """
    verdict, reason = assess(view, now)
    staleness = staleness_of(view, now)
    cycle = view.get("last_cycle") or {}
    counts = cycle.get("counts") or {}
    drift = counts.get("drifted", 0) + counts.get("would-prune", 0)
    applied = cycle.get("revision") if not cycle.get("error") else None
    data: dict[str, Any] = {
        "verdict": verdict.name.lower().replace("_", "-"),
        "revision": applied,
        "drift": drift,
        "summary": _cut(reason),
        "stale": bool(staleness and staleness.stale),
    }
    if staleness is not None and staleness.stale:
        data["stale_since"] = staleness.to_json()["stale_since"]
        data["on_stale"] = staleness.on_stale
    hold, pending = view.get("hold"), view.get("pending_policy")
    if hold:
        data["hold"] = {"reason": _cut(hold.get("reason")), "since": hold.get("since")}
    if pending:
        data["pending_revision"] = pending.get("revision")
    return data
