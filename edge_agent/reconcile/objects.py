"""The Kubernetes objects a policy asks for: identity, ownership marks and apply order.

One concept: a *desired object* — a manifest from the policy in force, named by an
``ObjectRef``, carrying the layer it came from and the agent's ownership labels.

Identity. ``ObjectRef`` is (group, kind, namespace, name) without the API version: the API
server serves one stored object under several versions (``autoscaling/v1`` and ``/v2`` of the
same HPA, ``v1beta1`` → ``v1`` after a CRD graduates). Putting the version in the identity
would make a version bump look like "object removed, another added" and the prune would
delete what the agent just applied. The version an object was applied with travels next to
the ref (``DesiredObject.api_version``, ``InventoryEntry.api_version``) because a DELETE or
GET must still name one. The namespace is what the manifest says; ``""`` means cluster-scoped
*or omitted* — this module does not know which kinds are namespaced (that takes discovery,
which is the target's business), so policies should name the namespace of namespaced objects.

Ownership. ``owned`` returns a copy of a manifest labelled ``app.kubernetes.io/managed-by:
edge-agent`` and ``edge-agent.io/layer: <layer>``; ``MANAGED_SELECTOR`` finds exactly those
objects with one LIST per kind. Objects the cluster derives from them (a Deployment's
ReplicaSets and Pods) copy the pod template's labels, not the object's, so they are not
matched. A manifest's own ``managed-by`` label is overridden: the agent must find what it
applied.

Order. ``apply_order`` runs in two phases: every Namespace, then every
CustomResourceDefinition, across all layers (nothing in any layer can be created before its
namespace or its type exists); then, layer by layer in policy order, the other objects by
the kind rank below (Helm's install order and kapp's change groups, condensed), keeping the
policy's order within a rank:

    1  cluster policy and classes: ResourceQuota, LimitRange, PriorityClass, StorageClass,
       IngressClass, RuntimeClass, NetworkPolicy, PodSecurityPolicy
    2  identity and RBAC: ServiceAccount, ClusterRole, Role, ClusterRoleBinding, RoleBinding
    3  configuration and storage: Secret, ConfigMap, PersistentVolume, PersistentVolumeClaim
    4  services: Service, Endpoints, EndpointSlice
    5  workloads: Pod, ReplicationController, ReplicaSet, Deployment, StatefulSet, DaemonSet,
       Job, CronJob
    6  what points at workloads: HorizontalPodAutoscaler, PodDisruptionBudget, Ingress
    7  any other kind (custom resources; their CRDs are already in place)
    8  admission and aggregation: MutatingWebhookConfiguration,
       ValidatingWebhookConfiguration, ValidatingAdmissionPolicy(Binding), APIService — last,
       because a webhook registered before its backend runs would refuse every later write

``delete_order`` is the reverse: highest rank first, CRDs after the custom resources they
define, Namespaces last (deleting a namespace deletes its content anyway).

Does not: talk to a cluster, read the store, decide what to apply or prune (``inventory``),
compare with live objects (``drift``). Pure: no I/O, no clock, never mutates its input.

Invariants: within one policy no two desired objects share a ref (``DuplicateObjectError``);
every ``DesiredObject.manifest`` carries both ownership labels; ``apply_order`` and
``delete_order`` are permutations of their input and deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import PolicyObjectError

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "edge-agent"
LAYER_LABEL = "edge-agent.io/layer"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
"""Label selector matching exactly the objects the agent applied (one LIST per kind)."""

_FIRST = ("Namespace", "CustomResourceDefinition")
_RANKS: dict[str, int] = {
    **dict.fromkeys(
        (
            "ResourceQuota",
            "LimitRange",
            "PriorityClass",
            "StorageClass",
            "IngressClass",
            "RuntimeClass",
            "NetworkPolicy",
            "PodSecurityPolicy",
        ),
        1,
    ),
    **dict.fromkeys(
        ("ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"), 2
    ),
    **dict.fromkeys(("Secret", "ConfigMap", "PersistentVolume", "PersistentVolumeClaim"), 3),
    **dict.fromkeys(("Service", "Endpoints", "EndpointSlice"), 4),
    **dict.fromkeys(
        (
            "Pod",
            "ReplicationController",
            "ReplicaSet",
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
        ),
        5,
    ),
    **dict.fromkeys(("HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"), 6),
    **dict.fromkeys(
        (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "APIService",
        ),
        8,
    ),
}
_OTHER_RANK = 7


class DuplicateObjectError(PolicyObjectError):
    """Two manifests of one policy name the same object; applying both would flip-flop."""

    def __init__(self, ref: ObjectRef, first: str, second: str) -> None:
        super().__init__(f"{ref} is defined twice: in {first} and in {second}")
        self.ref = ref
        self.first = first
        self.second = second


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Which object, independent of the API version it is read or written with."""

    group: str  # "" for the core group
    kind: str
    namespace: str  # "" for cluster-scoped (or omitted) namespaces
    name: str

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{kind} {where}{self.name}"

    @property
    def short(self) -> str:
        """``deployment/web``, as a person reads it in a status line."""
        return f"{self.kind.lower()}/{self.name}"

    def to_json(self) -> dict[str, str]:
        return {
            "group": self.group,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class DesiredObject:
    """One object of the policy in force, ready to apply.

    ``manifest`` is a private copy carrying the ownership labels (see ``owned``); it is what
    is applied and what ``drift.detect`` compares. Not hashable (the manifest is a dict):
    key collections by ``ref``.
    """

    ref: ObjectRef
    api_version: str
    layer: str
    path: str  # manifest file within the bundle, for messages
    manifest: Mapping[str, Any]


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` → ``("apps", "v1")``; ``"v1"`` → ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    """The identity of a manifest or live object.

    Raises ``PolicyObjectError`` when ``apiVersion``, ``kind`` or ``metadata.name`` is not a
    non-empty string (the manifest loader guarantees this for policies; live objects are
    checked here too).
    """
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    for what, value in (("apiVersion", api_version), ("kind", kind), ("metadata.name", name)):
        if not isinstance(value, str) or not value:
            raise PolicyObjectError(f"an object has no {what} (expected a non-empty string)")
    if namespace is not None and not isinstance(namespace, str):
        raise PolicyObjectError(f"{kind} {name}: metadata.namespace is not a string")
    assert isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)
    group, _ = split_api_version(api_version)
    return ObjectRef(group=group, kind=kind, namespace=namespace or "", name=name)


def owned(manifest: Mapping[str, Any], layer: str) -> dict[str, Any]:
    """A deep copy of ``manifest`` with the agent's ownership labels; the input is untouched."""
    result: dict[str, Any] = copy.deepcopy(dict(manifest))
    metadata = dict(result.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    labels[LAYER_LABEL] = layer
    metadata["labels"] = labels
    result["metadata"] = metadata
    return result


def layer_selector(layer: str) -> str:
    """Label selector for the agent's objects of one layer."""
    return f"{MANAGED_SELECTOR},{LAYER_LABEL}={layer}"


def desired_objects(layers: Sequence[Mapping[str, Any]]) -> tuple[DesiredObject, ...]:
    """Flatten the stored policy's layers into desired objects, in policy order.

    ``layers`` is the state store's shape:
    ``[{"name": ..., "manifests": [{"path": ..., "objects": [dict, ...]}, ...]}, ...]``.
    Raises ``DuplicateObjectError`` when a ref occurs twice anywhere in the policy, and
    ``PolicyObjectError`` when an object has no identity.
    """
    seen: dict[ObjectRef, str] = {}
    result: list[DesiredObject] = []
    for layer in layers:
        layer_name = str(layer["name"])
        for manifest in layer["manifests"]:
            path = str(manifest["path"])
            where = f"layer {layer_name!r} file {path!r}"
            for obj in manifest["objects"]:
                ref = ref_of(obj)
                if ref in seen:
                    raise DuplicateObjectError(ref, seen[ref], where)
                seen[ref] = where
                result.append(
                    DesiredObject(
                        ref=ref,
                        api_version=str(obj["apiVersion"]),
                        layer=layer_name,
                        path=path,
                        manifest=owned(obj, layer_name),
                    )
                )
    return tuple(result)


def kind_rank(kind: str) -> int:
    """Apply rank of a kind: 0 for Namespace and CRD, 1..8 as in the module docstring."""
    if kind in _FIRST:
        return 0
    return _RANKS.get(kind, _OTHER_RANK)


def apply_order(objects: Iterable[DesiredObject]) -> tuple[DesiredObject, ...]:
    """Namespaces, then CRDs (all layers), then layer by layer by kind rank; stable."""
    items = list(objects)
    layer_index: dict[str, int] = {}
    for obj in items:
        layer_index.setdefault(obj.layer, len(layer_index))

    def key(pair: tuple[int, DesiredObject]) -> tuple[int, int, int, int]:
        position, obj = pair
        rank = kind_rank(obj.ref.kind)
        if rank == 0:
            return (0, _FIRST.index(obj.ref.kind), 0, position)
        return (1, layer_index[obj.layer], rank, position)

    return tuple(obj for _, obj in sorted(enumerate(items), key=key))


def delete_order(refs: Iterable[ObjectRef]) -> tuple[ObjectRef, ...]:
    """Reverse apply order by kind: webhooks first, CRDs late, Namespaces last.

    Within a rank the later of the input comes first (the reverse of how it was applied).
    """
    items = list(refs)

    def key(pair: tuple[int, ObjectRef]) -> tuple[int, int, int]:
        position, ref = pair
        rank = kind_rank(ref.kind)
        if rank == 0:
            return (1, -_FIRST.index(ref.kind), -position)
        return (0, -rank, -position)

    return tuple(ref for _, ref in sorted(enumerate(items), key=key))
