"""One reconcile cycle's outcome as plain JSON, and the line a person reads at a glance.

``summarize`` turns a ``CycleReport`` into the JSON kept in the state store and shown by
``edge-agent status``: per-object results, counts per action, the health fold, and a line
such as ``revision 12 · 43 objects · 0 drifted · 1 degraded: deployment/web 1/3 ready``.
``failed`` does the same for a cycle that could not start (the cluster API is down).
Pure: values in, JSON out; no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from edge_agent.clock import format_time
from edge_agent.reconcile.health import summarize as summarize_health
from edge_agent.reconcile.target import Action, CycleReport


def summarize(
    report: CycleReport,
    *,
    revision: int,
    target: str,
    mode: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
) -> dict[str, Any]:
    healths = [(str(r.ref), r.health) for r in report.results if r.health is not None]
    health = summarize_health(healths)
    counts = {action.value: report.count(action) for action in Action}
    drifted = counts["drifted"] + counts["healed"]
    objects = sum(1 for r in report.results if r.action not in (Action.PRUNED, Action.WOULD_PRUNE))
    parts = [f"revision {revision}", f"{objects} objects", f"{drifted} drifted"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    if healths:
        parts.append(health.line())
    return {
        "revision": revision,
        "target": target,
        "mode": mode,
        "started_at": format_time(started_at),
        "finished_at": format_time(finished_at),
        "error": None,
        "counts": counts,
        "health": {
            "worst": health.worst_status.value,
            "line": health.line(),
            "counts": {status.value: n for status, n in health.counts},
        },
        "objects": [
            {
                "ref": str(r.ref),
                "action": r.action.value,
                "detail": r.detail,
                "health": None
                if r.health is None
                else {
                    "status": r.health.status.value,
                    "reason": r.health.reason,
                    "message": r.health.message,
                },
            }
            for r in report.results
        ],
        "line": " · ".join(parts),
    }


def failed(
    error: str,
    *,
    revision: int | None,
    target: str,
    mode: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
) -> dict[str, Any]:
    """A cycle that could not run: nothing was changed, the previous state stays in force."""
    return {
        "revision": revision,
        "target": target,
        "mode": mode,
        "started_at": format_time(started_at),
        "finished_at": format_time(finished_at),
        "error": error,
        "counts": {},
        "health": None,
        "objects": [],
        "line": f"revision {revision} · cycle failed: {error}",
    }
