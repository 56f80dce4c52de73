"""Drift detection against live objects shaped as a real API server returns them."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from edge_agent.reconcile.drift import Drift, detect, parse_quantity

Obj = dict[str, Any]

MANAGED_FIELDS = [
    {
        "manager": "edge-agent",
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "time": "2026-11-24T12:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}}},
    }
]


def deployment_desired() -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "web", "app.kubernetes.io/managed-by": "edge-agent"},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": "web"}, "creationTimestamp": None},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.local/web:1.4.2",
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "env": [
                                {"name": "MODE", "value": "edge"},
                                {"name": "DEBUG", "value": ""},
                            ],
                            "resources": {
                                "requests": {"cpu": "1000m", "memory": "1073741824"},
                                "limits": {"cpu": 2, "memory": "2Gi"},
                            },
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/web"}],
                        },
                        {"name": "log", "image": "registry.local/log:2.0", "args": []},
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": "web"}}],
                    "hostNetwork": False,
                    "nodeSelector": {},
                },
            },
        },
    }


def deployment_live() -> Obj:
    """What GET returns after the desired manifest was applied: defaults, status, noise."""
    container_defaults = {
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "6f1c2a8e-8a4c-4d8e-9d9e-0b7f3c1d2e4f",
            "resourceVersion": "48213",
            "generation": 4,
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "labels": {"app": "web", "app.kubernetes.io/managed-by": "edge-agent"},
            "annotations": {"deployment.kubernetes.io/revision": "4"},
            "managedFields": MANAGED_FIELDS,
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": {"app": "web"}, "creationTimestamp": None},
                "spec": {
                    # Reordered by another writer's apply: matched by name, not position.
                    "containers": [
                        {
                            "name": "log",
                            "image": "registry.local/log:2.0",
                            "resources": {},
                            **container_defaults,
                        },
                        {
                            "name": "web",
                            "image": "registry.local/web:1.4.2",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "env": [
                                {"name": "DEBUG"},
                                {"name": "MODE", "value": "edge"},
                            ],
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/web"}],
                            **container_defaults,
                        },
                        {"name": "istio-proxy", "image": "istio/proxyv2:1.24"},
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": "web", "defaultMode": 420}}],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
            },
        },
        "status": {
            "observedGeneration": 4,
            "replicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }


def service_desired() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "8080"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        },
    }


def service_live() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "0d3f",
            "resourceVersion": "48100",
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "managedFields": MANAGED_FIELDS,
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.43.12.7",
            "clusterIPs": ["10.43.12.7"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "selector": {"app": "web"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            ],
        },
        "status": {"loadBalancer": {}},
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_desired() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop"},
        "stringData": {"password": "s3cret", "user": "shop"},
        "data": {"ca.crt": b64("CA"), "user": b64("overridden by stringData")},
    }


def secret_live() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "uid": "9a",
            "resourceVersion": "7",
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "managedFields": MANAGED_FIELDS,
        },
        "type": "Opaque",
        "data": {"ca.crt": b64("CA"), "password": b64("s3cret"), "user": b64("shop")},
    }


def pvc_desired() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "shop"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "0.5Gi"}},
            "volumeMode": "Filesystem",
        },
    }


def pvc_live() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "data",
            "namespace": "shop",
            "annotations": {"pv.kubernetes.io/bind-completed": "yes"},
            "finalizers": ["kubernetes.io/pvc-protection"],
            "uid": "1",
            "resourceVersion": "2",
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "512Mi"}},
            "volumeName": "pvc-1",
            "storageClassName": "local-path",
            "volumeMode": "Filesystem",
        },
        "status": {"phase": "Bound", "capacity": {"storage": "512Mi"}},
    }


Edit = Callable[[Obj], None]


def set_image(live: Obj) -> None:
    live["spec"]["template"]["spec"]["containers"][1]["image"] = "registry.local/web:6.6.6"


def scale(live: Obj) -> None:
    live["spec"]["replicas"] = 1


def drop_label(live: Obj) -> None:
    del live["metadata"]["labels"]["app"]


def change_env(live: Obj) -> None:
    live["spec"]["template"]["spec"]["containers"][1]["env"][1]["value"] = "debug"


def drop_env(live: Obj) -> None:
    del live["spec"]["template"]["spec"]["containers"][1]["env"][1]


def drop_container(live: Obj) -> None:
    del live["spec"]["template"]["spec"]["containers"][0]


def raise_cpu(live: Obj) -> None:
    live["spec"]["template"]["spec"]["containers"][1]["resources"]["requests"]["cpu"] = "1001m"


def add_args(live: Obj) -> None:
    live["spec"]["template"]["spec"]["containers"][0]["args"] = ["--verbose"]


def recreate(live: Obj) -> None:
    live["spec"]["strategy"] = {"type": "Recreate"}


def move_mount(live: Obj) -> None:
    live["spec"]["template"]["spec"]["containers"][1]["volumeMounts"][0]["mountPath"] = "/cfg"


WEB = "spec.template.spec.containers[name=web]"


@pytest.mark.parametrize(
    ("edit", "paths"),
    [
        (set_image, [f"{WEB}.image"]),
        (scale, ["spec.replicas"]),
        (drop_label, ["metadata.labels.app"]),
        (change_env, [f"{WEB}.env[name=MODE].value"]),
        (drop_env, [f"{WEB}.env[name=MODE]"]),
        (drop_container, ["spec.template.spec.containers[name=log]"]),
        (raise_cpu, [f"{WEB}.resources.requests.cpu"]),
        (add_args, ["spec.template.spec.containers[name=log].args"]),
        (move_mount, [f"{WEB}.volumeMounts[mountPath=/etc/web]"]),
        (recreate, ["spec.strategy.type"]),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_real_drift_is_reported_by_path(edit: Edit, paths: list[str]) -> None:
    live = deployment_live()
    edit(live)
    assert detect(deployment_desired(), live) == Drift(paths=tuple(paths))


def test_deployment_with_server_defaults_status_and_foreign_fields_has_no_drift() -> None:
    drift = detect(deployment_desired(), deployment_live())
    assert drift == Drift()
    assert not drift.drifted
    assert drift.describe() == "in sync"


def test_fields_the_manifest_omits_are_left_to_others() -> None:
    desired = deployment_desired()
    del desired["spec"]["replicas"]  # an HPA owns replicas
    live = deployment_live()
    live["spec"]["replicas"] = 7
    live["metadata"]["labels"]["team"] = "ops"
    live["metadata"]["annotations"]["note"] = "added by a person"
    assert detect(desired, live) == Drift()


def test_server_owned_metadata_and_status_are_ignored_even_if_desired_sets_them() -> None:
    desired = deployment_desired()
    desired["metadata"].update(uid="x", resourceVersion="1", generation=1, managedFields=[])
    desired["status"] = {"replicas": 0}
    assert detect(desired, deployment_live()) == Drift()


def test_null_in_desired_means_not_set() -> None:
    desired = deployment_desired()
    desired["spec"]["paused"] = None
    desired["metadata"]["annotations"] = None
    assert detect(desired, deployment_live()) == Drift()


def test_empty_label_value_is_a_real_entry() -> None:
    desired = deployment_desired()
    desired["metadata"]["labels"]["canary"] = ""
    assert detect(desired, deployment_live()).paths == ("metadata.labels.canary",)


def test_label_keys_with_dots_are_quoted_in_paths() -> None:
    live = deployment_live()
    del live["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert detect(deployment_desired(), live).paths == (
        'metadata.labels["app.kubernetes.io/managed-by"]',
    )


def test_missing_live_object() -> None:
    drift = detect(deployment_desired(), None)
    assert drift.drifted and drift.missing
    assert drift.describe() == "missing"


@pytest.mark.parametrize(
    ("edit", "paths"),
    [
        (lambda live: None, []),
        (
            lambda live: live["spec"]["ports"][1].update(targetPort=9090),
            ["spec.ports[port=80].targetPort"],
        ),
        (
            lambda live: live["spec"]["ports"][0].update(protocol="TCP"),
            ["spec.ports[port=53,protocol=UDP]"],
        ),
        (lambda live: live["spec"]["selector"].update(app="other"), ["spec.selector.app"]),
    ],
)
def test_service_ports_by_port_and_default_protocol(edit: Edit, paths: list[str]) -> None:
    live = service_live()
    edit(live)
    assert detect(service_desired(), live).paths == tuple(paths)


@pytest.mark.parametrize(
    ("edit", "paths"),
    [
        (lambda live: None, []),
        (lambda live: live["data"].update(password=b64("changed")), ["data.password"]),
        (lambda live: live["data"].pop("user"), ["data.user"]),
        (lambda live: live["data"].update({"ca.crt": b64("other")}), ['data["ca.crt"]']),
        (lambda live: live["data"].update(extra=b64("x")), []),
    ],
)
def test_secret_string_data_compares_as_its_base64_data(edit: Edit, paths: list[str]) -> None:
    live = secret_live()
    edit(live)
    assert detect(secret_desired(), live).paths == tuple(paths)


def test_secret_drift_report_carries_no_value() -> None:
    live = secret_live()
    live["data"]["password"] = b64("changed")
    drift = detect(secret_desired(), live)
    assert "s3cret" not in repr(drift) and b64("s3cret") not in repr(drift)


def test_pvc_quantity_and_finalizers() -> None:
    assert detect(pvc_desired(), pvc_live()) == Drift()
    desired = pvc_desired()
    desired["metadata"]["finalizers"] = ["example.com/keep"]
    desired["spec"]["resources"]["requests"]["storage"] = "1Gi"
    assert detect(desired, pvc_live()).paths == (
        "metadata.finalizers[example.com/keep]",
        "spec.resources.requests.storage",
    )


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1000m", "1", True),
        ("0.5", "500m", True),
        (0.5, "500m", True),
        ("1Gi", "1073741824", True),
        ("1024Mi", "1Gi", True),
        ("1.5Gi", "1536Mi", True),
        ("1e3", "1k", True),
        ("1E3", "1000", True),
        (2, "2", True),
        ("1M", "1Mi", False),
        ("100m", "0.11", False),
        ("0.0000000001", "1n", True),  # rounded up to the nano, as the server does
    ],
)
def test_quantity_normalisation(a: Any, b: Any, equal: bool) -> None:
    desired = {"kind": "ResourceQuota", "spec": {"hard": {"requests.cpu": a}}}
    live = {"kind": "ResourceQuota", "spec": {"hard": {"requests.cpu": b}}, "status": {}}
    assert (detect(desired, live) == Drift()) is equal


@pytest.mark.parametrize("text", ["", "1Gb", "abc", "1.2.3", "Gi", "--1"])
def test_non_quantities_parse_to_none(text: str) -> None:
    assert parse_quantity(text) is None


def test_parse_quantity_values() -> None:
    assert parse_quantity("250m") == Decimal("0.25")
    assert parse_quantity("2Ki") == Decimal(2048)
    assert parse_quantity(True) is None


def test_quantities_are_only_normalised_where_they_are_quantities() -> None:
    desired = {"kind": "ConfigMap", "data": {"version": "1.0"}}
    live = {"kind": "ConfigMap", "data": {"version": "1"}}
    assert detect(desired, live).paths == ("data.version",)


@pytest.mark.parametrize(
    ("want", "have", "drifted"),
    [
        (True, 1, True),
        (80, "80", False),
        ("8080", 8080, False),
        (1.0, 1, False),
        (False, None, False),
        (0, None, False),
        ("", None, False),
        ({}, None, False),
        ([], None, False),
        ({"a": {}}, None, False),
        ({"a": 1}, None, True),
        ([1], None, True),
        ([], [1], True),
        ([1, 2], [2, 1], True),
        ({"a": 1}, "x", True),
        ("x", {"a": 1}, True),
    ],
)
def test_scalar_and_empty_value_rules(want: Any, have: Any, drifted: bool) -> None:
    desired = {"kind": "Thing", "spec": {"field": want}}
    live: Obj = {"kind": "Thing", "spec": {} if have is None else {"field": have}}
    assert detect(desired, live).drifted is drifted


def test_unkeyed_list_of_maps_is_compared_by_position_as_subsets() -> None:
    desired: Obj = {
        "kind": "NetworkPolicy",
        "spec": {"ingress": [{"ports": [{"port": 80}]}, {"ports": [{"port": 443}]}]},
    }
    live = copy.deepcopy(desired)
    for rule in live["spec"]["ingress"]:
        rule["ports"][0]["protocol"] = "TCP"
    assert detect(desired, live) == Drift()
    live["spec"]["ingress"].reverse()
    assert detect(desired, live).paths == (
        "spec.ingress[0].ports[port=80]",
        "spec.ingress[1].ports[port=443]",
    )


def test_list_with_repeated_keys_falls_back_to_position() -> None:
    desired: Obj = {"kind": "Thing", "spec": {"env": [{"name": "A", "value": "1"}, {"name": "A"}]}}
    live: Obj = {"kind": "Thing", "spec": {"env": [{"name": "A", "value": "1"}, {"name": "A"}]}}
    assert detect(desired, live) == Drift()
    live["spec"]["env"].reverse()
    assert detect(desired, live).paths == ("spec.env[0].value",)


def test_identical_objects_never_drift() -> None:
    for make in (deployment_live, service_live, secret_live, pvc_live):
        assert detect(make(), make()) == Drift(), make.__name__


def test_inputs_are_not_mutated() -> None:
    desired, live = secret_desired(), secret_live()
    detect(desired, live)
    assert desired == secret_desired() and live == secret_live()


def test_describe_shortens_long_reports() -> None:
    drift = Drift(paths=tuple(f"spec.f{i}" for i in range(7)))
    assert drift.describe(limit=2) == "spec.f0, spec.f1 (+5 more)"


def test_a_narrowed_label_selector_is_drift() -> None:
    desired = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "w"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    live = {
        **desired,
        "spec": {"podSelector": {"matchLabels": {"nobody": "x"}}, "policyTypes": ["Ingress"]},
    }
    assert detect(desired, live).drifted
    assert not detect(desired, {**desired}).drifted
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}},
    }
    widened = {**deployment, "spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}}}
    assert detect(deployment, widened).drifted


@pytest.mark.parametrize(
    "field", ["automountServiceAccountToken", "allowPrivilegeEscalation", "runAsUser"]
)
def test_a_removed_safe_pointer_value_is_drift(field: str) -> None:
    value = 0 if field == "runAsUser" else False
    desired = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {field: value}}
    assert detect(desired, {**desired, "spec": {}}).drifted
    assert not detect(desired, {**desired, "spec": {field: value}}).drifted
