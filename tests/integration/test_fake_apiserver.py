"""The fake API server, driven by the real ``kubernetes`` client over real HTTP.

These tests pin the behaviours the agent relies on (discovery, CRUD, the four PATCH types,
server-side apply ownership, dry-run, generation, defaults, CRDs, errors, outages), so that a
test passing against the fake means the same thing it would against a real API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.fake_apiserver import FakeApiServer, ObjectRef, parse_label_selector

AGENT = "edge-agent"


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def api(fake: FakeApiServer) -> Iterator[k8s.ApiClient]:
    cfg = fake.configuration()
    cfg.retries = 0
    with k8s.ApiClient(cfg) as api_client:
        yield api_client


@pytest.fixture
def dyn(api: k8s.ApiClient, tmp_path: Path) -> DynamicClient:
    return DynamicClient(api, cache_file=str(tmp_path / "discovery.json"))


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(name: str = "web", image: str = "nginx:1.27", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
            **spec,
        },
    }


def configmap(name: str, labels: dict[str, str], ns: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "data": {"k": name},
    }


def apply(
    dyn: DynamicClient, body: dict[str, Any], manager: str = AGENT, **kw: Any
) -> dict[str, Any]:
    res = dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    return dyn.server_side_apply(res, body=body, field_manager=manager, **kw).to_dict()


def raw(
    api: k8s.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
) -> tuple[int, Any]:
    """One request through ``ApiClient.call_api``, the way a non-dynamic caller would."""
    request = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        api.response_deserialize(response, {})  # raises ApiException, as generated APIs do
    return response.status, json.loads(response.data)


@pytest.fixture
def demo(dyn: DynamicClient) -> DynamicClient:
    dyn.create(dyn.resources.get(api_version="v1", kind="Namespace"), body=namespace("demo"))
    return dyn


# -- discovery and CRUD -----------------------------------------------------------------------


def test_discovery_lists_builtin_resources(dyn: DynamicClient, api: k8s.ApiClient) -> None:
    deploy = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert deploy.namespaced and deploy.name == "deployments"
    assert "status" in deploy.subresources
    crb = dyn.resources.get(api_version="rbac.authorization.k8s.io/v1", kind="ClusterRoleBinding")
    assert not crb.namespaced
    _, groups = raw(api, "GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "batch", "networking.k8s.io", "apiextensions.k8s.io"} <= names
    _, core = raw(api, "GET", "/api/v1")
    quota = next(r for r in core["resources"] if r["name"] == "resourcequotas")
    assert quota["kind"] == "ResourceQuota" and "patch" in quota["verbs"]


def test_create_get_list_by_selector_delete(demo: DynamicClient, fake: FakeApiServer) -> None:
    cms = demo.resources.get(api_version="v1", kind="ConfigMap")
    for name, labels in [
        ("a", {"app": "x", "tier": "web"}),
        ("b", {"app": "x", "tier": "db"}),
        ("c", {"app": "y"}),
    ]:
        created = cms.create(body=configmap(name, labels), namespace="demo").to_dict()
        assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    got = cms.get(name="a", namespace="demo").to_dict()
    assert got["data"] == {"k": "a"} and got["metadata"]["creationTimestamp"]

    def names(selector: str, ns: str | None = "demo") -> list[str]:
        listed = cms.get(namespace=ns, label_selector=selector).to_dict()
        assert listed["kind"] == "ConfigMapList" and listed["apiVersion"] == "v1"
        assert listed["metadata"]["resourceVersion"]
        return [i["metadata"]["name"] for i in listed["items"]]

    assert names("app=x") == ["a", "b"]
    assert names("app==x,tier!=web") == ["b"]
    assert names("tier in (db, web)") == ["a", "b"]
    assert names("app,tier notin (web)") == ["b", "c"]  # notin matches a missing label
    assert names("!tier") == ["c"]
    assert names("app=x", ns=None) == ["a", "b"]

    deploys = demo.resources.get(api_version="apps/v1", kind="Deployment")
    deploys.create(body=deployment())
    assert [d.metadata.name for d in deploys.get(namespace="demo").items] == ["web"]

    cms.delete(name="a", namespace="demo")
    assert names("app=x") == ["b"]
    with pytest.raises(ApiException) as err:
        cms.delete(name="a", namespace="demo")
    assert err.value.status == 404
    assert len(fake.objects(kind="ConfigMap")) == 2


def test_errors_are_status_bodies(demo: DynamicClient, api: k8s.ApiClient) -> None:
    cms = demo.resources.get(api_version="v1", kind="ConfigMap")
    with pytest.raises(ApiException) as err:
        cms.get(name="missing", namespace="demo")
    assert err.value.status == 404
    status = json.loads(err.value.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)
    cms.create(body=configmap("a", {}))
    with pytest.raises(ApiException) as err:
        cms.create(body=configmap("a", {}))
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        cms.create(body=configmap("a", {}, ns="nowhere"))
    assert err.value.status == 404 and "nowhere" in json.loads(err.value.body)["message"]
    with pytest.raises(ApiException) as err:
        cms.create(body=configmap("Not_Valid", {}))
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        raw(api, "GET", "/apis/example.com/v1/widgets")
    assert err.value.status == 404


def test_replace_checks_resource_version(demo: DynamicClient) -> None:
    cms = demo.resources.get(api_version="v1", kind="ConfigMap")
    first = cms.create(body=configmap("a", {})).to_dict()
    first["data"] = {"k": "new"}
    second = cms.replace(body=first).to_dict()
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["data"] = {"k": "stale"}
    with pytest.raises(ApiException) as err:
        cms.replace(body=first)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    with pytest.raises(ApiException) as err:
        cms.replace(body=configmap("missing", {}))
    assert err.value.status == 404


def test_patch_types(demo: DynamicClient) -> None:
    deploys = demo.resources.get(api_version="apps/v1", kind="Deployment")
    body = deployment()
    body["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "busybox:1"})
    deploys.create(body=body)
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:2"}]}}}}
    out = deploys.patch(name="web", namespace="demo", body=smp).to_dict()
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [
        ("main", "nginx:2"),
        ("side", "busybox:1"),
    ]
    merge = {"metadata": {"labels": {"app": None, "team": "a"}}}
    out = deploys.patch(
        name="web", namespace="demo", body=merge, content_type="application/merge-patch+json"
    ).to_dict()
    assert out["metadata"]["labels"] == {"team": "a"}
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
    ]
    out = deploys.patch(
        name="web", namespace="demo", body=ops, content_type="application/json-patch+json"
    ).to_dict()
    assert out["spec"]["replicas"] == 4
    assert len(out["spec"]["template"]["spec"]["containers"]) == 1
    with pytest.raises(ApiException) as err:
        deploys.patch(
            name="web",
            namespace="demo",
            body=[{"op": "test", "path": "/spec/replicas", "value": 9}],
            content_type="application/json-patch+json",
        )
    assert err.value.status == 422


# -- server-side apply ------------------------------------------------------------------------


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["manager"], m["operation"]): m["fieldsV1"] for m in obj["metadata"]["managedFields"]}


def test_apply_creates_and_records_ownership(demo: DynamicClient, fake: FakeApiServer) -> None:
    fake.clear_request_log()
    created = apply(demo, deployment(replicas=2))
    patch = fake.requests("PATCH")[0]
    assert patch.content_type == "application/apply-patch+yaml"
    assert patch.query["fieldManager"] == [AGENT]
    assert created["metadata"]["generation"] == 1
    owned = managers(created)[(AGENT, "Apply")]
    assert owned["f:spec"]["f:replicas"] == {}
    container = owned["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"main"}']
    assert container == {".": {}, "f:name": {}, "f:image": {}}
    # defaults are filled but owned by nobody
    assert created["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": "25%",
        "maxUnavailable": "25%",
    }
    assert "f:strategy" not in owned["f:spec"]


def test_apply_requires_field_manager(demo: DynamicClient, api: k8s.ApiClient) -> None:
    with pytest.raises(ApiException) as err:
        raw(
            api,
            "PATCH",
            "/api/v1/namespaces/demo/configmaps/a",
            configmap("a", {}),
            "application/apply-patch+yaml",
        )
    assert err.value.status == 422


def test_apply_removes_fields_no_longer_applied(demo: DynamicClient) -> None:
    body = configmap("a", {"app": "x", "old": "yes"})
    body["data"] = {"keep": "1", "drop": "2"}
    apply(demo, body)
    body["metadata"]["labels"] = {"app": "x"}
    body["data"] = {"keep": "1"}
    out = apply(demo, body)
    assert out["metadata"]["labels"] == {"app": "x"}
    assert out["data"] == {"keep": "1"}


def test_apply_conflict_then_force(demo: DynamicClient) -> None:
    apply(demo, deployment(replicas=2))
    deploys = demo.resources.get(api_version="apps/v1", kind="Deployment")
    deploys.patch(
        name="web", namespace="demo", body={"spec": {"replicas": 5}}, field_manager="kubectl"
    )
    with pytest.raises(ApiException) as err:
        apply(demo, deployment(replicas=2))
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "kubectl"',
            "field": ".spec.replicas",
        }
    ]
    out = apply(demo, deployment(replicas=2), force_conflicts=True)
    assert out["spec"]["replicas"] == 2
    assert "f:replicas" in managers(out)[(AGENT, "Apply")]["f:spec"]
    assert (("kubectl", "Update")) not in managers(out)


def test_apply_leaves_fields_of_other_managers_alone(demo: DynamicClient) -> None:
    """The HPA scenario: the agent stops sending replicas, the autoscaler's value stays."""
    apply(demo, deployment(replicas=2))
    hpa = deployment(replicas=7)
    hpa["spec"] = {"replicas": 7}
    hpa["metadata"].pop("labels")
    apply(demo, hpa, manager="hpa-controller", force_conflicts=True)
    out = apply(demo, deployment(image="nginx:1.28"), force_conflicts=True)
    assert out["spec"]["replicas"] == 7
    assert out["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    # and a field only the agent owned and no longer sends goes back to its default
    apply(demo, deployment(revisionHistoryLimit=3), force_conflicts=True)
    out = apply(demo, deployment(), force_conflicts=True)
    assert out["spec"]["revisionHistoryLimit"] == 10


def test_apply_drift_healed_and_noop_apply_writes_nothing(demo: DynamicClient) -> None:
    first = apply(demo, deployment())
    again = apply(demo, deployment())
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    deploys = demo.resources.get(api_version="apps/v1", kind="Deployment")
    deploys.patch(
        name="web",
        namespace="demo",
        body={"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "evil"}]}}}},
        field_manager="intruder",
    )
    healed = apply(demo, deployment(), force_conflicts=True)
    assert healed["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert healed["metadata"]["generation"] == 3


def test_dry_run_leaves_no_trace(demo: DynamicClient, fake: FakeApiServer) -> None:
    cms = demo.resources.get(api_version="v1", kind="ConfigMap")
    before = fake.objects()
    out = cms.create(body=configmap("a", {}), dry_run="All").to_dict()
    assert out["metadata"]["name"] == "a"
    assert apply(demo, configmap("b", {}), dry_run="All")["data"] == {"k": "b"}
    assert fake.objects() == before
    cms.create(body=configmap("c", {}))
    stored = fake.objects(kind="ConfigMap")
    # the POST made "OpenAPI-Generator" own data.k: without force this apply would conflict
    out = apply(
        demo, {**configmap("c", {}), "data": {"k": "dry"}}, dry_run="All", force_conflicts=True
    )
    assert out["data"] == {"k": "dry"}
    cms.delete(name="c", namespace="demo", dry_run="All")
    assert fake.objects(kind="ConfigMap") == stored


def test_generation_moves_on_spec_changes_only(demo: DynamicClient, fake: FakeApiServer) -> None:
    deploys = demo.resources.get(api_version="apps/v1", kind="Deployment")
    deploys.create(body=deployment())
    deploys.patch(name="web", namespace="demo", body={"metadata": {"labels": {"x": "1"}}})
    assert deploys.get(name="web", namespace="demo").metadata.generation == 1
    deploys.patch(name="web", namespace="demo", body={"spec": {"replicas": 3}})
    assert deploys.get(name="web", namespace="demo").metadata.generation == 2
    status = {"replicas": 3, "readyReplicas": 3, "observedGeneration": 2}
    out = deploys.status.patch(
        name="web",
        namespace="demo",
        body={"status": status},
        content_type="application/merge-patch+json",
    ).to_dict()
    assert out["status"] == status and out["metadata"]["generation"] == 2
    # status sent to the main resource is ignored
    deploys.patch(name="web", namespace="demo", body={"status": {"replicas": 0}})
    assert deploys.get(name="web", namespace="demo").status.replicas == 3
    ref = ObjectRef("apps/v1", "Deployment", "web", "demo")
    rv = fake.get_object(ref)["metadata"]["resourceVersion"]  # type: ignore[index]
    stored = fake.set_status(ref, {"readyReplicas": 1})
    assert stored["metadata"]["resourceVersion"] != rv and stored["metadata"]["generation"] == 2


def test_defaults_a_real_server_fills(demo: DynamicClient) -> None:
    out = apply(demo, deployment(image="nginx"))
    pod = out["spec"]["template"]["spec"]
    assert (out["spec"]["replicas"], out["spec"]["progressDeadlineSeconds"]) == (1, 600)
    assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"]) == (
        "Always",
        "ClusterFirst",
        "default-scheduler",
    )
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    svc = apply(
        demo,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"].startswith("10.96.")
    ns = demo.resources.get(api_version="v1", kind="Namespace").get(name="demo").to_dict()
    assert ns["status"]["phase"] == "Active" and ns["spec"]["finalizers"] == ["kubernetes"]


# -- CRDs, namespaces, call_api -------------------------------------------------------------


def crd() -> dict[str, Any]:
    return {
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
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def test_crd_then_custom_resource(demo: DynamicClient) -> None:
    created = apply(demo, crd())
    conditions = {c["type"]: c["status"] for c in created["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "demo", "labels": {"app": "w"}},
        "spec": {"size": 3},
    }
    out = apply(demo, widget)  # discovery is refreshed by the client on a miss
    assert out["metadata"]["generation"] == 1
    widgets = demo.resources.get(api_version="example.com/v1", kind="Widget")
    listed = widgets.get(namespace="demo", label_selector="app=w").to_dict()
    assert listed["kind"] == "WidgetList"
    assert listed["items"][0]["kind"] == "Widget"  # custom resource items keep their kind
    crds = demo.resources.get(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    crds.delete(name="widgets.example.com")
    with pytest.raises(ApiException) as err:
        widgets.get(namespace="demo")
    assert err.value.status == 404


def test_unestablished_crd_is_not_served() -> None:
    with FakeApiServer(establish_crds=False) as fake:
        cfg = fake.configuration()
        with k8s.ApiClient(cfg) as client:
            raw(client, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd())
            with pytest.raises(ApiException) as err:
                raw(client, "GET", "/apis/example.com/v1/widgets")
            assert err.value.status == 404
            fake.establish("widgets.example.com")
            status, body = raw(client, "GET", "/apis/example.com/v1/widgets")
            assert status == 200 and body["kind"] == "WidgetList"


def test_namespace_deletion_removes_its_objects(demo: DynamicClient, fake: FakeApiServer) -> None:
    apply(demo, configmap("a", {}))
    apply(demo, deployment())
    demo.resources.get(api_version="v1", kind="Namespace").delete(name="demo")
    assert fake.objects(namespace="demo") == []
    with pytest.raises(ApiException) as err:
        apply(demo, configmap("a", {}))
    assert err.value.status == 404


def test_call_api_and_builtin_list_items_have_no_kind(
    demo: DynamicClient, api: k8s.ApiClient
) -> None:
    apply(demo, configmap("a", {"app": "x"}))
    status, body = raw(api, "GET", "/api/v1/configmaps", query=[("labelSelector", "app=x")])
    assert status == 200 and body["kind"] == "ConfigMapList"
    assert "kind" not in body["items"][0]
    status, body = raw(
        api,
        "PATCH",
        "/api/v1/namespaces/demo/configmaps/b",
        configmap("b", {}),
        "application/apply-patch+yaml",
        [("fieldManager", AGENT), ("force", "true")],
    )
    assert status == 201 and body["metadata"]["uid"]


# -- availability ------------------------------------------------------------------------------


def test_down_up_and_injected_failures(fake: FakeApiServer, api: k8s.ApiClient) -> None:
    assert raw(api, "GET", "/api/v1/namespaces")[0] == 200
    port = fake.port
    fake.down()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        raw(api, "GET", "/api/v1/namespaces")
    fake.up()
    assert fake.port == port
    assert raw(api, "GET", "/api/v1/namespaces")[0] == 200
    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            raw(api, "GET", "/api/v1/namespaces")
        assert err.value.status == 503
    assert raw(api, "GET", "/api/v1/namespaces")[0] == 200


def test_slow_server_times_out(fake: FakeApiServer, api: k8s.ApiClient) -> None:
    fake.set_latency(0.5)
    request = api.param_serialize("GET", "/api/v1/namespaces", auth_settings=[])
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        api.call_api(*request, _request_timeout=0.05)
    fake.set_latency(0)


def test_kubeconfig_with_token(tmp_path: Path) -> None:
    with FakeApiServer(token="s3cret") as fake:
        path = fake.write_kubeconfig(tmp_path / "kubeconfig")
        with k8s_config.new_client_from_config(config_file=str(path)) as client:
            status, body = raw(client, "GET", "/api/v1/namespaces")
            assert status == 200 and body["kind"] == "NamespaceList"
        cfg = k8s.Configuration()
        cfg.host, cfg.retries = fake.url, 0
        with k8s.ApiClient(cfg) as anonymous, pytest.raises(ApiException) as err:
            raw(anonymous, "GET", "/api/v1/namespaces")
        assert err.value.status == 401


def test_label_selector_parser_rejects_garbage() -> None:
    assert parse_label_selector("a in (x,y),!b")({"a": "x"})
    with pytest.raises(Exception, match="unable to parse"):
        parse_label_selector("a in x")
