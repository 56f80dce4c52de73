"""Run one reconcile cycle: policy in force → target → recorded outcome.

The shell around a ``Target``: it reads the policy in force and the inventory from the
state store, asks the target to reconcile, and records the cycle summary and the new
inventory in one transaction. A cycle that cannot start (the cluster API is down) is
recorded with its error, leaves the inventory as it was, and is re-raised so that the
scheduler backs off. No code path here waits on the management plane.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.bundle.model import Mode
from edge_agent.clock import Clock
from edge_agent.errors import PolicyObjectError, TargetUnavailableError
from edge_agent.reconcile import cycle
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import desired_objects
from edge_agent.reconcile.target import Target
from edge_agent.state import StateStore

log = logging.getLogger(__name__)


def run_cycle(store: StateStore, target: Target, clock: Clock) -> dict[str, Any] | None:
    """One cycle; returns its summary, or None when no policy is in force yet."""
    policy = store.current_policy()
    if policy is None:
        log.info("no policy in force yet; nothing to enforce")
        return None
    revision = int(policy["revision"])
    mode = Mode(policy["settings"]["mode"])
    started = clock.now()
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
        store.record_cycle(summary, inventory.to_json())
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
    store.record_cycle(summary, report.inventory.to_json())
    log.info("reconcile: %s", summary["line"])
    return summary
