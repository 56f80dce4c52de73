"""Health: how far a live Kubernetes object is from doing its job, as a verdict with a reason.

``assess`` takes one live object, a plain dict exactly as a real API server returns it, and
says whether it is READY, PROGRESSING, DEGRADED or FAILED (or UNKNOWN), with a CamelCase
reason and a one-line message for a person ("deployment/web 1/3 ready"). ``summarize``
folds many verdicts into the counts and the worst few messages for a status line.

The rules follow what the workload controllers themselves publish, the way Flux's kstatus and
Argo CD's health checks read them: an object whose ``status.observedGeneration`` lags its
``metadata.generation`` has not been looked at yet and is PROGRESSING whatever its old status
says; a controller's own verdict (a Deployment's ``ProgressDeadlineExceeded``, a Job's
``Failed`` condition, a PVC's ``Lost`` phase) is taken over rather than second-guessed; replica
counts are compared with the spec only once the status is current.

Status meanings:

- READY: doing its job now (a completed Job, a bound claim, all replicas updated and ready).
- PROGRESSING: not there yet, and expected to get there without a person (a rollout, a pod
  starting, a claim waiting for its volume, a Job running or suspended by a queue).
- DEGRADED: will not get there without a person, but may recover (a crash-looping container,
  an image that cannot be pulled, a rollout past its progress deadline, a paused rollout).
- FAILED: terminal; the object has to be replaced (a failed Job, a failed Pod, a lost claim).
- UNKNOWN: cannot be judged: the node stopped reporting (Pod phase ``Unknown``), or the object
  lacks ``kind``/``apiVersion`` (list items come without them: the caller fills them in).

Kinds: Deployment, StatefulSet, DaemonSet (``apps``), Job (``batch``), Pod and
PersistentVolumeClaim (core) and CustomResourceDefinition (``apiextensions.k8s.io``) have rules.
**Every other kind is READY as soon as it exists** (reason ``NoHealthRules``): a ConfigMap, a
Service or a Role has no health beyond having been stored. Any object with
``metadata.deletionTimestamp`` is PROGRESSING (``Terminating``), whatever its kind.

Time: ``now`` is only used to decide that a Pod which has been unschedulable or running but
not ready for longer than ``NOT_READY_GRACE`` is DEGRADED rather than PROGRESSING, measured from
its condition's ``lastTransitionTime``. Without ``now`` no rule depends on time. The module never
reads a clock.

Does not: talk to the API server, look at events or at an object's children (a StatefulSet
whose pod crash-loops stays PROGRESSING; the pod's own verdict says why), or log.

Invariants: ``assess`` is total: any mapping, however malformed, gets a ``Health`` and never an
exception (fields of the wrong type count as missing). Messages are one line.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class HealthStatus(enum.Enum):
    """The verdict on one object; values are the words used in status lines."""

    READY = "ready"
    PROGRESSING = "progressing"
    UNKNOWN = "unknown"
    DEGRADED = "degraded"
    FAILED = "failed"

    @property
    def severity(self) -> int:
        """Rank for "worst first": READY < PROGRESSING < UNKNOWN < DEGRADED < FAILED."""
        return _SEVERITY[self]


_SEVERITY = {
    HealthStatus.READY: 0,
    HealthStatus.PROGRESSING: 1,
    HealthStatus.UNKNOWN: 2,
    HealthStatus.DEGRADED: 3,
    HealthStatus.FAILED: 4,
}


@dataclass(frozen=True, slots=True)
class Health:
    """One object's verdict.

    ``reason`` is CamelCase: either the API server's own (``ProgressDeadlineExceeded``,
    ``BackoffLimitExceeded``, ``CrashLoopBackOff``, ``Evicted``) or this module's
    (``ReplicasUnavailable``, ``RolloutInProgress``...). ``message`` is one line for a person
    and starts with the object's ``kind/name``.
    """

    status: HealthStatus
    reason: str
    message: str


#: A pod unschedulable, or running but not ready, for longer than this is DEGRADED (only
#: when ``now`` is given). Five minutes covers image pulls and slow starts on edge hardware;
#: a readiness probe failing for longer is worth a person's look.
NOT_READY_GRACE = dt.timedelta(minutes=5)

#: Container waiting reasons that do not clear without a change (image, config, code).
#: The kubelet retries them with backoff, so they are DEGRADED rather than FAILED.
STUCK_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def assess(obj: Mapping[str, Any], *, now: dt.datetime | None = None) -> Health:
    """The health of one live object (see the module docstring for the rules)."""
    kind = _str(obj, "kind")
    api_version = _str(obj, "apiVersion")
    metadata = _map(obj, "metadata")
    name = _str(metadata, "name") or "<unnamed>"
    if not kind or not api_version:
        return Health(
            HealthStatus.UNKNOWN,
            "MissingTypeMeta",
            f"object {name} has no kind or apiVersion: cannot tell which rules apply",
        )
    ref = f"{kind.lower()}/{name}"
    if metadata.get("deletionTimestamp"):
        return Health(HealthStatus.PROGRESSING, "Terminating", f"{ref} terminating")
    group = api_version.rpartition("/")[0]
    rule = _RULES.get((group, kind))
    if rule is None:
        return Health(HealthStatus.READY, "NoHealthRules", f"{ref} exists")
    return _one_line(rule(_Obj(ref, metadata, _map(obj, "spec"), _map(obj, "status"), now)))


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """Many verdicts folded for a status line.

    ``counts`` holds every status, worst first (zeros included); ``worst`` holds up to the
    requested number of entries that are not READY, worst first, then by key.
    """

    total: int
    worst_status: HealthStatus
    counts: tuple[tuple[HealthStatus, int], ...]
    worst: tuple[tuple[str, Health], ...]

    def count(self, status: HealthStatus) -> int:
        """How many objects have ``status``."""
        return dict(self.counts)[status]

    def line(self) -> str:
        """E.g. ``1 degraded: deployment/web 1/3 ready``, ``43 ready``, ``no objects``."""
        if self.total == 0:
            return "no objects"
        not_ready = self.total - self.count(HealthStatus.READY)
        if not_ready == 0:
            return f"{self.total} ready"
        head = ", ".join(
            f"{n} {status.value}"
            for status, n in self.counts
            if n and status is not HealthStatus.READY
        )
        messages = [health.message for _, health in self.worst]
        if not_ready > len(messages):
            messages.append(f"{not_ready - len(messages)} more")
        return f"{head}: {'; '.join(messages)}"


def summarize(healths: Iterable[tuple[str, Health]], *, limit: int = 3) -> HealthSummary:
    """Fold ``(key, health)`` pairs; ``key`` identifies the object and orders ties."""
    entries = sorted(healths, key=lambda entry: (-entry[1].status.severity, entry[0]))
    order = sorted(HealthStatus, key=lambda status: -status.severity)
    counts = tuple(
        (status, sum(1 for _, health in entries if health.status is status)) for status in order
    )
    worst_status = entries[0][1].status if entries else HealthStatus.READY
    not_ready = [entry for entry in entries if entry[1].status is not HealthStatus.READY]
    return HealthSummary(
        total=len(entries),
        worst_status=worst_status,
        counts=counts,
        worst=tuple(not_ready[: max(limit, 0)]),
    )


# -- reading plain dicts defensively ------------------------------------------------------------


def _map(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(obj: Mapping[str, Any], key: str) -> int:
    """A status counter; the API server omits zero counters."""
    return _int(obj, key) or 0


def _maps(obj: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class _Condition:
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str
    last_transition: dt.datetime | None

    @property
    def true(self) -> bool:
        return self.status == "True"

    @property
    def false(self) -> bool:
        return self.status == "False"


@dataclass(frozen=True, slots=True)
class _Obj:
    ref: str
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    now: dt.datetime | None

    def condition(self, type_: str) -> _Condition | None:
        for item in _maps(self.status, "conditions"):
            if item.get("type") == type_:
                return _Condition(
                    status=_str(item, "status") or "Unknown",
                    reason=_str(item, "reason") or "",
                    message=_str(item, "message") or "",
                    last_transition=_time(_str(item, "lastTransitionTime")),
                )
        return None

    def stale(self) -> Health | None:
        """PROGRESSING while the controller has not observed the current generation."""
        observed = _int(self.status, "observedGeneration")
        if observed is None:
            return Health(
                HealthStatus.PROGRESSING,
                "NotObserved",
                f"{self.ref} not yet observed by its controller",
            )
        generation = _int(self.metadata, "generation")
        if generation is not None and observed < generation:
            return Health(
                HealthStatus.PROGRESSING,
                "ObservedGenerationStale",
                f"{self.ref} generation {generation} not yet observed (controller at {observed})",
            )
        return None

    def stuck_since(self, since: dt.datetime | None) -> bool:
        """Whether a not-ready state that began at ``since`` has outlasted the grace period."""
        if self.now is None or since is None:
            return False
        return self.now - since > NOT_READY_GRACE


def _one_line(health: Health) -> Health:
    message = " ".join(health.message.split())
    return health if message == health.message else Health(health.status, health.reason, message)


def _with_detail(message: str, detail: str) -> str:
    return f"{message}: {detail}" if detail else message


# -- rules per kind -----------------------------------------------------------------------------


def _deployment(o: _Obj) -> Health:
    stale = o.stale()
    if stale is not None:
        return stale
    desired = _int(o.spec, "replicas")
    desired = 1 if desired is None else desired
    total = _count(o.status, "replicas")
    updated = _count(o.status, "updatedReplicas")
    ready = _count(o.status, "readyReplicas")
    available = _count(o.status, "availableReplicas")
    counts = f"{o.ref} {ready}/{desired} ready"
    progressing = o.condition("Progressing")
    if progressing and progressing.false and progressing.reason == "ProgressDeadlineExceeded":
        return Health(
            HealthStatus.DEGRADED,
            "ProgressDeadlineExceeded",
            f"{counts}, progress deadline exceeded",
        )
    failure = o.condition("ReplicaFailure")
    if failure and failure.true:
        return Health(
            HealthStatus.DEGRADED,
            failure.reason or "ReplicaFailure",
            _with_detail(counts, failure.message),
        )
    complete = updated >= desired and total <= updated and available >= desired
    if o.spec.get("paused") is True:
        if complete:
            return Health(HealthStatus.READY, "Paused", f"{counts}, paused")
        # Only a person resumes a paused rollout: it will not finish by itself.
        return Health(
            HealthStatus.DEGRADED,
            "Paused",
            f"{counts}, {updated}/{desired} updated, paused mid-rollout",
        )
    if updated < desired:
        return Health(
            HealthStatus.PROGRESSING, "RolloutInProgress", f"{o.ref} {updated}/{desired} updated"
        )
    if total > updated:
        return Health(
            HealthStatus.PROGRESSING,
            "OldReplicasPending",
            f"{o.ref} {total - updated} old replicas pending termination",
        )
    if available < desired:
        available_condition = o.condition("Available")
        # A rollout that had completed and then lost its pods has no deadline left to run
        # out: the controller keeps reason NewReplicaSetAvailable. Available=False is then
        # the controller saying fewer than the minimum are up.
        if (
            available_condition is not None
            and available_condition.false
            and progressing is not None
            and progressing.reason == "NewReplicaSetAvailable"
        ):
            return Health(HealthStatus.DEGRADED, "ReplicasUnavailable", counts)
        return Health(HealthStatus.PROGRESSING, "ReplicasUnavailable", counts)
    if desired == 0:
        return Health(HealthStatus.READY, "ScaledToZero", f"{o.ref} scaled to zero")
    return Health(HealthStatus.READY, "Available", counts)


def _statefulset(o: _Obj) -> Health:
    stale = o.stale()
    if stale is not None:
        return stale
    desired = _int(o.spec, "replicas")
    desired = 1 if desired is None else desired
    total = _count(o.status, "replicas")
    ready = _count(o.status, "readyReplicas")
    updated = _count(o.status, "updatedReplicas")
    counts = f"{o.ref} {ready}/{desired} ready"
    if total > desired:
        return Health(
            HealthStatus.PROGRESSING, "ScalingDown", f"{o.ref} {total} replicas, {desired} desired"
        )
    if ready < desired:
        return Health(HealthStatus.PROGRESSING, "ReplicasNotReady", counts)
    strategy = _map(o.spec, "updateStrategy")
    if (_str(strategy, "type") or "RollingUpdate") == "RollingUpdate":
        partition = _count(_map(strategy, "rollingUpdate"), "partition")
        if partition > 0:
            # A partitioned (staged) rollout is done once the pods above the partition are
            # updated; the revisions legitimately differ until the partition is lowered.
            target = max(desired - partition, 0)
            if updated < target:
                return Health(
                    HealthStatus.PROGRESSING,
                    "RolloutInProgress",
                    f"{o.ref} {updated}/{target} updated above partition {partition}",
                )
            return Health(
                HealthStatus.READY, "PartitionRolledOut", f"{counts}, partition {partition}"
            )
        if updated < desired:
            return Health(
                HealthStatus.PROGRESSING,
                "RolloutInProgress",
                f"{o.ref} {updated}/{desired} updated",
            )
        current_revision = _str(o.status, "currentRevision")
        update_revision = _str(o.status, "updateRevision")
        if update_revision and current_revision != update_revision:
            return Health(
                HealthStatus.PROGRESSING,
                "RolloutInProgress",
                f"{o.ref} rolling from revision {current_revision} to {update_revision}",
            )
    if desired == 0:
        return Health(HealthStatus.READY, "ScaledToZero", f"{o.ref} scaled to zero")
    return Health(HealthStatus.READY, "Ready", counts)


def _daemonset(o: _Obj) -> Health:
    stale = o.stale()
    if stale is not None:
        return stale
    desired = _count(o.status, "desiredNumberScheduled")
    scheduled = _count(o.status, "currentNumberScheduled")
    updated = _count(o.status, "updatedNumberScheduled")
    ready = _count(o.status, "numberReady")
    available = _count(o.status, "numberAvailable")
    unavailable = _count(o.status, "numberUnavailable")
    if desired == 0:
        return Health(HealthStatus.READY, "NoNodes", f"{o.ref} matches no nodes")
    if scheduled < desired:
        return Health(
            HealthStatus.PROGRESSING, "PodsNotScheduled", f"{o.ref} {scheduled}/{desired} scheduled"
        )
    strategy = _str(_map(o.spec, "updateStrategy"), "type") or "RollingUpdate"
    if strategy == "RollingUpdate" and updated < desired:
        return Health(
            HealthStatus.PROGRESSING, "RolloutInProgress", f"{o.ref} {updated}/{desired} updated"
        )
    counts = f"{o.ref} {ready}/{desired} ready"
    if ready < desired or available < desired or unavailable > 0:
        return Health(HealthStatus.PROGRESSING, "PodsNotReady", counts)
    return Health(HealthStatus.READY, "Ready", counts)


def _job(o: _Obj) -> Health:
    for terminal in ("Failed", "FailureTarget"):
        failed = o.condition(terminal)
        if failed and failed.true:
            return Health(
                HealthStatus.FAILED,
                failed.reason or "JobFailed",
                _with_detail(f"{o.ref} failed", failed.message),
            )
    succeeded = _count(o.status, "succeeded")
    complete = o.condition("Complete")
    if complete and complete.true:
        return Health(HealthStatus.READY, "Complete", f"{o.ref} complete, {succeeded} succeeded")
    suspended = o.condition("Suspended")
    if o.spec.get("suspend") is True or (suspended and suspended.true):
        return Health(HealthStatus.PROGRESSING, "Suspended", f"{o.ref} suspended")
    if not o.status.get("startTime"):
        return Health(HealthStatus.PROGRESSING, "NotStarted", f"{o.ref} not started yet")
    active = _count(o.status, "active")
    failed_pods = _count(o.status, "failed")
    completions = _int(o.spec, "completions")
    of = f"/{completions}" if completions is not None else ""
    return Health(
        HealthStatus.PROGRESSING,
        "Running",
        f"{o.ref} {active} active, {succeeded}{of} succeeded, {failed_pods} failed",
    )


def _pod(o: _Obj) -> Health:
    phase = _str(o.status, "phase")
    containers = _maps(o.status, "initContainerStatuses") + _maps(o.status, "containerStatuses")
    restarts = sum(_count(c, "restartCount") for c in containers)
    if phase == "Succeeded":
        return Health(HealthStatus.READY, "Succeeded", f"{o.ref} succeeded")
    if phase == "Failed":
        return Health(
            HealthStatus.FAILED,
            _str(o.status, "reason") or "PodFailed",
            _with_detail(f"{o.ref} failed", _str(o.status, "message") or ""),
        )
    if phase == "Unknown":
        return Health(
            HealthStatus.UNKNOWN,
            "PodPhaseUnknown",
            f"{o.ref} state unknown: its node stopped reporting",
        )
    if phase not in (None, "Pending", "Running"):
        return Health(HealthStatus.UNKNOWN, "UnknownPhase", f"{o.ref} in unexpected phase {phase}")
    for container in containers:
        waiting = _map(_map(container, "state"), "waiting")
        reason = _str(waiting, "reason")
        if reason in STUCK_WAITING_REASONS:
            return Health(HealthStatus.DEGRADED, reason, _stuck_container(o.ref, container, reason))
    if phase is None or phase == "Pending":
        scheduled = o.condition("PodScheduled")
        if scheduled and scheduled.false and scheduled.reason == "Unschedulable":
            status = (
                HealthStatus.DEGRADED
                if o.stuck_since(scheduled.last_transition)
                else HealthStatus.PROGRESSING
            )
            return Health(
                status, "Unschedulable", _with_detail(f"{o.ref} unschedulable", scheduled.message)
            )
        return Health(HealthStatus.PROGRESSING, "Pending", f"{o.ref} pending")
    restarted = f", {restarts} restarts" if restarts else ""
    ready = o.condition("Ready")
    if ready and ready.true:
        return Health(HealthStatus.READY, "Ready", f"{o.ref} running, ready{restarted}")
    regular = _maps(o.status, "containerStatuses")
    ready_containers = sum(1 for c in regular if c.get("ready") is True)
    status = (
        HealthStatus.DEGRADED
        if o.stuck_since(ready.last_transition if ready else None)
        else (HealthStatus.PROGRESSING)
    )
    return Health(
        status,
        "ContainersNotReady",
        f"{o.ref} running, {ready_containers}/{len(regular)} containers ready{restarted}",
    )


def _stuck_container(ref: str, container: Mapping[str, Any], reason: str) -> str:
    name = _str(container, "name") or "?"
    details = []
    restarts = _count(container, "restartCount")
    if restarts:
        details.append(f"{restarts} restarts")
    last = _map(_map(container, "lastState"), "terminated")
    if last:
        exit_code = _int(last, "exitCode")
        last_reason = _str(last, "reason") or "terminated"
        details.append(
            f"last {last_reason}" + (f" exit {exit_code}" if exit_code is not None else "")
        )
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        details.append(f"image {_str(container, 'image') or '?'}")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{ref} container {name} {reason}{suffix}"


def _persistentvolumeclaim(o: _Obj) -> Health:
    phase = _str(o.status, "phase") or "Pending"
    volume = _str(o.spec, "volumeName")
    if phase == "Bound":
        return Health(HealthStatus.READY, "Bound", f"{o.ref} bound to {volume or 'a volume'}")
    if phase == "Pending":
        return Health(HealthStatus.PROGRESSING, "Pending", f"{o.ref} waiting for a volume")
    if phase == "Lost":
        return Health(
            HealthStatus.FAILED, "ClaimLost", f"{o.ref} lost its volume {volume or ''}".rstrip()
        )
    return Health(HealthStatus.UNKNOWN, "UnknownPhase", f"{o.ref} in unexpected phase {phase}")


def _customresourcedefinition(o: _Obj) -> Health:
    names = o.condition("NamesAccepted")
    if names and names.false:
        # A name conflict with another CRD: retried, but only a person can resolve it.
        return Health(
            HealthStatus.DEGRADED,
            names.reason or "NamesNotAccepted",
            _with_detail(f"{o.ref} names not accepted", names.message),
        )
    established = o.condition("Established")
    if established and established.true and names and names.true:
        return Health(HealthStatus.READY, "Established", f"{o.ref} established")
    return Health(HealthStatus.PROGRESSING, "NotEstablished", f"{o.ref} not yet established")


_RULES: dict[tuple[str, str], Callable[[_Obj], Health]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("batch", "Job"): _job,
    ("", "Pod"): _pod,
    ("", "PersistentVolumeClaim"): _persistentvolumeclaim,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _customresourcedefinition,
}
