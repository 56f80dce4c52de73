"""Staged rollout and assignment decisions: pure functions, no I/O, no clock.

An assignment points every cluster its selector matches at one signed bundle (its *stable*
revision). When the assigned profile changes, a new bundle (the *target* revision) is built
and a rollout moves the members to it:

1. **canary**: only canary members (a label selector, or a share of the members chosen by a
   stable hash of rollout id and cluster id) are moved;
2. **progressing**: once every canary reports the target revision applied and healthy, the
   other members are moved;
3. **complete**: every member reports the target applied and healthy; the caller then makes
   the target the assignment's stable revision.

At every step at most ``max_unavailable`` members may be *unavailable*, meaning moved to the
target but not yet applied and healthy, or reporting unhealthy whatever their revision. A
paused rollout moves nobody. A cluster's desired revision never goes down: agents refuse a
lower revision as a rollback attack, so a rollback is a fresh, higher revision of the old
content, built by the caller.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HEALTHY = "healthy"


@dataclass(frozen=True, slots=True)
class Selector:
    """Which clusters: one cluster id, or every cluster carrying all these labels."""

    cluster_id: str | None = None
    labels: Mapping[str, str] | None = None

    def matches(self, cluster_id: str, labels: Mapping[str, str]) -> bool:
        if self.cluster_id is not None:
            return self.cluster_id == cluster_id
        return all(labels.get(k) == v for k, v in (self.labels or {}).items())

    def to_json(self) -> dict[str, Any]:
        if self.cluster_id is not None:
            return {"cluster_id": self.cluster_id}
        return {"labels": dict(self.labels or {})}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> Selector:
        if "cluster_id" in doc and doc["cluster_id"] is not None:
            return Selector(cluster_id=str(doc["cluster_id"]))
        return Selector(labels=dict(doc.get("labels") or {}))

    def describe(self) -> str:
        if self.cluster_id is not None:
            return f"cluster {self.cluster_id}"
        return ",".join(f"{k}={v}" for k, v in sorted((self.labels or {}).items())) or "all"


@dataclass(frozen=True, slots=True)
class AssignmentRef:
    name: str
    selector: Selector
    priority: int


def choose_assignment(
    cluster_id: str, labels: Mapping[str, str], assignments: Iterable[AssignmentRef]
) -> str | None:
    """The assignment that governs a cluster: highest priority, then name, among matches."""
    best: AssignmentRef | None = None
    for a in assignments:
        if not a.selector.matches(cluster_id, labels):
            continue
        if best is None or (-a.priority, a.name) < (-best.priority, best.name):
            best = a
    return None if best is None else best.name


@dataclass(frozen=True, slots=True)
class Member:
    cluster_id: str
    labels: Mapping[str, str]
    desired: int | None  # revision the cluster is told to run
    reported: int | None  # revision the cluster last reported in force
    health: str | None  # last reported verdict, None if never reported

    def done(self, target: int) -> bool:
        return self.reported == target and self.health == HEALTHY

    @property
    def unhealthy(self) -> bool:
        return self.health is not None and self.health != HEALTHY


@dataclass(frozen=True, slots=True)
class Strategy:
    """How to roll out: canary by labels or by percent, and the unavailability budget."""

    canary_labels: Mapping[str, str] | None = None
    canary_percent: int = 0
    max_unavailable: int = 1
    max_unavailable_percent: int = 0  # if set, the budget is this share of the members

    @property
    def immediate(self) -> bool:
        return (
            not self.canary_labels
            and self.canary_percent == 0
            and self.max_unavailable == 0
            and self.max_unavailable_percent == 0
        )

    def budget(self, members: int) -> int:
        if self.max_unavailable_percent:
            return max(1, math.ceil(members * self.max_unavailable_percent / 100))
        return max(1, self.max_unavailable)


IMMEDIATE = Strategy(max_unavailable=0)


@dataclass(frozen=True, slots=True)
class Plan:
    desired: Mapping[str, int]  # the desired revision of every member after this step
    phase: str  # "canary" | "progressing" | "paused" | "complete"
    canaries: int
    done: int
    unavailable: int


def canary_ids(rollout_id: int, members: Sequence[Member], strategy: Strategy) -> frozenset[str]:
    if strategy.canary_labels:
        sel = Selector(labels=strategy.canary_labels)
        return frozenset(m.cluster_id for m in members if sel.matches(m.cluster_id, m.labels))
    if strategy.canary_percent <= 0 or not members:
        return frozenset()
    count = max(1, math.ceil(len(members) * strategy.canary_percent / 100))
    return frozenset(
        m.cluster_id for m in sorted(members, key=lambda m: _rank(rollout_id, m))[:count]
    )


def _rank(rollout_id: int, member: Member) -> str:
    return hashlib.sha256(f"{rollout_id}/{member.cluster_id}".encode()).hexdigest()


def plan_rollout(
    *,
    rollout_id: int,
    stable: int | None,
    target: int,
    strategy: Strategy,
    paused: bool,
    members: Sequence[Member],
) -> Plan:
    """Decide every member's desired revision for this step of a rollout to ``target``."""
    desired: dict[str, int] = {}
    for m in members:  # never lower a desired revision
        floor = max(m.desired or 0, stable or 0)
        desired[m.cluster_id] = floor if floor else target
    done = sum(1 for m in members if m.done(target))
    if strategy.immediate or stable is None:
        return Plan(
            {k: max(v, target) for k, v in desired.items()},
            "complete" if done == len(members) else "progressing",
            0,
            done,
            0,
        )
    canaries = canary_ids(rollout_id, members, strategy)
    unavailable = sum(
        1
        for m in members
        if m.unhealthy or (desired[m.cluster_id] >= target and not m.done(target))
    )
    if done == len(members):
        return Plan(desired, "complete", len(canaries), done, unavailable)
    canaries_done = all(m.done(target) for m in members if m.cluster_id in canaries)
    phase = "progressing" if canaries_done else "canary"
    if paused:
        return Plan(desired, "paused", len(canaries), done, unavailable)
    budget = strategy.budget(len(members)) - unavailable
    waiting = [m for m in members if desired[m.cluster_id] < target]
    if phase == "canary":
        waiting = [m for m in waiting if m.cluster_id in canaries]
    waiting.sort(key=lambda m: (m.cluster_id not in canaries, _rank(rollout_id, m)))
    for m in waiting[: max(0, budget)]:
        desired[m.cluster_id] = target
    return Plan(desired, phase, len(canaries), done, unavailable)
