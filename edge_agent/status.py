"""What ``edge-agent status`` says: a verdict and a report, from a state view.

``assess`` turns the state view (``StateStore.view()`` or the world-readable snapshot,
both the same JSON) and the site time into a verdict with a monitoring-friendly exit code;
``render`` writes the report for a person. Pure: dicts and a time in, text out. The JSON form is the view itself plus
the verdict and the agent identity: keys are only ever added, never renamed.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

from edge_agent.clock import format_time, parse_time
from edge_agent.gate import decide, windows_of
from edge_agent.staleness import Staleness
from edge_agent.staleness import assess as assess_staleness


class Verdict(enum.Enum):
    """Exit codes follow the Nagios plugin convention so monitoring can use them as is."""

    HEALTHY = 0
    DEGRADED = 1
    FAILING = 2
    NOT_INITIALISED = 3


#: Rejections that say nothing is wrong with the site: an older bundle still on the stick,
#: another site's bundle on a shared stick. They are listed, but do not degrade the verdict.
BENIGN_CODES = frozenset({"rollback", "wrong-target"})
ROOT_EXPIRY_WARNING = dt.timedelta(days=30)


def assess(view: Mapping[str, Any], now: dt.datetime) -> tuple[Verdict, str]:
    """The verdict and its one-line reason, at site time ``now``."""
    trust = view.get("trust")
    if trust is None:
        return Verdict.NOT_INITIALISED, "no trusted root yet (the agent has not been provisioned)"
    root_expires = parse_time(trust["root_expires_at"])
    policy = view.get("policy")
    if policy is None:
        pending = view.get("pending_policy")
        if pending:
            return (
                Verdict.NOT_INITIALISED,
                f"no policy in force yet; revision {pending['revision']} waits"
                + (" (held on site: edge-agent release)" if view.get("hold") else ""),
            )
        return Verdict.NOT_INITIALISED, "no policy in force yet (import a bundle)"
    in_force = f"revision {policy['revision']} in force"
    if root_expires <= now:
        return (
            Verdict.FAILING,
            f"{in_force}, but trust root version {trust['root_version']} expired at "
            f"{trust['root_expires_at']}: no new bundle is accepted until one carries a newer root",
        )
    staleness = staleness_of(view, now)
    if staleness is not None and staleness.stale:
        return Verdict.DEGRADED, f"{in_force}; {staleness.line()}"
    hold, pending = view.get("hold"), view.get("pending_policy")
    if hold and pending:
        return (
            Verdict.DEGRADED,
            f"{in_force}; revision {pending['revision']} is held on site since "
            f"{hold.get('since')}: {hold.get('reason')}",
        )
    problem = _last_problem(view.get("imports") or []) or _cycle_problem(view.get("last_cycle"))
    if problem is not None:
        return Verdict.DEGRADED, f"{in_force}; {problem}"
    if root_expires - now <= ROOT_EXPIRY_WARNING:
        return (
            Verdict.DEGRADED,
            f"{in_force}; trust root version {trust['root_version']} expires at "
            f"{trust['root_expires_at']}: deliver a rotated root soon",
        )
    return Verdict.HEALTHY, in_force


def staleness_of(view: Mapping[str, Any], now: dt.datetime) -> Staleness | None:
    """The policy's staleness: confirmed by the newest verified bundle or server contact."""
    policy = view.get("policy")
    if not policy:
        return None
    times = [view.get("policy_confirmed_at"), (view.get("sync") or {}).get("last_confirmed_at")]
    confirmed = max((parse_time(t) for t in times if t), default=None)
    if confirmed is None:
        confirmed = parse_time(policy["source"]["received_at"])
    return assess_staleness(policy["settings"], confirmed_at=confirmed, now=now)


def _cycle_problem(last_cycle: Mapping[str, Any] | None) -> str | None:
    """What the newest reconcile cycle says is wrong, if anything."""
    if not last_cycle:
        return None
    if last_cycle.get("error"):
        return f"enforcement did not run at {last_cycle['finished_at']}: {last_cycle['error']}"
    if last_cycle.get("counts", {}).get("failed"):
        return f"enforcement: {last_cycle['line']}"
    health = last_cycle.get("health") or {}
    if health.get("worst") in ("degraded", "failed"):
        return f"enforcement: {health.get('line')}"
    return None


def _last_problem(imports: list[Mapping[str, Any]]) -> str | None:
    """The newest failed or suspicious import since the last successful one, if any."""
    for entry in reversed(imports):
        if entry["result"] in ("committed", "already-in-force", "pending", "applied"):
            return None
        if entry["result"] == "failed":
            return f"an import failed at {entry['at']}"
        if entry["result"] == "rejected" and entry.get("code") not in BENIGN_CODES:
            return f"a bundle was rejected at {entry['at']}: {entry.get('code')}"
    return None


def report(
    view: Mapping[str, Any],
    *,
    cluster_id: str,
    labels: Mapping[str, str],
    source: str,
    now: dt.datetime,
    sync_server: str | None = None,
    site_tz: dt.tzinfo | None = dt.UTC,
) -> dict[str, Any]:
    """The stable JSON document of ``status --json``; ``site_tz`` is the site's time zone
    (maintenance windows are in site time)."""
    verdict, reason = assess(view, now)
    staleness = staleness_of(view, now)
    return {
        "pending": pending_of(view, now.astimezone(site_tz)),
        "verdict": verdict.name.lower().replace("_", "-"),
        "reason": reason,
        "cluster_id": cluster_id,
        "labels": dict(labels),
        "read_from": source,
        "checked_at": format_time(now),
        **dict(view),
        "staleness": staleness.to_json() if staleness else None,
        "connectivity": connectivity(view.get("sync"), sync_server),
    }


def pending_of(view: Mapping[str, Any], site_now: dt.datetime) -> dict[str, Any] | None:
    """The revision waiting to be applied, why, and when it will (site time)."""
    pending = view.get("pending_policy")
    if not pending:
        return None
    decision = decide(
        hold=view.get("hold"),
        windows=windows_of(view.get("policy")),
        urgent=bool((pending.get("settings") or {}).get("urgent")),
        now=site_now,
    )
    return {
        "revision": pending["revision"],
        "bundle_id": pending["bundle_id"],
        "reason": decision.reason if not decision.apply else "due now: applied at the next cycle",
        "applies_at": decision.next_at.isoformat() if decision.next_at else None,
    }


def connectivity(sync: Mapping[str, Any] | None, server: str | None) -> dict[str, Any]:
    """Online, offline since, or never connected; what the link last said.

    ``server`` is the configured management server (None: no ``sync`` section, air-gapped).
    """
    state = dict(sync or {})
    if server is None:
        return {"state": "air-gapped", "server": None, "since": None}
    last_success = state.get("last_success_at")
    if state.get("server") not in (None, server):
        state = {}  # what we know (and the credential held) is for another server
        last_success = None
    if last_success is None:
        link = "never-connected"
        since = None
    elif state.get("offline_since"):
        link, since = "offline", state["offline_since"]
    else:
        link, since = "online", state.get("online_since") or last_success
    return {
        "state": link,
        "server": server,
        "since": since,
        "enrolled": bool(state.get("credential_id")),
        "credential_id": state.get("credential_id"),
        "last_success_at": last_success,
        "last_attempt_at": state.get("last_attempt_at"),
        "last_error": state.get("last_error"),
        "next_attempt_at": state.get("next_attempt_at") if link != "online" else None,
        "clock_skew_s": state.get("clock_skew_s"),
    }


def render(doc: Mapping[str, Any]) -> str:
    """Human report of a ``report`` document."""
    lines = [
        f"edge-agent: {doc['verdict'].upper()} — {doc['reason']}",
        f"cluster      {doc['cluster_id']}  labels: {_labels(doc['labels'])}",
    ]
    policy = doc.get("policy")
    if policy:
        src = policy["source"]
        lines += [
            f"policy       revision {policy['revision']}  bundle {policy['bundle_id']}",
            f"             from {src['kind']} {src['location']} at {src['received_at']}",
            f"             issued {policy['issued_at']}  expires {policy['expires_at']}",
            f"             mode {policy['settings']['mode']}  reconcile every {policy['settings']['reconcile_interval_s']} s"
            f"  sync every {policy['settings']['sync_interval_s']} s",
        ]
        for layer in policy["layers"]:
            lines.append(
                f"  layer      {layer['name']:<16} {layer['objects']} objects in {layer['manifests']} files"
            )
        for artifact in policy["artifacts"]:
            lines.append(
                f"  artifact   {artifact['path']} ({artifact['kind']}, {artifact['length']} bytes)"
            )
    else:
        lines.append("policy       none in force")
    pending = doc.get("pending")
    if pending:
        when = f"; applies at {pending['applies_at']}" if pending.get("applies_at") else ""
        lines.append(f"pending      revision {pending['revision']}: {pending['reason']}{when}")
    hold = doc.get("hold")
    if hold:
        lines.append(
            f"hold         since {hold.get('since')}: {hold.get('reason')} (edge-agent release)"
        )
    staleness = doc.get("staleness")
    if policy and staleness and staleness.get("stale_after_s"):
        lines.append(f"staleness    {_staleness_line(staleness)}")
    lines += _sync_lines(doc)
    reports = doc.get("reports") or []
    if reports:
        newest = reports[-1]
        lines.append(
            f"usb out      {len(reports)} status report{'s' if len(reports) != 1 else ''} "
            f"awaiting management's receipt; newest {newest['report_id']} "
            f"({newest['events']} events) to {newest['where']}"
        )
    last_cycle = doc.get("last_cycle")
    if last_cycle:
        lines.append(
            f"enforcement  {last_cycle['target']} ({last_cycle['mode']}) at {last_cycle['finished_at']}"
        )
        lines.append(f"             {last_cycle['line']}")
    previous = doc.get("previous_policy")
    if previous:
        lines.append(
            f"previous     revision {previous['revision']}  bundle {previous['bundle_id']}"
        )
    trust = doc.get("trust")
    if trust:
        lines += [
            f"trust root   version {trust['root_version']}  expires {trust['root_expires_at']}",
            f"  root keys   {_keys(trust['root_keys'])} (threshold {trust['root_threshold']})",
            f"  policy keys {_keys(trust['policy_keys'])} (threshold {trust['policy_threshold']})",
        ]
        if trust["revoked_keys"]:
            lines.append(f"  revoked     {_keys(trust['revoked_keys'])}")
        lines.append(
            f"trusted time {trust['time_high_water'] or 'none yet'} (newest issued-at accepted)"
        )
    imports = doc.get("imports") or []
    if imports:
        lines.append("last imports")
        for entry in imports[-5:][::-1]:
            what = (
                f"revision {entry['revision']}"
                if entry.get("revision")
                else entry.get("code") or ""
            )
            lines.append(f"  {entry['at']}  {entry['result']:<16} {what}  {entry['location']}")
            if entry.get("message") and entry["result"] in ("rejected", "failed"):
                lines.append(f"      {entry['message']}")
    lines.append(f"(read from {doc['read_from']})")
    return "\n".join(lines)


def _staleness_line(doc: Mapping[str, Any]) -> str:
    if doc["stale"]:
        action = (
            "audit only (not changing the cluster)"
            if doc["on_stale"] == "audit"
            else "still enforced"
        )
        return f"STALE since {doc['stale_since']} (confirmed {doc['confirmed_at']}); {action}"
    return f"confirmed {doc['confirmed_at']}; stale after {doc['stale_after_s']} s without contact"


def _sync_lines(doc: Mapping[str, Any]) -> list[str]:
    link = doc.get("connectivity") or {}
    outbox = doc.get("outbox") or {}
    backlog = f"{outbox.get('count', 0)} events queued"
    if outbox.get("oldest_time"):
        backlog += f", oldest {outbox['oldest_time']}"
    lost = sum((outbox.get("dropped") or {}).values())
    if lost:
        backlog += f", {lost} dropped when full"
    refused = sum((outbox.get("refused") or {}).values())
    if refused:
        backlog += f", {refused} refused by the server"
    state = link.get("state")
    if state in (None, "air-gapped"):
        return [f"management  none configured (air-gapped); {backlog}"]
    if state == "online":
        head = f"online since {link['since']}"
    elif state == "offline":
        head = f"OFFLINE since {link['since']} (last sync {link['last_success_at']})"
    else:
        head = "never connected"
    lines = [f"management  {head}  {link['server']}"]
    enrolled = f"credential {link['credential_id']}" if link.get("enrolled") else "not enrolled"
    lines.append(
        f"             {enrolled}; last sync {link.get('last_success_at') or 'never'}; {backlog}"
    )
    if link.get("last_error") and state != "online":
        lines.append(f"             last error: {link['last_error']}")
    return lines


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def _keys(keyids: list[str]) -> str:
    return " ".join(k[:12] for k in keyids)
