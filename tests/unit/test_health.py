"""Health assessment of live objects, written as a real API server returns them."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from edge_agent.reconcile.health import (
    NOT_READY_GRACE,
    Health,
    HealthStatus,
    assess,
    summarize,
)

READY = HealthStatus.READY
PROGRESSING = HealthStatus.PROGRESSING
DEGRADED = HealthStatus.DEGRADED
FAILED = HealthStatus.FAILED
UNKNOWN = HealthStatus.UNKNOWN

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
RECENT = "2026-03-01T11:59:00Z"  # a minute before NOW
LONG_AGO = "2026-03-01T11:00:00Z"  # an hour before NOW
T0 = "2026-03-01T10:00:00Z"


def cond(
    type_: str, status: str, reason: str = "", message: str = "", at: str = T0
) -> dict[str, Any]:
    condition = {"type": type_, "status": status, "lastTransitionTime": at}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def meta(name: str, generation: int | None = 1) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": "0b6a1f9e-2c1d-4f7a-9d3e-5a8b7c6d4e21",
        "resourceVersion": "48213",
        "creationTimestamp": T0,
        "labels": {"app.kubernetes.io/managed-by": "edge-agent"},
    }
    if generation is not None:
        metadata["generation"] = generation
    return metadata


def deployment(
    status: dict[str, Any] | None,
    *,
    replicas: int | None = 3,
    generation: int = 2,
    paused: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
        },
        "progressDeadlineSeconds": 600,
        "revisionHistoryLimit": 10,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    if paused:
        spec["paused"] = True
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta("web", generation),
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


PROGRESSING_DONE = cond(
    "Progressing",
    "True",
    "NewReplicaSetAvailable",
    'ReplicaSet "web-7c9f" has successfully progressed.',
)
PROGRESSING_UPDATING = cond(
    "Progressing", "True", "ReplicaSetUpdated", 'ReplicaSet "web-7c9f" is progressing.'
)
AVAILABLE = cond(
    "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
)
UNAVAILABLE = cond(
    "Available",
    "False",
    "MinimumReplicasUnavailable",
    "Deployment does not have minimum availability.",
)


def deploy_status(*conditions: dict[str, Any], observed: int = 2, **counts: int) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "conditions": list(conditions)}
    status.update(counts)
    return status


DEPLOYMENTS = [
    ("just created, no status", deployment(None), PROGRESSING, "NotObserved"),
    (
        "new spec not yet observed",
        deployment(
            deploy_status(
                AVAILABLE,
                PROGRESSING_DONE,
                observed=1,
                replicas=3,
                updatedReplicas=3,
                readyReplicas=3,
                availableReplicas=3,
            )
        ),
        PROGRESSING,
        "ObservedGenerationStale",
    ),
    (
        "all replicas available",
        deployment(
            deploy_status(
                AVAILABLE,
                PROGRESSING_DONE,
                replicas=3,
                updatedReplicas=3,
                readyReplicas=3,
                availableReplicas=3,
            )
        ),
        READY,
        "Available",
    ),
    (
        "default of one replica",
        deployment(
            deploy_status(
                AVAILABLE,
                PROGRESSING_DONE,
                replicas=1,
                updatedReplicas=1,
                readyReplicas=1,
                availableReplicas=1,
            ),
            replicas=None,
        ),
        READY,
        "Available",
    ),
    (
        "scaled to zero: the server omits zero counters",
        deployment(deploy_status(AVAILABLE, PROGRESSING_DONE), replicas=0),
        READY,
        "ScaledToZero",
    ),
    (
        "rollout updating replicas",
        deployment(
            deploy_status(
                AVAILABLE,
                PROGRESSING_UPDATING,
                replicas=4,
                updatedReplicas=1,
                readyReplicas=3,
                availableReplicas=3,
                unavailableReplicas=1,
            )
        ),
        PROGRESSING,
        "RolloutInProgress",
    ),
    (
        "old replicas still terminating",
        deployment(
            deploy_status(
                AVAILABLE,
                PROGRESSING_UPDATING,
                replicas=4,
                updatedReplicas=3,
                readyReplicas=3,
                availableReplicas=3,
            )
        ),
        PROGRESSING,
        "OldReplicasPending",
    ),
    (
        "first rollout, pods starting",
        deployment(
            deploy_status(
                UNAVAILABLE,
                PROGRESSING_UPDATING,
                replicas=3,
                updatedReplicas=3,
                readyReplicas=1,
                availableReplicas=1,
                unavailableReplicas=2,
            )
        ),
        PROGRESSING,
        "ReplicasUnavailable",
    ),
    (
        "completed rollout then lost pods",
        deployment(
            deploy_status(
                UNAVAILABLE,
                PROGRESSING_DONE,
                replicas=3,
                updatedReplicas=3,
                readyReplicas=1,
                availableReplicas=1,
                unavailableReplicas=2,
            )
        ),
        DEGRADED,
        "ReplicasUnavailable",
    ),
    (
        "progress deadline exceeded",
        deployment(
            deploy_status(
                UNAVAILABLE,
                cond(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    'ReplicaSet "web-7c9f" has timed out progressing.',
                ),
                replicas=3,
                updatedReplicas=3,
                readyReplicas=1,
                availableReplicas=1,
                unavailableReplicas=2,
            )
        ),
        DEGRADED,
        "ProgressDeadlineExceeded",
    ),
    (
        "replica failure (quota)",
        deployment(
            deploy_status(
                UNAVAILABLE,
                PROGRESSING_UPDATING,
                cond(
                    "ReplicaFailure",
                    "True",
                    "FailedCreate",
                    'pods "web-7c9f-x" is forbidden: exceeded quota: compute',
                ),
                replicas=1,
                updatedReplicas=1,
            )
        ),
        DEGRADED,
        "FailedCreate",
    ),
    (
        "paused mid-rollout",
        deployment(
            deploy_status(
                AVAILABLE,
                cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"),
                replicas=3,
                updatedReplicas=1,
                readyReplicas=3,
                availableReplicas=3,
            ),
            paused=True,
        ),
        DEGRADED,
        "Paused",
    ),
    (
        "paused after a complete rollout",
        deployment(
            deploy_status(
                AVAILABLE,
                cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"),
                replicas=3,
                updatedReplicas=3,
                readyReplicas=3,
                availableReplicas=3,
            ),
            paused=True,
        ),
        READY,
        "Paused",
    ),
]


def statefulset(
    status: dict[str, Any] | None, *, replicas: int = 3, strategy: dict[str, Any] | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta("db", 3),
        "spec": {
            "replicas": replicas,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "updateStrategy": strategy
            or {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "podManagementPolicy": "OrderedReady",
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def sts_status(
    observed: int = 3, current: str = "db-5d8f", update: str = "db-5d8f", **counts: int
) -> dict[str, Any]:
    return {
        "observedGeneration": observed,
        "currentRevision": current,
        "updateRevision": update,
        "collisionCount": 0,
        "availableReplicas": counts.get("readyReplicas", 0),
        **counts,
    }


STATEFULSETS = [
    ("just created", statefulset(None), PROGRESSING, "NotObserved"),
    (
        "not observed",
        statefulset(
            sts_status(
                observed=2, replicas=3, readyReplicas=3, currentReplicas=3, updatedReplicas=3
            )
        ),
        PROGRESSING,
        "ObservedGenerationStale",
    ),
    (
        "all ready",
        statefulset(sts_status(replicas=3, readyReplicas=3, currentReplicas=3, updatedReplicas=3)),
        READY,
        "Ready",
    ),
    ("scaled to zero", statefulset(sts_status(), replicas=0), READY, "ScaledToZero"),
    (
        "scaling down",
        statefulset(
            sts_status(replicas=3, readyReplicas=3, currentReplicas=3, updatedReplicas=3),
            replicas=1,
        ),
        PROGRESSING,
        "ScalingDown",
    ),
    (
        "pods not ready",
        statefulset(sts_status(replicas=3, readyReplicas=1, currentReplicas=3, updatedReplicas=3)),
        PROGRESSING,
        "ReplicasNotReady",
    ),
    (
        "rolling update under way",
        statefulset(
            sts_status(
                update="db-6a1b", replicas=3, readyReplicas=3, currentReplicas=2, updatedReplicas=1
            )
        ),
        PROGRESSING,
        "RolloutInProgress",
    ),
    (
        "all updated, revision not yet moved",
        statefulset(
            sts_status(
                update="db-6a1b", replicas=3, readyReplicas=3, currentReplicas=0, updatedReplicas=3
            )
        ),
        PROGRESSING,
        "RolloutInProgress",
    ),
    (
        "partition not yet rolled",
        statefulset(
            sts_status(update="db-6a1b", replicas=3, readyReplicas=3, currentReplicas=3),
            strategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        ),
        PROGRESSING,
        "RolloutInProgress",
    ),
    (
        "partition rolled",
        statefulset(
            sts_status(
                update="db-6a1b", replicas=3, readyReplicas=3, currentReplicas=2, updatedReplicas=1
            ),
            strategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        ),
        READY,
        "PartitionRolledOut",
    ),
    (
        "OnDelete ignores revisions",
        statefulset(
            sts_status(update="db-6a1b", replicas=3, readyReplicas=3, currentReplicas=3),
            strategy={"type": "OnDelete"},
        ),
        READY,
        "Ready",
    ),
]


def daemonset(status: dict[str, Any] | None, *, strategy: str = "RollingUpdate") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta("node-exporter", 1),
        "spec": {
            "selector": {"matchLabels": {"app": "node-exporter"}},
            "updateStrategy": {"type": strategy},
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def ds_status(observed: int = 1, **counts: int) -> dict[str, Any]:
    return {"observedGeneration": observed, "numberMisscheduled": 0, **counts}


DS_FULL = {
    "desiredNumberScheduled": 3,
    "currentNumberScheduled": 3,
    "updatedNumberScheduled": 3,
    "numberReady": 3,
    "numberAvailable": 3,
}

DAEMONSETS = [
    ("just created", daemonset(None), PROGRESSING, "NotObserved"),
    (
        "not observed",
        daemonset(ds_status(observed=0, **DS_FULL)),
        PROGRESSING,
        "ObservedGenerationStale",
    ),
    ("ready on every node", daemonset(ds_status(**DS_FULL)), READY, "Ready"),
    ("matches no node", daemonset(ds_status()), READY, "NoNodes"),
    (
        "not yet scheduled everywhere",
        daemonset(ds_status(**{**DS_FULL, "currentNumberScheduled": 2})),
        PROGRESSING,
        "PodsNotScheduled",
    ),
    (
        "rolling update",
        daemonset(ds_status(**{**DS_FULL, "updatedNumberScheduled": 1})),
        PROGRESSING,
        "RolloutInProgress",
    ),
    (
        "OnDelete ignores updated count",
        daemonset(ds_status(**{**DS_FULL, "updatedNumberScheduled": 1}), strategy="OnDelete"),
        READY,
        "Ready",
    ),
    (
        "pods not ready",
        daemonset(
            ds_status(**{**DS_FULL, "numberReady": 2, "numberAvailable": 2, "numberUnavailable": 1})
        ),
        PROGRESSING,
        "PodsNotReady",
    ),
    (
        "unavailable counted alone",
        daemonset(ds_status(**{**DS_FULL, "numberUnavailable": 1})),
        PROGRESSING,
        "PodsNotReady",
    ),
]


def job(
    status: dict[str, Any] | None, *, completions: int | None = 3, suspend: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": 6,
        "parallelism": 1,
        "suspend": suspend,
        "completionMode": "NonIndexed",
    }
    if completions is not None:
        spec["completions"] = completions
    obj: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("migrate", 1),
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


JOBS = [
    ("just created", job(None), PROGRESSING, "NotStarted"),
    (
        "running",
        job(
            {
                "startTime": T0,
                "active": 1,
                "succeeded": 1,
                "ready": 1,
                "uncountedTerminatedPods": {},
            }
        ),
        PROGRESSING,
        "Running",
    ),
    (
        "running, work queue without completions",
        job({"startTime": T0, "active": 2}, completions=None),
        PROGRESSING,
        "Running",
    ),
    (
        "suspended by a queue",
        job(
            {"conditions": [cond("Suspended", "True", "JobSuspended", "Job suspended")]},
            suspend=True,
        ),
        PROGRESSING,
        "Suspended",
    ),
    (
        "complete",
        job(
            {
                "startTime": T0,
                "completionTime": RECENT,
                "succeeded": 3,
                "conditions": [
                    cond(
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    cond(
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                ],
            }
        ),
        READY,
        "Complete",
    ),
    (
        "backoff limit exceeded",
        job(
            {
                "startTime": T0,
                "failed": 7,
                "conditions": [
                    cond(
                        "FailureTarget",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                    cond(
                        "Failed",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ],
            }
        ),
        FAILED,
        "BackoffLimitExceeded",
    ),
    (
        "failure target reached, pods still terminating",
        job(
            {
                "startTime": T0,
                "failed": 1,
                "active": 1,
                "conditions": [
                    cond(
                        "FailureTarget",
                        "True",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    )
                ],
            }
        ),
        FAILED,
        "DeadlineExceeded",
    ),
]


def container_status(
    name: str = "app",
    *,
    ready: bool = True,
    restarts: int = 0,
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.local/web:1.4.2",
        "imageID": "registry.local/web@sha256:"
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "containerID": "containerd://4b1e",
        "ready": ready,
        "started": ready,
        "restartCount": restarts,
        "state": state or {"running": {"startedAt": T0}},
        "lastState": last or {},
    }


def pod(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta("web-7c9f-abcde", None),
        "spec": {
            "containers": [{"name": "app", "image": "registry.local/web:1.4.2"}],
            "nodeName": "edge-1",
            "restartPolicy": "Always",
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


POD_SCHEDULED = cond("PodScheduled", "True")
CRASHING = container_status(
    ready=False,
    restarts=5,
    state={
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": "back-off 2m40s restarting failed container=app "
            "pod=web-7c9f-abcde_default(0b6a)",
        }
    },
    last={"terminated": {"exitCode": 1, "reason": "Error", "startedAt": T0, "finishedAt": T0}},
)


def waiting(reason: str) -> dict[str, Any]:
    return container_status(
        ready=False,
        state={"waiting": {"reason": reason, "message": f"{reason} for registry.local/web:1.4.2"}},
    )


def running(ready_at: str, *containers: dict[str, Any], ready: str = "True") -> dict[str, Any]:
    return {
        "phase": "Running",
        "conditions": [
            POD_SCHEDULED,
            cond("Initialized", "True"),
            cond("ContainersReady", ready, at=ready_at),
            cond("Ready", ready, at=ready_at),
        ],
        "hostIP": "10.0.0.5",
        "podIP": "10.42.0.17",
        "startTime": T0,
        "containerStatuses": list(containers) or [container_status()],
        "qosClass": "BestEffort",
    }


UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)

PODS = [
    ("just created, no status", pod(None), PROGRESSING, "Pending"),
    (
        "pending, scheduled, pulling",
        pod({"phase": "Pending", "conditions": [POD_SCHEDULED], "startTime": T0}),
        PROGRESSING,
        "Pending",
    ),
    (
        "unschedulable for a minute",
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    cond("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE, at=RECENT)
                ],
            }
        ),
        PROGRESSING,
        "Unschedulable",
    ),
    (
        "unschedulable for an hour",
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    cond("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE, at=LONG_AGO)
                ],
            }
        ),
        DEGRADED,
        "Unschedulable",
    ),
    (
        "image pull backoff while pending",
        pod(
            {
                "phase": "Pending",
                "conditions": [POD_SCHEDULED],
                "containerStatuses": [waiting("ImagePullBackOff")],
            }
        ),
        DEGRADED,
        "ImagePullBackOff",
    ),
    (
        "err image pull",
        pod(
            {
                "phase": "Pending",
                "conditions": [POD_SCHEDULED],
                "containerStatuses": [waiting("ErrImagePull")],
            }
        ),
        DEGRADED,
        "ErrImagePull",
    ),
    (
        "missing config map",
        pod(
            {
                "phase": "Pending",
                "conditions": [POD_SCHEDULED],
                "containerStatuses": [waiting("CreateContainerConfigError")],
            }
        ),
        DEGRADED,
        "CreateContainerConfigError",
    ),
    (
        "container creating is normal",
        pod(
            {
                "phase": "Pending",
                "conditions": [POD_SCHEDULED],
                "containerStatuses": [waiting("ContainerCreating")],
            }
        ),
        PROGRESSING,
        "Pending",
    ),
    (
        "init container crash looping",
        pod(
            {"phase": "Pending", "conditions": [POD_SCHEDULED], "initContainerStatuses": [CRASHING]}
        ),
        DEGRADED,
        "CrashLoopBackOff",
    ),
    ("running and ready", pod(running(T0)), READY, "Ready"),
    (
        "running and ready after restarts",
        pod(running(T0, container_status(restarts=2))),
        READY,
        "Ready",
    ),
    (
        "crash loop back off",
        pod(running(T0, CRASHING, ready="False")),
        DEGRADED,
        "CrashLoopBackOff",
    ),
    (
        "running, not ready for a minute",
        pod(running(RECENT, container_status(ready=False), ready="False")),
        PROGRESSING,
        "ContainersNotReady",
    ),
    (
        "running, not ready for an hour",
        pod(running(LONG_AGO, container_status(ready=False), ready="False")),
        DEGRADED,
        "ContainersNotReady",
    ),
    ("succeeded", pod({"phase": "Succeeded", "conditions": [POD_SCHEDULED]}), READY, "Succeeded"),
    (
        "evicted",
        pod(
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
            }
        ),
        FAILED,
        "Evicted",
    ),
    ("failed without a reason", pod({"phase": "Failed"}), FAILED, "PodFailed"),
    ("node lost", pod({"phase": "Unknown"}), UNKNOWN, "PodPhaseUnknown"),
    ("unexpected phase", pod({"phase": "Hibernating"}), UNKNOWN, "UnknownPhase"),
]


def pvc(phase: str | None, volume: str | None = "pvc-4f1c") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "local-path",
        "volumeMode": "Filesystem",
    }
    if volume:
        spec["volumeName"] = volume
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta("data", None),
        "spec": spec,
    }
    if phase is not None:
        obj["status"] = {
            "phase": phase,
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
        }
    return obj


PVCS = [
    ("just created", pvc(None, None), PROGRESSING, "Pending"),
    ("waiting for first consumer", pvc("Pending", None), PROGRESSING, "Pending"),
    ("bound", pvc("Bound"), READY, "Bound"),
    ("lost", pvc("Lost"), FAILED, "ClaimLost"),
    ("unexpected phase", pvc("Resizing"), UNKNOWN, "UnknownPhase"),
]


def crd(*conditions: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {**meta("widgets.example.com", 1), "namespace": None},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [],
        },
    }
    del obj["metadata"]["namespace"]
    if conditions:
        obj["status"] = {
            "conditions": list(conditions),
            "acceptedNames": {"kind": "Widget", "plural": "widgets"},
            "storedVersions": ["v1"],
        }
    return obj


NAMES_OK = cond("NamesAccepted", "True", "NoConflicts", "no conflicts found")
CRDS = [
    ("just created", crd(), PROGRESSING, "NotEstablished"),
    (
        "names accepted, not yet established",
        crd(
            NAMES_OK,
            cond("Established", "False", "Installing", "the initial names have been accepted"),
        ),
        PROGRESSING,
        "NotEstablished",
    ),
    (
        "established",
        crd(
            NAMES_OK,
            cond(
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ),
        READY,
        "Established",
    ),
    (
        "name conflict",
        crd(
            cond("NamesAccepted", "False", "NameConflict", '"widgets" is already in use'),
            cond("Established", "False", "NotAccepted", "not all names are accepted"),
        ),
        DEGRADED,
        "NameConflict",
    ),
]

CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": meta("settings", None),
    "data": {"a": "b"},
}
OTHERS = [
    ("config map has no health", CONFIG_MAP, READY, "NoHealthRules"),
    (
        "service has no health",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta("web", None),
            "spec": {"clusterIP": "10.43.0.10"},
            "status": {"loadBalancer": {}},
        },
        READY,
        "NoHealthRules",
    ),
    (
        "custom resource named Deployment in another group",
        {
            "apiVersion": "example.com/v1",
            "kind": "Deployment",
            "metadata": meta("x", 1),
            "status": {},
        },
        READY,
        "NoHealthRules",
    ),
    (
        "terminating config map",
        {
            **CONFIG_MAP,
            "metadata": {
                **meta("settings", None),
                "deletionTimestamp": RECENT,
                "finalizers": ["example.com/keep"],
            },
        },
        PROGRESSING,
        "Terminating",
    ),
    (
        "terminating deployment",
        {**deployment(None), "metadata": {**meta("web", 2), "deletionTimestamp": RECENT}},
        PROGRESSING,
        "Terminating",
    ),
    (
        "list item without type meta",
        {"metadata": meta("web", 2), "spec": {}, "status": {}},
        UNKNOWN,
        "MissingTypeMeta",
    ),
    (
        "kind without apiVersion",
        {"kind": "Deployment", "metadata": meta("web", 2)},
        UNKNOWN,
        "MissingTypeMeta",
    ),
]

CASES = [
    pytest.param(obj, status, reason, id=f"{kind}: {name}")
    for kind, table in [
        ("deployment", DEPLOYMENTS),
        ("statefulset", STATEFULSETS),
        ("daemonset", DAEMONSETS),
        ("job", JOBS),
        ("pod", PODS),
        ("pvc", PVCS),
        ("crd", CRDS),
        ("other", OTHERS),
    ]
    for name, obj, status, reason in table
]


@pytest.mark.parametrize(("obj", "status", "reason"), CASES)
def test_assess(obj: dict[str, Any], status: HealthStatus, reason: str) -> None:
    before = copy.deepcopy(obj)
    health = assess(obj, now=NOW)
    assert (health.status, health.reason) == (status, reason), health.message
    assert "\n" not in health.message
    assert obj == before  # pure: the object is not touched


@pytest.mark.parametrize(("obj", "status", "reason"), CASES)
def test_assess_without_time_never_degrades_on_time(
    obj: dict[str, Any], status: HealthStatus, reason: str
) -> None:
    health = assess(obj)
    if reason in ("Unschedulable", "ContainersNotReady"):
        assert health.status is PROGRESSING
    else:
        assert (health.status, health.reason) == (status, reason)


def test_grace_boundary_is_exclusive() -> None:
    at = NOW - NOT_READY_GRACE
    obj = pod(
        running(at.strftime("%Y-%m-%dT%H:%M:%SZ"), container_status(ready=False), ready="False")
    )
    assert assess(obj, now=NOW).status is PROGRESSING
    assert assess(obj, now=NOW + dt.timedelta(seconds=1)).status is DEGRADED


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (DEPLOYMENTS[8][1], "deployment/web 1/3 ready"),
        (DEPLOYMENTS[9][1], "deployment/web 1/3 ready, progress deadline exceeded"),
        (DEPLOYMENTS[4][1], "deployment/web scaled to zero"),
        (DEPLOYMENTS[11][1], "deployment/web 3/3 ready, 1/3 updated, paused mid-rollout"),
        (
            DEPLOYMENTS[10][1],
            'deployment/web 0/3 ready: pods "web-7c9f-x" is forbidden: exceeded quota: compute',
        ),
        (
            PODS[11][1],
            "pod/web-7c9f-abcde container app CrashLoopBackOff (5 restarts, last Error exit 1)",
        ),
        (
            PODS[4][1],
            "pod/web-7c9f-abcde container app ImagePullBackOff (image registry.local/web:1.4.2)",
        ),
        (PODS[10][1], "pod/web-7c9f-abcde running, ready, 2 restarts"),
        (PODS[2][1], f"pod/web-7c9f-abcde unschedulable: {UNSCHEDULABLE}"),
        (JOBS[1][1], "job/migrate 1 active, 1/3 succeeded, 0 failed"),
        (JOBS[2][1], "job/migrate 2 active, 0 succeeded, 0 failed"),
        (JOBS[5][1], "job/migrate failed: Job has reached the specified backoff limit"),
        (PVCS[3][1], "persistentvolumeclaim/data lost its volume pvc-4f1c"),
        (STATEFULSETS[6][1], "statefulset/db 1/3 updated"),
        (STATEFULSETS[7][1], "statefulset/db rolling from revision db-5d8f to db-6a1b"),
        (DAEMONSETS[7][1], "daemonset/node-exporter 2/3 ready"),
        (CONFIG_MAP, "configmap/settings exists"),
    ],
)
def test_messages_are_one_line_for_a_person(obj: dict[str, Any], message: str) -> None:
    assert assess(obj, now=NOW).message == message


def test_multi_line_messages_are_folded() -> None:
    obj = job(
        {
            "conditions": [
                cond(
                    "Failed",
                    "True",
                    "PodFailurePolicy",
                    "Container app failed\n  with exit code 42",
                )
            ]
        }
    )
    assert assess(obj).message == "job/migrate failed: Container app failed with exit code 42"


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"kind": 3, "apiVersion": ["v1"]},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": "web",
            "spec": [],
            "status": "ok",
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"generation": True},
            "status": {"observedGeneration": "2", "conditions": "none"},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "phase": "Running",
                "conditions": [None, {"type": "Ready", "lastTransitionTime": "yesterday"}],
                "containerStatuses": [1, {"state": None}],
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "spec": {"completions": "3"},
            "status": {"startTime": T0, "active": 1.5},
        },
    ],
)
def test_malformed_objects_get_a_verdict_not_an_exception(obj: dict[str, Any]) -> None:
    health = assess(obj, now=NOW)
    assert isinstance(health, Health)


# -- summarize ----------------------------------------------------------------------------------


def h(status: HealthStatus, message: str) -> Health:
    return Health(status, "Reason", message)


def test_summary_of_one_degraded_deployment() -> None:
    summary = summarize(
        [
            ("apps/Deployment/default/api", h(READY, "deployment/api 2/2 ready")),
            ("apps/Deployment/default/web", assess(DEPLOYMENTS[8][1], now=NOW)),
            ("v1/ConfigMap/default/settings", assess(CONFIG_MAP)),
        ]
    )
    assert summary.line() == "1 degraded: deployment/web 1/3 ready"
    assert summary.worst_status is DEGRADED
    assert summary.total == 3
    assert summary.count(READY) == 2
    assert summary.count(FAILED) == 0
    assert [status for status, _ in summary.counts] == [
        FAILED,
        DEGRADED,
        UNKNOWN,
        PROGRESSING,
        READY,
    ]


def test_summary_orders_worst_first_then_by_key_and_counts_the_rest() -> None:
    summary = summarize(
        [
            ("d", h(PROGRESSING, "deployment/d 0/1 updated")),
            ("c", h(DEGRADED, "pod/c CrashLoopBackOff")),
            ("b", h(FAILED, "job/b failed")),
            ("a", h(DEGRADED, "pod/a ImagePullBackOff")),
            ("e", h(UNKNOWN, "pod/e state unknown")),
            ("f", h(READY, "configmap/f exists")),
        ],
        limit=3,
    )
    assert [key for key, _ in summary.worst] == ["b", "a", "c"]
    assert summary.worst_status is FAILED
    assert summary.line() == (
        "1 failed, 2 degraded, 1 unknown, 1 progressing: "
        "job/b failed; pod/a ImagePullBackOff; pod/c CrashLoopBackOff; 2 more"
    )


@pytest.mark.parametrize(
    ("healths", "line", "worst"),
    [
        ([], "no objects", READY),
        ([("a", h(READY, "x")), ("b", h(READY, "y"))], "2 ready", READY),
        (
            [("a", h(PROGRESSING, "deployment/a 0/1 updated"))],
            "1 progressing: deployment/a 0/1 updated",
            PROGRESSING,
        ),
    ],
)
def test_summary_lines(healths: list[tuple[str, Health]], line: str, worst: HealthStatus) -> None:
    summary = summarize(iter(healths))
    assert (summary.line(), summary.worst_status) == (line, worst)


def test_summary_with_no_room_for_messages() -> None:
    summary = summarize([("a", h(DEGRADED, "pod/a x"))], limit=0)
    assert summary.line() == "1 degraded: 1 more"


def test_values_are_frozen_and_hashable() -> None:
    summary = summarize([("a", h(DEGRADED, "pod/a x"))])
    assert hash(summary) == hash(summarize([("a", h(DEGRADED, "pod/a x"))]))
    with pytest.raises(AttributeError):
        summary.total = 2  # type: ignore[misc]
