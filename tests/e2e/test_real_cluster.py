"""KubeTarget against whatever cluster ``EDGE_AGENT_E2E_KUBECONFIG`` names (opt-in, ``-m e2e``).

The scenarios of ``tests/integration/test_kube_target.py``, run through the Kubernetes API only:
no fake-only helper (``set_status``, ``requests``, ``objects``) is used, so the same module runs
against kind, k3s, a lab cluster, or the fake API server started by hand.

Scenarios: first apply of a three-layer policy; a second cycle that writes nothing (checked by
``resourceVersion``, generation and the agent's field ownership, not by a request log); drift by
another writer healed in enforce mode and only reported in audit mode; a removed object pruned
while an unmanaged one is left alone; a rollout that cannot pull its image reported not ready
(needs real controllers: skipped, with the reason, when the API server runs none).

Isolation: every test works in its own namespace ``edge-agent-e2e-<random>``, which the policy
itself creates, and deletes it at the end (without waiting for it to terminate). Nothing
outside that namespace is read or written except the namespace object itself.

When ``EDGE_AGENT_E2E_KUBECONFIG`` is unset or names no file, the whole module is skipped with
the reason (shown by ``-ra``, which the project's pytest options include).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.bundle.model import Mode
from edge_agent.reconcile.health import HealthStatus
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.kube_target import FIELD_MANAGER, KubeTarget
from edge_agent.reconcile.objects import MANAGED_BY_LABEL, DesiredObject, desired_objects
from edge_agent.reconcile.target import Action, CycleReport

ENV = "EDGE_AGENT_E2E_KUBECONFIG"
KUBECONFIG = os.environ.get(ENV, "")
if not KUBECONFIG:
    pytest.skip(
        f"{ENV} is not set: the end-to-end suite needs a kubeconfig of a disposable cluster",
        allow_module_level=True,
    )
if not Path(KUBECONFIG).is_file():
    pytest.skip(f"{ENV}={KUBECONFIG}: no such file", allow_module_level=True)

pytestmark = [
    pytest.mark.e2e,
    # A lab cluster's kubeconfig may say insecure-skip-tls-verify; that is not under test.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
OTHER = "kubectl-edit"
CONTENT = "hello-web-content"
NO_CONTROLLERS = "no controllers: the API server does not run the deployment controller"
OBSERVE_WAIT_S = 20.0
"""How long a Deployment may go without ``status.observedGeneration`` before we conclude that
no deployment controller runs (a real one observes a new Deployment within a second or two)."""
NOT_READY_WAIT_S = 60.0
"""How long cycles are run until the unpullable rollout is reported not ready
(``progressDeadlineSeconds`` is 10; the controller reports shortly after)."""
POLL_S = 2.0

# Kinds whose resourceVersion no controller moves once created: a no-op cycle must leave it.
# (ResourceQuota and Deployment get status writes from their controllers on a real cluster.)
STATUS_FREE_KINDS = frozenset({"Namespace", "ConfigMap", "Service", "NetworkPolicy"})

_PATHS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
}


# -- the cluster, through the Kubernetes API only ----------------------------------------------


class Cluster:
    """Plain API calls (as another writer, or to look) through the official client."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=(5, 30))
        response.read()
        data = json.loads(response.data) if response.data else {}
        return int(response.status), data

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        status, data = self.call("GET", path_of(kind, name, namespace))
        if status == 404:
            return None
        assert status == 200, (kind, name, status, data.get("message"))
        return data

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """A POST by someone else."""
        status, data = self.call("POST", path_of(kind, "", namespace).rstrip("/"), body)
        assert status == 201, (status, data.get("message"))
        return data

    def other_patch(self, kind: str, name: str, namespace: str, patch: dict[str, Any]) -> None:
        """A merge PATCH by another writer (field manager ``kubectl-edit``)."""
        status, data = self.call(
            "PATCH",
            path_of(kind, name, namespace),
            patch,
            query=[("fieldManager", OTHER)],
            content_type="application/merge-patch+json",
        )
        assert status == 200, (status, data.get("message"))

    def delete_namespace(self, name: str) -> None:
        status, data = self.call("DELETE", path_of("Namespace", name))
        assert status in (200, 202, 404), (status, data.get("message"))


def path_of(kind: str, name: str, namespace: str = "") -> str:
    prefix, plural, namespaced = _PATHS[kind]
    where = f"/namespaces/{namespace}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{name}"


# -- the policy --------------------------------------------------------------------------------


def relocated(bundle: str, name: str, namespace: str) -> dict[str, Any]:
    """One layer of an example profile, moved into ``namespace``.

    Every Namespace object is renamed to ``namespace`` and every namespaced object moved into
    it. baseline's Namespace (pod-security ``restricted``) is dropped: hello-web's Namespace
    stands for both, and the restricted profile would refuse the example's pods.
    """
    folder = BUNDLES / bundle / "layers" / name
    manifests = []
    for file in sorted(folder.glob("*.yaml")):
        path = f"layers/{name}/{file.name}"
        objects = []
        for loaded in load_manifests(file.read_bytes(), path=path, limits=YamlLimits()):
            obj = copy.deepcopy(loaded)
            if obj["kind"] == "Namespace":
                if bundle == "baseline":
                    continue
                obj["metadata"]["name"] = namespace
            elif "namespace" in obj["metadata"]:
                obj["metadata"]["namespace"] = namespace
            objects.append(obj)
        manifests.append({"path": path, "objects": objects})
    return {"name": f"{bundle}-{name}", "manifests": manifests}


def policy(namespace: str, *extra: dict[str, Any]) -> tuple[DesiredObject, ...]:
    """Three layers: baseline's base (policies, quota), hello-web's base (the namespace), app."""
    app = relocated("hello-web", "app", namespace)
    if extra:
        app["manifests"].append({"path": "layers/app/e2e.yaml", "objects": list(extra)})
    return desired_objects(
        [
            relocated("baseline", "base", namespace),
            relocated("hello-web", "base", namespace),
            app,
        ]
    )


def unpullable(namespace: str) -> dict[str, Any]:
    """A Deployment that can never become ready; fits the quota and pod-security baseline."""
    labels = {"app.kubernetes.io/name": "never-ready"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "never-ready", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 10,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "nope",
                            "image": "registry.invalid/nope:1",
                            "resources": {
                                "requests": {"cpu": "1m", "memory": "8Mi"},
                                "limits": {"memory": "16Mi"},
                            },
                        }
                    ]
                },
            },
        },
    }


def without(objects: tuple[DesiredObject, ...], kind: str, name: str) -> tuple[DesiredObject, ...]:
    return tuple(o for o in objects if (o.ref.kind, o.ref.name) != (kind, name))


def actions(report: CycleReport) -> dict[str, Action]:
    return {str(r.ref): r.action for r in report.results}


def agent_ownership(live: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent's managedFields entries (time and fields change only when it writes)."""
    return [m for m in live["metadata"].get("managedFields") or () if m["manager"] == FIELD_MANAGER]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    config: Any = importlib.import_module("kubernetes.config")
    api = config.new_client_from_config(config_file=KUBECONFIG, persist_config=False)
    with api:
        yield Cluster(api)


@pytest.fixture(scope="module")
def target() -> KubeTarget:
    return KubeTarget.from_kubeconfig(KUBECONFIG)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"edge-agent-e2e-{secrets.token_hex(4)}"
    assert cluster.get("Namespace", name) is None
    yield name
    cluster.delete_namespace(name)


def first_apply(target: KubeTarget, objects: tuple[DesiredObject, ...]) -> CycleReport:
    report = target.reconcile(objects, Inventory(), mode=Mode.ENFORCE)
    assert {r.action for r in report.results} == {Action.CREATED}, report.results
    return report


# -- scenarios ---------------------------------------------------------------------------------


def test_first_apply_of_three_layers(cluster: Cluster, target: KubeTarget, namespace: str) -> None:
    objects = policy(namespace)
    report = first_apply(target, objects)
    assert len(report.results) == len(objects) == 7
    assert report.results[0].ref.kind == "Namespace"
    assert report.inventory == Inventory.of(objects)
    for obj in objects:
        live = cluster.get(obj.ref.kind, obj.ref.name, obj.ref.namespace)
        assert live is not None, obj.ref
        assert live["metadata"]["labels"][MANAGED_BY_LABEL] == "edge-agent"
        assert agent_ownership(live), obj.ref


def test_second_cycle_writes_nothing(cluster: Cluster, target: KubeTarget, namespace: str) -> None:
    objects = policy(namespace)
    inventory = first_apply(target, objects).inventory
    before = {o.ref: cluster.get(o.ref.kind, o.ref.name, o.ref.namespace) for o in objects}
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    assert {r.action for r in report.results} == {Action.UNCHANGED}, report.results
    assert report.inventory == inventory
    for obj in objects:
        old = before[obj.ref]
        new = cluster.get(obj.ref.kind, obj.ref.name, obj.ref.namespace)
        assert old is not None and new is not None, obj.ref
        if obj.ref.kind in STATUS_FREE_KINDS:
            assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]
        assert new["metadata"].get("generation") == old["metadata"].get("generation"), obj.ref
        assert agent_ownership(new) == agent_ownership(old), obj.ref


def test_drift_by_another_writer_healed_in_enforce(
    cluster: Cluster, target: KubeTarget, namespace: str
) -> None:
    objects = policy(namespace)
    inventory = first_apply(target, objects).inventory
    cluster.other_patch("ConfigMap", CONTENT, namespace, {"data": {"index.html": "defaced"}})
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    got = actions(report)
    assert got[f"ConfigMap {namespace}/{CONTENT}"] is Action.HEALED
    assert sum(a is Action.HEALED for a in got.values()) == 1, report.results
    cm = cluster.get("ConfigMap", CONTENT, namespace)
    assert cm is not None and "Hello from the edge" in cm["data"]["index.html"]
    again = target.reconcile(objects, report.inventory, mode=Mode.ENFORCE)
    assert {r.action for r in again.results} == {Action.UNCHANGED}, again.results


def test_drift_by_another_writer_only_reported_in_audit(
    cluster: Cluster, target: KubeTarget, namespace: str
) -> None:
    objects = policy(namespace)
    inventory = first_apply(target, objects).inventory
    cluster.other_patch("ConfigMap", CONTENT, namespace, {"data": {"index.html": "defaced"}})
    drifted_at = cluster.get("ConfigMap", CONTENT, namespace)
    assert drifted_at is not None
    report = target.reconcile(objects, inventory, mode=Mode.AUDIT)
    drifted = [r for r in report.results if r.action is Action.DRIFTED]
    assert [str(r.ref) for r in drifted] == [f"ConfigMap {namespace}/{CONTENT}"]
    assert drifted[0].detail == 'data["index.html"]'
    assert report.inventory == inventory
    cm = cluster.get("ConfigMap", CONTENT, namespace)
    assert cm is not None and cm["data"]["index.html"] == "defaced"
    assert cm["metadata"]["resourceVersion"] == drifted_at["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("mode", "expected"), [(Mode.ENFORCE, Action.PRUNED), (Mode.AUDIT, Action.WOULD_PRUNE)]
)
def test_removed_object_pruned_unmanaged_left_alone(
    cluster: Cluster, target: KubeTarget, namespace: str, mode: Mode, expected: Action
) -> None:
    objects = policy(namespace)
    inventory = first_apply(target, objects).inventory
    unmanaged = cluster.create(
        "Service",
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "someone-else", "namespace": namespace},
            "spec": {"ports": [{"port": 81}]},
        },
    )
    smaller = without(objects, "Service", "hello-web")
    report = target.reconcile(smaller, inventory, mode=mode)
    got = actions(report)
    assert got[f"Service {namespace}/hello-web"] is expected
    assert sum(a is Action.UNCHANGED for a in got.values()) == len(smaller), report.results
    left = cluster.get("Service", "someone-else", namespace)
    assert left is not None
    assert left["metadata"]["resourceVersion"] == unmanaged["metadata"]["resourceVersion"]
    removed = cluster.get("Service", "hello-web", namespace)
    if mode is Mode.ENFORCE:
        assert removed is None or removed["metadata"].get("deletionTimestamp")
        assert report.inventory == Inventory.of(smaller)
    else:
        assert removed is not None and not removed["metadata"].get("deletionTimestamp")
        assert report.inventory == inventory


def test_unpullable_rollout_reported_not_ready(
    cluster: Cluster, target: KubeTarget, namespace: str
) -> None:
    objects = policy(namespace, unpullable(namespace))
    inventory = first_apply(target, objects).inventory
    started = time.monotonic()
    while True:
        live = cluster.get("Deployment", "never-ready", namespace)
        assert live is not None
        if (live.get("status") or {}).get("observedGeneration") is not None:
            break
        if time.monotonic() - started > OBSERVE_WAIT_S:
            pytest.skip(
                f"{NO_CONTROLLERS} (deployment/never-ready has no status.observedGeneration "
                f"after {OBSERVE_WAIT_S:.0f} s)"
            )
        time.sleep(1.0)
    seen: list[str] = []
    while True:
        report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
        result = next(r for r in report.results if r.ref.name == "never-ready")
        assert result.action is Action.UNCHANGED, result
        assert result.health is not None
        seen.append(f"{result.health.status.value}:{result.health.reason}")
        if result.health.status in (HealthStatus.DEGRADED, HealthStatus.FAILED):
            break
        assert time.monotonic() - started < NOT_READY_WAIT_S, f"never reported not ready: {seen}"
        time.sleep(POLL_S)
    assert result.health.reason, result.health
    assert result.health.message.startswith("deployment/never-ready"), result.health
