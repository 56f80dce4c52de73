"""KubeTarget driven over real HTTP, with the real ``kubernetes`` client, against the fake API server.

Scenarios from issue 3: first apply of a multi-layer policy, a no-op cycle that only lists,
drift by another writer healed (enforce) or reported (audit), fields another manager owns
left alone, prune of removed objects only, health of a rollout, an API server that is down,
and a CRD with a custom resource in one cycle.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.bundle.model import Mode
from edge_agent.errors import TargetUnavailableError
from edge_agent.reconcile.health import HealthStatus
from edge_agent.reconcile.inventory import Inventory, InventoryEntry
from edge_agent.reconcile.kube_target import FIELD_MANAGER, KubeSettings, KubeTarget
from edge_agent.reconcile.objects import (
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    DesiredObject,
    desired_objects,
)
from edge_agent.reconcile.target import Action, CycleReport
from tests.fake_apiserver import FakeApiServer

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
OTHER = "kubectl-edit"


def layer(bundle: str, name: str) -> dict[str, Any]:
    folder = BUNDLES / bundle / "layers" / name
    manifests = []
    for file in sorted(folder.glob("*.yaml")):
        path = f"layers/{name}/{file.name}"
        objects = load_manifests(file.read_bytes(), path=path, limits=YamlLimits())
        manifests.append({"path": path, "objects": list(objects)})
    return {"name": f"{bundle}-{name}", "manifests": manifests}


def policy() -> tuple[DesiredObject, ...]:
    """Three layers from the example profiles: baseline's base, hello-web's base and app."""
    return desired_objects(
        [layer("baseline", "base"), layer("hello-web", "base"), layer("hello-web", "app")]
    )


def without(objects: tuple[DesiredObject, ...], kind: str, name: str) -> tuple[DesiredObject, ...]:
    return tuple(o for o in objects if (o.ref.kind, o.ref.name) != (kind, name))


def actions(report: CycleReport) -> dict[str, Action]:
    return {str(r.ref): r.action for r in report.results}


def other_patch(fake: FakeApiServer, api: Any, path: str, patch: dict[str, Any]) -> None:
    """A merge PATCH by another writer (field manager ``kubectl-edit``)."""
    request = api.param_serialize(
        "PATCH",
        path,
        query_params=[("fieldManager", OTHER)],
        header_params={"Content-Type": "application/merge-patch+json"},
        body=patch,
    )
    response = api.call_api(*request, _request_timeout=(5, 30))
    response.read()
    assert response.status == 200, response.data


def create(api: Any, path: str, body: dict[str, Any]) -> None:
    """A POST by someone else."""
    request = api.param_serialize(
        "POST", path, header_params={"Content-Type": "application/json"}, body=body
    )
    response = api.call_api(*request, _request_timeout=(5, 30))
    response.read()
    assert response.status == 201, response.data


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def api(fake: FakeApiServer) -> Iterator[Any]:
    cfg = fake.configuration()
    cfg.retries = 0
    with k8s.ApiClient(cfg) as api_client:
        yield api_client


@pytest.fixture
def target(api: Any) -> KubeTarget:
    return KubeTarget(api)


def first_apply(target: KubeTarget, objects: tuple[DesiredObject, ...]) -> CycleReport:
    report = target.reconcile(objects, Inventory(), mode=Mode.ENFORCE)
    assert {r.action for r in report.results} == {Action.CREATED}, report.results
    return report


def deployment_path() -> str:
    return "/apis/apps/v1/namespaces/hello-web/deployments/hello-web"


def test_first_apply_creates_everything_labelled_and_owned(
    fake: FakeApiServer, target: KubeTarget
) -> None:
    objects = policy()
    report = first_apply(target, objects)
    assert len(report.results) == len(objects) == 8
    assert report.inventory == Inventory.of(objects)
    order = [r.ref.kind for r in report.results]
    assert order[:2] == ["Namespace", "Namespace"]
    for obj in objects:
        live = fake.get_object(obj.manifest)
        assert live is not None, obj.ref
        assert live["metadata"]["labels"][MANAGED_BY_LABEL] == "edge-agent"
        managers = {m["manager"] for m in live["metadata"]["managedFields"]}
        assert FIELD_MANAGER in managers
    applies = fake.requests("PATCH")
    assert len(applies) == 8
    assert all(r.content_type.startswith("application/apply-patch+yaml") for r in applies)
    assert all(r.query["fieldManager"] == ["edge-agent"] for r in applies)
    assert all(r.query["force"] == ["true"] for r in applies)


def test_second_cycle_only_lists_one_per_kind(fake: FakeApiServer, target: KubeTarget) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    fake.clear_request_log()
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    assert {r.action for r in report.results} == {Action.UNCHANGED}
    assert report.inventory == inventory
    log = fake.requests()
    kinds = {o.ref.kind for o in objects}
    assert len(log) == len(kinds) == 6
    assert {r.method for r in log} == {"GET"}
    assert all(r.query["labelSelector"] == [MANAGED_SELECTOR] for r in log)
    assert all("/namespaces/" not in r.path for r in log)  # across namespaces


def test_drift_by_another_writer_healed_in_enforce(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    other_patch(
        fake,
        api,
        deployment_path(),
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "evil:1"}]}}}},
    )
    other_patch(
        fake,
        api,
        "/api/v1/namespaces/hello-web/configmaps/hello-web-content",
        {"data": {"index.html": "defaced"}},
    )
    fake.clear_request_log()
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    got = actions(report)
    assert got["Deployment.apps hello-web/hello-web"] is Action.HEALED
    assert got["ConfigMap hello-web/hello-web-content"] is Action.HEALED
    assert sum(a is Action.HEALED for a in got.values()) == 2
    healed = next(r for r in report.results if r.ref.kind == "Deployment")
    assert "image" in healed.detail and "evil" not in healed.detail
    assert len(fake.requests("PATCH")) == 2
    deploy = fake.get_object(objects[-2].manifest)
    assert deploy is not None
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "docker.io/nginxinc/nginx-unprivileged:1.27-alpine"
    cm = fake.get_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "hello-web-content", "namespace": "hello-web"},
        }
    )
    assert cm is not None and "Hello from the edge" in cm["data"]["index.html"]


def test_drift_reported_not_touched_in_audit(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    other_patch(
        fake,
        api,
        "/api/v1/namespaces/hello-web/configmaps/hello-web-content",
        {"data": {"index.html": "defaced"}},
    )
    fake.clear_request_log()
    report = target.reconcile(objects, inventory, mode=Mode.AUDIT)
    drifted = [r for r in report.results if r.action is Action.DRIFTED]
    assert [str(r.ref) for r in drifted] == ["ConfigMap hello-web/hello-web-content"]
    assert drifted[0].detail == 'data["index.html"]'
    assert {r.method for r in fake.requests()} == {"GET"}
    cm = fake.objects(kind="ConfigMap", namespace="hello-web")[0]
    assert cm["data"]["index.html"] == "defaced"


def test_replicas_owned_by_another_manager_are_left_alone(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    objects = tuple(
        desired_objects(
            [
                {
                    "name": "app",
                    "manifests": [
                        {
                            "path": "app.yaml",
                            "objects": [_without_replicas(o.manifest) for o in policy()],
                        }
                    ],
                }
            ]
        )
    )
    inventory = first_apply(target, objects).inventory
    other_patch(fake, api, deployment_path(), {"spec": {"replicas": 5}})  # an HPA scales out
    fake.clear_request_log()
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    assert {r.action for r in report.results} == {Action.UNCHANGED}
    assert fake.requests("PATCH") == []
    deploy = fake.objects(kind="Deployment")[0]
    assert deploy["spec"]["replicas"] == 5


def _without_replicas(manifest: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(manifest))
    if obj["kind"] == "Deployment":
        del obj["spec"]["replicas"]
    obj["metadata"]["labels"] = {
        k: v for k, v in obj["metadata"]["labels"].items() if not k.startswith("edge-agent")
    }
    return obj


@pytest.mark.parametrize(
    ("mode", "expected"), [(Mode.ENFORCE, Action.PRUNED), (Mode.AUDIT, Action.WOULD_PRUNE)]
)
def test_removed_object_pruned_unmanaged_left_alone(
    fake: FakeApiServer, api: Any, target: KubeTarget, mode: Mode, expected: Action
) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    unmanaged = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "someone-else", "namespace": "hello-web"},
        "spec": {"ports": [{"port": 81}]},
    }
    create(api, "/api/v1/namespaces/hello-web/services", unmanaged)
    fake.clear_request_log()
    smaller = without(objects, "Service", "hello-web")
    report = target.reconcile(smaller, inventory, mode=mode)
    got = actions(report)
    assert got["Service hello-web/hello-web"] is expected
    assert sum(a is Action.UNCHANGED for a in got.values()) == len(smaller)
    services = {s["metadata"]["name"] for s in fake.objects(kind="Service")}
    assert "someone-else" in services
    deletes = fake.requests("DELETE")
    if mode is Mode.ENFORCE:
        assert services == {"someone-else"}
        assert [r.path for r in deletes] == ["/api/v1/namespaces/hello-web/services/hello-web"]
        assert report.inventory == Inventory.of(smaller)
    else:
        assert "hello-web" in services and deletes == []
        assert report.inventory == inventory


def test_rollout_one_of_three_ready_is_not_ready(fake: FakeApiServer, target: KubeTarget) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    deploy = fake.objects(kind="Deployment")[0]
    fake.set_status(
        deploy,
        {
            "observedGeneration": deploy["metadata"]["generation"],
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "unavailableReplicas": 2,
        },
    )
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    result = next(r for r in report.results if r.ref.kind == "Deployment")
    assert result.action is Action.UNCHANGED
    assert result.health is not None
    assert result.health.status in (HealthStatus.DEGRADED, HealthStatus.PROGRESSING)
    assert "deployment/hello-web" in result.health.message
    assert "1/" in result.health.message
    others = [r for r in report.results if r.ref.kind != "Deployment"]
    assert all(r.health is not None and r.health.status is HealthStatus.READY for r in others)


def test_api_server_down_then_back(fake: FakeApiServer, target: KubeTarget) -> None:
    objects = policy()
    fake.down()
    with pytest.raises(TargetUnavailableError) as err:
        target.reconcile(objects, Inventory(), mode=Mode.ENFORCE)
    message = str(err.value)
    assert fake.url in message and "\n" not in message
    fake.up()
    first_apply(target, objects)


def test_server_errors_on_first_list_are_unavailable(
    fake: FakeApiServer, target: KubeTarget
) -> None:
    fake.fail_next(1, 503)
    with pytest.raises(TargetUnavailableError, match="503"):
        target.reconcile(policy(), Inventory(), mode=Mode.ENFORCE)
    assert fake.requests("PATCH") == []


def test_token_never_in_messages() -> None:
    with FakeApiServer(token="s3cret-token") as fake:
        cfg = fake.configuration()
        cfg.retries = 0
        with k8s.ApiClient(cfg) as api_client:
            target = KubeTarget(api_client)
            first_apply(target, policy())
            fake.down()
            with pytest.raises(TargetUnavailableError) as err:
                target.reconcile(policy(), Inventory(), mode=Mode.ENFORCE)
            assert "s3cret" not in str(err.value)


def test_invalid_object_fails_alone(fake: FakeApiServer, target: KubeTarget) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "Not_Valid", "namespace": "hello-web"},
        "data": {"k": "v"},
    }
    layers = [layer("hello-web", "base"), layer("hello-web", "app")]
    layers[1]["manifests"].append({"path": "bad.yaml", "objects": [bad]})
    objects = desired_objects(layers)
    report = target.reconcile(objects, Inventory(), mode=Mode.ENFORCE)
    got = actions(report)
    assert got["ConfigMap hello-web/Not_Valid"] is Action.FAILED
    failed = next(r for r in report.results if r.action is Action.FAILED)
    assert "422" in failed.detail and "\n" not in failed.detail
    assert sum(a is Action.CREATED for a in got.values()) == 4
    assert failed.ref not in report.inventory


def test_namespaced_object_without_namespace_goes_to_default(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    create(
        api,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
    )
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}, "data": {}}
    objects = desired_objects([{"name": "l", "manifests": [{"path": "p", "objects": [cm]}]}])
    inventory = target.reconcile(objects, Inventory(), mode=Mode.ENFORCE).inventory
    assert [c["metadata"]["name"] for c in fake.objects(kind="ConfigMap", namespace="default")] == [
        "plain"
    ]
    again = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    assert [r.action for r in again.results] == [Action.UNCHANGED]
    gone = target.reconcile((), inventory, mode=Mode.ENFORCE)
    assert [r.action for r in gone.results] == [Action.PRUNED]
    assert fake.objects(kind="ConfigMap", namespace="default") == []


WIDGET = {
    "apiVersion": "example.com/v1",
    "kind": "Widget",
    "metadata": {"name": "w1", "namespace": "hello-web"},
    "spec": {"size": 3},
}


def crd_policy() -> tuple[DesiredObject, ...]:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    layers = [
        layer("hello-web", "base"),
        {"name": "crs", "manifests": [{"path": "w.yaml", "objects": [WIDGET, crd]}]},
    ]
    return desired_objects(layers)


def test_crd_and_custom_resource_in_one_cycle(fake: FakeApiServer, target: KubeTarget) -> None:
    objects = crd_policy()
    report = first_apply(target, objects)
    assert [r.ref.kind for r in report.results] == [
        "Namespace",
        "CustomResourceDefinition",
        "Widget",
    ]
    assert fake.objects(kind="Widget")[0]["spec"] == {"size": 3}
    fake.clear_request_log()
    again = target.reconcile(objects, report.inventory, mode=Mode.ENFORCE)
    assert {r.action for r in again.results} == {Action.UNCHANGED}
    assert len(fake.requests()) == 3


def test_custom_resource_waits_for_its_crd_to_be_established() -> None:
    with FakeApiServer(establish_crds=False) as fake:
        cfg = fake.configuration()
        cfg.retries = 0
        polls: list[float] = []

        def sleep(seconds: float) -> None:  # the "controller" establishes during the wait
            polls.append(seconds)
            if len(polls) == 2:
                fake.establish("widgets.example.com")

        with k8s.ApiClient(cfg) as api_client:
            target = KubeTarget(api_client, sleep=sleep)
            report = first_apply(target, crd_policy())
        assert len(polls) == 2
        assert fake.objects(kind="Widget")[0]["metadata"]["name"] == "w1"
        assert report.inventory == Inventory.of(crd_policy())


def test_custom_resource_of_a_crd_never_established_fails_alone() -> None:
    with FakeApiServer(establish_crds=False) as fake:
        cfg = fake.configuration()
        cfg.retries = 0
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        with k8s.ApiClient(cfg) as api_client:
            target = KubeTarget(
                api_client,
                settings=KubeSettings(crd_wait_s=2.0),
                sleep=sleep,
                monotonic=lambda: now[0],
            )
            report = target.reconcile(crd_policy(), Inventory(), mode=Mode.ENFORCE)
        got = actions(report)
        assert got["Widget.example.com hello-web/w1"] is Action.FAILED
        assert got["CustomResourceDefinition.apiextensions.k8s.io widgets.example.com"] is (
            Action.CREATED
        )
        failed = next(r for r in report.results if r.action is Action.FAILED)
        assert "not served" in failed.detail
        assert now[0] >= 2.0


def _one_layer(*objects: dict[str, Any]) -> tuple[DesiredObject, ...]:
    return desired_objects([{"name": "l", "manifests": [{"path": "p", "objects": list(objects)}]}])


def test_adding_or_dropping_namespace_default_never_deletes_the_object(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    create(
        api,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
    )
    implicit = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {}}
    explicit = json.loads(json.dumps(implicit))
    explicit["metadata"]["namespace"] = "default"
    inventory = first_apply(target, _one_layer(implicit)).inventory
    for manifest in (explicit, implicit):
        objects = _one_layer(manifest)
        report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
        assert [(r.action, r.detail) for r in report.results] == [
            (Action.HEALED, "policy changed")  # the manifest changed: applied once
        ]
        assert fake.requests("DELETE") == []
        assert fake.get_object(explicit) is not None
        assert report.inventory == Inventory.of(objects)  # the other ref left, no DELETE
        inventory = report.inventory
    gone = target.reconcile((), inventory, mode=Mode.ENFORCE)
    assert [(r.action, r.detail) for r in gone.results] == [(Action.PRUNED, "deleted")]
    assert fake.get_object(explicit) is None


COREDNS = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "coredns", "namespace": "kube-system"},
    "data": {"Corefile": ".:53 {}", "x": "1"},
}


def test_pre_existing_object_is_adopted_and_released_never_deleted(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    create(
        api,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
    )
    create(api, "/api/v1/namespaces/kube-system/configmaps", COREDNS)
    tune = {**COREDNS, "data": {"x": "2"}}
    objects = _one_layer(tune)
    fake.clear_request_log()
    first = target.reconcile(objects, Inventory(), mode=Mode.ENFORCE)
    assert [r.action for r in first.results] == [Action.HEALED]
    assert first.results[0].detail.startswith("adopted (existed before the agent)")
    gets = [r.path for r in fake.requests("GET") if "labelSelector" not in r.query]
    assert gets.count("/api/v1/namespaces/kube-system/configmaps/coredns") == 1
    (entry,) = first.inventory
    assert entry.adopted
    assert Inventory.from_json(json.loads(json.dumps(first.inventory.to_json()))) == first.inventory

    fake.clear_request_log()  # adopted and labelled now: a no-op cycle only lists
    again = target.reconcile(objects, first.inventory, mode=Mode.ENFORCE)
    assert [r.action for r in again.results] == [Action.UNCHANGED]
    assert again.inventory == first.inventory
    assert [r.method for r in fake.requests()] == ["GET"]

    audit = target.reconcile((), first.inventory, mode=Mode.AUDIT)
    assert [(r.action, r.detail) for r in audit.results] == [
        (Action.WOULD_PRUNE, "would be released (existed before the agent)")
    ]
    released = target.reconcile((), first.inventory, mode=Mode.ENFORCE)
    assert [(r.action, r.detail) for r in released.results] == [
        (Action.PRUNED, "released (existed before the agent)")
    ]
    assert fake.requests("DELETE") == []
    assert len(released.inventory) == 0
    live = fake.get_object(COREDNS)
    assert live is not None and live["data"] == {"Corefile": ".:53 {}", "x": "2"}
    assert MANAGED_BY_LABEL not in (live["metadata"].get("labels") or {})


def test_object_created_by_the_agent_is_not_adopted(target: KubeTarget) -> None:
    report = first_apply(target, policy())
    assert not any(entry.adopted for entry in report.inventory)


def _web(**pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1"}], **pod_spec},
            },
        },
    }


def test_field_removed_from_the_policy_is_removed_from_the_cluster(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    create(
        api,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
    )
    inventory = first_apply(target, _one_layer(_web(hostNetwork=True))).inventory
    fake.clear_request_log()
    objects = _one_layer(_web())
    report = target.reconcile(objects, inventory, mode=Mode.AUDIT)
    assert [(r.action, r.detail) for r in report.results] == [(Action.DRIFTED, "policy changed")]
    assert report.inventory == inventory and fake.requests("PATCH") == []
    report = target.reconcile(objects, inventory, mode=Mode.ENFORCE)
    assert [(r.action, r.detail) for r in report.results] == [(Action.HEALED, "policy changed")]
    live = fake.get_object(objects[0].manifest)
    assert live is not None and "hostNetwork" not in live["spec"]["template"]["spec"]
    assert report.inventory == Inventory.of(objects)
    fake.clear_request_log()
    again = target.reconcile(objects, report.inventory, mode=Mode.ENFORCE)
    assert [r.action for r in again.results] == [Action.UNCHANGED]
    assert fake.requests("PATCH") == []


def test_entry_without_digest_is_applied_once(fake: FakeApiServer, target: KubeTarget) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    old = Inventory(
        frozenset(InventoryEntry(e.ref, e.api_version) for e in inventory)
    )  # older agent
    report = target.reconcile(objects, old, mode=Mode.ENFORCE)
    assert {(r.action, r.detail) for r in report.results} == {(Action.HEALED, "policy changed")}
    assert report.inventory == inventory
    fake.clear_request_log()
    assert {r.action for r in target.reconcile(objects, inventory, mode=Mode.ENFORCE).results} == {
        Action.UNCHANGED
    }


def test_audit_never_drops_an_entry_whose_object_lost_the_label(
    fake: FakeApiServer, api: Any, target: KubeTarget
) -> None:
    objects = policy()
    inventory = first_apply(target, objects).inventory
    path = "/api/v1/namespaces/hello-web/services/hello-web"
    other_patch(fake, api, path, {"metadata": {"labels": {MANAGED_BY_LABEL: None}}})
    fake.clear_request_log()
    smaller = without(objects, "Service", "hello-web")
    report = target.reconcile(smaller, inventory, mode=Mode.AUDIT)
    pruned = [
        (str(r.ref), r.action, r.detail)
        for r in report.results
        if r.ref not in smaller_refs(smaller)
    ]
    assert pruned == [("Service hello-web/hello-web", Action.WOULD_PRUNE, "gone")]
    assert report.inventory == inventory
    assert {r.method for r in fake.requests()} == {"GET"}
    enforced = target.reconcile(smaller, inventory, mode=Mode.ENFORCE)
    assert actions(enforced)["Service hello-web/hello-web"] is Action.PRUNED
    assert (
        fake.requests("DELETE") == []
        and fake.get_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "hello-web", "namespace": "hello-web"},
            }
        )
        is not None
    )
    assert enforced.inventory == Inventory.of(smaller)


def smaller_refs(objects: tuple[DesiredObject, ...]) -> set[Any]:
    return {o.ref for o in objects}
