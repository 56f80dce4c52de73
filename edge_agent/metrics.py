"""The agent's state as Prometheus metrics (text exposition format 0.0.4). Pure.

``render(view, now)`` turns the state view (``StateStore.view()`` or the status snapshot) and
the site time into the text node_exporter's textfile collector reads, or a ``/metrics``
endpoint serves. Every metric is prefixed ``edge_agent_``; ages are seconds at ``now``;
counters are totals since the store was created. A metric with nothing to say (no policy
yet, never synced) is left out rather than given a made-up value.

Not here: writing the file or serving HTTP (``daemon``), reading the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from edge_agent.clock import parse_time
from edge_agent.status import Verdict, assess, staleness_of

_VERDICTS = [v.name.lower().replace("_", "-") for v in Verdict]


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        if not samples:
            return
        full = f"edge_agent_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self.lines.append(
                f"{full}{{{label_text}}} {_number(value)}" if labels else f"{full} {_number(value)}"
            )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _age(text: Any, now: dt.datetime) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return max(0.0, (now - parse_time(text)).total_seconds())
    except ValueError:
        return None


def render(view: Mapping[str, Any], now: dt.datetime) -> str:
    out = _Text()
    verdict, _reason = assess(view, now)
    name = verdict.name.lower().replace("_", "-")
    out.metric(
        "verdict",
        "gauge",
        "1 for the status verdict in force (healthy, degraded, failing, not-initialised)",
        [({"verdict": v}, 1 if v == name else 0) for v in _VERDICTS],
    )
    out.metric(
        "status_code",
        "gauge",
        "edge-agent status exit code: 0 healthy, 1 degraded, 2 failing, 3 not initialised",
        [({}, verdict.value)],
    )
    policy = view.get("policy") or {}
    if policy:
        out.metric(
            "policy_revision",
            "gauge",
            "revision of the policy in force",
            [({}, policy["revision"])],
        )
        source = (policy.get("source") or {}).get("kind", "unknown")
        out.metric(
            "policy_source_info",
            "gauge",
            "where the policy in force came from (bundle or sync)",
            [({"source": str(source)}, 1)],
        )
    staleness = staleness_of(view, now)
    if staleness is not None:
        out.metric(
            "policy_stale",
            "gauge",
            "1 when the policy's staleness rule says stale",
            [({}, 1 if staleness.stale else 0)],
        )
    sync = view.get("sync") or {}
    last_sync = _age(sync.get("last_success_at"), now)
    if last_sync is not None:
        out.metric(
            "last_sync_age_seconds",
            "gauge",
            "seconds since the management server last answered",
            [({}, round(last_sync))],
        )
        out.metric(
            "sync_online",
            "gauge",
            "1 while the link to the management server is up",
            [({}, 0 if sync.get("offline_since") else 1)],
        )
    outbox = view.get("outbox") or {}
    out.metric(
        "outbox_events",
        "gauge",
        "events queued for the management server",
        [({}, outbox.get("count", 0))],
    )
    oldest = _age(outbox.get("oldest_time"), now)
    if oldest is not None:
        out.metric(
            "outbox_oldest_age_seconds",
            "gauge",
            "age of the oldest queued event",
            [({}, round(oldest))],
        )
    for key, help_text in (
        ("dropped", "events dropped because the outbox was full, by type"),
        ("coalesced", "superseded events removed because the outbox was full, by type"),
        ("refused", "events the server refused and the agent removed, by type"),
    ):
        counts = outbox.get(key) or {}
        out.metric(
            f"outbox_{key}_total",
            "counter",
            help_text,
            [({"type": str(t)}, n) for t, n in sorted(counts.items())],
        )
    reports = view.get("reports")
    if isinstance(reports, list):
        out.metric(
            "usb_reports_unacknowledged",
            "gauge",
            "status reports written to USB media whose receipt has not come back",
            [({}, len(reports))],
        )
        ages = [a for a in (_age(r.get("created_at"), now) for r in reports) if a is not None]
        if ages:
            out.metric(
                "usb_report_oldest_age_seconds",
                "gauge",
                "age of the oldest status report still waiting for its receipt",
                [({}, round(max(ages)))],
            )
    cycle = view.get("last_cycle") or {}
    if cycle:
        counts = cycle.get("counts") or {}
        out.metric(
            "drift_objects",
            "gauge",
            "objects drifted from the policy in the last cycle (not healed)",
            [({}, counts.get("drifted", 0) + counts.get("would-prune", 0))],
        )
        health = (cycle.get("health") or {}).get("counts") or {}
        out.metric(
            "objects",
            "gauge",
            "objects of the policy by health in the last cycle",
            [({"health": str(h)}, n) for h, n in sorted(health.items())],
        )
        finished = cycle.get("finished_at")
        if isinstance(finished, str):
            out.metric(
                "last_reconcile_timestamp_seconds",
                "gauge",
                "when the last reconcile cycle ended (unix time)",
                [({}, int(parse_time(finished).timestamp()))],
            )
        out.metric(
            "last_reconcile_failed",
            "gauge",
            "1 when the last reconcile cycle could not run",
            [({}, 1 if cycle.get("error") else 0)],
        )
    imports = view.get("import_counts") or {}
    out.metric(
        "imports_total",
        "counter",
        "bundle import attempts, by result",
        [({"result": str(r)}, n) for r, n in sorted(imports.items())],
    )
    return "\n".join(out.lines) + "\n"
