"""The enforcement seam: what a target is asked to do in one cycle, and what it reports.

A target takes the policy's desired objects, the inventory of what the agent applied
before, and the mode, and brings one kind of destination (a Kubernetes API server, a
folder of manifests an edge distribution auto-applies) to the desired state — or, in
audit mode, only reports how far it is from it. It returns a ``CycleReport``: one
``ObjectResult`` per object it looked at and the inventory to keep for the next cycle.

This module holds only the values and the ``Target`` protocol: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.bundle.model import Mode
from edge_agent.reconcile.health import Health
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import DesiredObject, ObjectRef


class Action(enum.Enum):
    """What happened to one object in one cycle."""

    CREATED = "created"  # was missing, applied
    UNCHANGED = "unchanged"  # in the desired state; nothing written
    HEALED = "healed"  # had drifted, applied back (enforce mode)
    DRIFTED = "drifted"  # has drifted or is missing; left alone (audit mode)
    PRUNED = "pruned"  # applied before, no longer desired, deleted (enforce mode)
    WOULD_PRUNE = "would-prune"  # no longer desired; left alone (audit mode)
    FAILED = "failed"  # the target refused or could not be reached; see detail


@dataclass(frozen=True, slots=True)
class ObjectResult:
    ref: ObjectRef
    action: Action
    detail: str = ""  # one line: drifted field paths, or the error
    health: Health | None = None  # None for pruned objects and targets without health


@dataclass(frozen=True, slots=True)
class CycleReport:
    results: tuple[ObjectResult, ...]
    inventory: Inventory  # what the next cycle may prune

    def count(self, action: Action) -> int:
        return sum(1 for r in self.results if r.action is action)


class Target(Protocol):
    """One destination the agent enforces the policy onto."""

    name: str  # "kubernetes" or "manifest-dir", for status and logs

    def reconcile(
        self, desired: Sequence[DesiredObject], inventory: Inventory, *, mode: Mode
    ) -> CycleReport:
        """One cycle. Raises ``TargetUnavailableError`` (transient) if it cannot start at all."""
        ...
