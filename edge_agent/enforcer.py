"""Enforcement: one reconcile cycle (``run_cycle``), and the loop that repeats it (``Enforcer``).

The shell around a ``Target``: it reads the policy in force and the inventory from the
state store, asks the target to reconcile, and records the cycle summary and the new
inventory in one transaction. A cycle that cannot start (the cluster API is down) is
recorded with its error, leaves the inventory as it was, and is re-raised so that the
scheduler backs off. No code path here waits on the management plane.

Each recorded cycle queues its findings (``findings.cycle_events``: what changed, what
drifted) in the same transaction, then a health event if the health changed. A policy that
has gone stale under a rule saying ``on_stale: audit`` is enforced in audit mode: reported,
never changed. An ``enforce`` process also runs a cycle at once when someone asked for one
(``StateStore.request_reconcile``, the ``reconcile-now`` action).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.bundle.model import Mode
from edge_agent.clock import Clock, format_time
from edge_agent.config import AgentConfig
from edge_agent.control import promote_if_due
from edge_agent.errors import (
    ConfigError,
    EdgeAgentError,
    PolicyObjectError,
    TargetUnavailableError,
)
from edge_agent.findings import cycle_events
from edge_agent.outbox import Event
from edge_agent.reconcile import cycle
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import desired_objects
from edge_agent.reconcile.target import Target
from edge_agent.scheduler import CycleScheduler
from edge_agent.state import StateStore
from edge_agent.status import staleness_of
from edge_agent.telemetry import note_health, stamp

log = logging.getLogger(__name__)


def run_cycle(
    store: StateStore, target: Target, clock: Clock, config: AgentConfig | None = None
) -> dict[str, Any] | None:
    """One cycle; returns its summary, or None when no policy is in force yet. With the
    ``config``, a pending revision whose time has come is applied first."""
    if config is not None:
        promote_if_due(store, config, clock)
    policy = store.current_policy()
    if policy is None:
        log.info("no policy in force yet; nothing to enforce")
        return None
    revision = int(policy["revision"])
    mode = Mode(policy["settings"]["mode"])
    started = clock.now()
    staleness = staleness_of(
        {
            "policy": policy,
            "policy_confirmed_at": _text(store.policy_confirmed_at()),
            "sync": store.sync_state(),
        },
        started,
    )
    if staleness is not None and staleness.audit and mode is Mode.ENFORCE:
        log.warning("the policy is stale (%s): audit only", staleness.line())
        mode = Mode.AUDIT
    previous = store.last_cycle()
    raw_inventory = store.inventory()
    inventory = Inventory.from_json(raw_inventory) if raw_inventory else Inventory()
    try:
        desired = desired_objects(policy["layers"])
        report = target.reconcile(desired, inventory, mode=mode)
    except (TargetUnavailableError, PolicyObjectError) as exc:
        summary = cycle.failed(
            str(exc),
            revision=revision,
            target=target.name,
            mode=mode.value,
            started_at=started,
            finished_at=clock.now(),
        )
        store.record_cycle(summary, inventory.to_json(), events=_events(previous, summary, clock))
        note_health(store, clock)
        log.warning("reconcile of revision %d did not run: %s", revision, exc)
        raise
    summary = cycle.summarize(
        report,
        revision=revision,
        target=target.name,
        mode=mode.value,
        started_at=started,
        finished_at=clock.now(),
    )
    store.record_cycle(
        summary, report.inventory.to_json(), events=_events(previous, summary, clock)
    )
    note_health(store, clock)
    log.info("reconcile: %s", summary["line"])
    return summary


def _events(
    previous: Mapping[str, Any] | None, summary: Mapping[str, Any], clock: Clock
) -> list[Event]:
    return [stamp(kind, data, clock) for kind, data in cycle_events(previous, summary)]


def _text(value: dt.datetime | None) -> str | None:
    return format_time(value) if value else None


IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
DEFAULT_INTERVAL_S = 30.0  # before the first policy brings its own reconcile interval


def build_target(config: AgentConfig) -> Target:
    """The target the configuration names (``auto``: the cluster this agent runs in)."""
    target = config.target
    if target.kind == "manifest-dir":
        from edge_agent.reconcile.manifest_dir import Layout, ManifestDirTarget

        assert target.folder is not None  # checked by the config
        return ManifestDirTarget(target.folder, layout=Layout(target.layout))
    from edge_agent.reconcile.kube_target import KubeTarget

    if target.kubeconfig is not None:
        return KubeTarget.from_kubeconfig(str(target.kubeconfig))
    if os.environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.exists():
        return KubeTarget.from_in_cluster()
    raise ConfigError(
        "no enforcement target: not running in a cluster and target.kubeconfig is not set; "
        "configure target.kind manifest-dir (with target.folder) or target.kubeconfig"
    )


class Enforcer:
    """Keeps the target on the policy in force: periodic cycles, and one at once when the
    policy in force changes or the target reports a change behind the agent's back."""

    def __init__(
        self,
        store: StateStore,
        target: Target,
        clock: Clock,
        *,
        poll_s: float = 2.0,
        config: AgentConfig | None = None,
    ):
        self._config = config
        self._store = store
        self._target = target
        self._clock = clock
        self._poll_s = poll_s
        self._lock = threading.Lock()  # the store handle is shared with the poll loop
        self._watch_warned = False
        self._scheduler = CycleScheduler(
            self._cycle, interval_s=DEFAULT_INTERVAL_S, jitter_s=DEFAULT_INTERVAL_S / 10
        )

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: schedule cycles, watch for new policies and tampering."""
        watcher = self._start_watch()
        seen = self._revision()
        requests = self._requests()
        self._scheduler.start()
        try:
            while not stop.wait(self._poll_s):
                if watcher is None:
                    watcher = self._start_watch()  # e.g. k3s created its manifest folder by now
                self._promote()
                revision = self._revision()
                if revision != seen:
                    log.info("policy revision %s is now in force; reconciling now", revision)
                    seen = revision
                    self._scheduler.trigger_now()
                asked = self._requests()
                if asked != requests:
                    log.info("a reconcile was requested; reconciling now")
                    requests = asked
                    self._scheduler.trigger_now()
        finally:
            if watcher is not None:
                watcher.stop()
            self._scheduler.shutdown()

    def _start_watch(self) -> Any:
        """The target's change watcher, if it has one and it can start now; else None."""
        watch = getattr(self._target, "watch", None)
        if not callable(watch):
            return None
        try:
            return watch(self._scheduler.trigger_now)
        except TargetUnavailableError as exc:
            if not self._watch_warned:
                log.warning("not watching the target yet (retrying): %s", exc)
                self._watch_warned = True
            return None

    def _revision(self) -> int | None:
        with self._lock:
            policy = self._store.current_policy()
        return None if policy is None else int(policy["revision"])

    def _promote(self) -> None:
        """Apply a pending revision once its maintenance window opens or the hold is lifted."""
        if self._config is None:
            return
        with self._lock:
            try:
                promote_if_due(self._store, self._config, self._clock)
            except EdgeAgentError as exc:
                log.warning("pending revision not applied: %s", exc)

    def _requests(self) -> int:
        with self._lock:
            return self._store.reconcile_requests()

    def _cycle(self) -> None:
        with self._lock:
            run_cycle(self._store, self._target, self._clock, self._config)  # records its outcome
            policy = self._store.current_policy()
        if policy is not None:
            interval = float(policy["settings"]["reconcile_interval_s"])
            self._scheduler.set_interval(interval, jitter_s=interval / 10)
