"""Desired objects from the stored policy, their order, ownership labels and the inventory."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from edge_agent.errors import StateCorruptError
from edge_agent.reconcile.inventory import Inventory, InventoryEntry, manifest_digest
from edge_agent.reconcile.objects import (
    LAYER_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    DesiredObject,
    DuplicateObjectError,
    ObjectRef,
    PolicyObjectError,
    apply_order,
    delete_order,
    desired_objects,
    layer_selector,
    owned,
    ref_of,
)


def obj(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def layer(name: str, *files: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "name": name,
        "manifests": [
            {"path": path, "sha256": "0" * 64, "text": "", "objects": objects}
            for path, objects in files
        ],
    }


def policy_layers() -> list[dict[str, Any]]:
    """Three layers, as the state store keeps them, deliberately in an awkward order."""
    return [
        layer(
            "base",
            (
                "base/app.yaml",
                [
                    obj("apps/v1", "Deployment", "web", "shop"),
                    obj("v1", "ConfigMap", "web", "shop"),
                    obj("v1", "Namespace", "shop"),
                ],
            ),
            (
                "base/crd.yaml",
                [
                    obj("example.com/v1", "Widget", "w1", "shop"),
                    obj(
                        "apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.example.com"
                    ),
                ],
            ),
        ),
        layer(
            "monitoring",
            (
                "monitoring/all.yaml",
                [
                    obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "v"),
                    obj("apps/v1", "DaemonSet", "node-exporter", "monitoring"),
                    obj("v1", "ServiceAccount", "node-exporter", "monitoring"),
                    obj("rbac.authorization.k8s.io/v1", "ClusterRole", "node-exporter"),
                    obj("v1", "Namespace", "monitoring"),
                ],
            ),
        ),
        layer(
            "site",
            (
                "site/patch.yaml",
                [obj("v1", "Service", "web", "shop"), obj("v1", "Secret", "s", "shop")],
            ),
        ),
    ]


# --- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "ref"),
    [
        (
            obj("apps/v1", "Deployment", "web", "shop"),
            ObjectRef("apps", "Deployment", "shop", "web"),
        ),
        (obj("v1", "ConfigMap", "c", "shop"), ObjectRef("", "ConfigMap", "shop", "c")),
        (obj("v1", "Namespace", "shop"), ObjectRef("", "Namespace", "", "shop")),
        (
            obj("rbac.authorization.k8s.io/v1", "ClusterRole", "r"),
            ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "r"),
        ),
    ],
)
def test_ref_of(manifest: dict[str, Any], ref: ObjectRef) -> None:
    assert ref_of(manifest) == ref


def test_version_is_not_part_of_identity() -> None:
    v1 = obj("autoscaling/v1", "HorizontalPodAutoscaler", "web", "shop")
    v2 = obj("autoscaling/v2", "HorizontalPodAutoscaler", "web", "shop")
    assert ref_of(v1) == ref_of(v2)


@pytest.mark.parametrize(
    "manifest",
    [
        {"kind": "ConfigMap", "metadata": {"name": "c"}},
        {"apiVersion": "v1", "metadata": {"name": "c"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}},
        {"apiVersion": "v1", "kind": "ConfigMap"},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ""}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": 3}},
    ],
)
def test_ref_of_refuses_objects_without_identity(manifest: dict[str, Any]) -> None:
    with pytest.raises(PolicyObjectError):
        ref_of(manifest)


def test_ref_str_and_short() -> None:
    ref = ObjectRef("apps", "Deployment", "shop", "web")
    assert str(ref) == "Deployment.apps shop/web"
    assert ref.short == "deployment/web"
    assert str(ObjectRef("", "Namespace", "", "shop")) == "Namespace shop"


# --- flattening and duplicates -----------------------------------------------------------------


def test_desired_objects_flatten_in_policy_order_with_layer_and_path() -> None:
    objects = desired_objects(policy_layers())
    assert [o.ref.name for o in objects][:5] == ["web", "web", "shop", "w1", "widgets.example.com"]
    assert [o.layer for o in objects] == ["base"] * 5 + ["monitoring"] * 5 + ["site"] * 2
    assert objects[3].path == "base/crd.yaml"
    assert objects[3].api_version == "example.com/v1"


def test_desired_manifests_carry_ownership_labels_and_the_store_is_untouched() -> None:
    layers = policy_layers()
    before = copy.deepcopy(layers)
    objects = desired_objects(layers)
    assert layers == before
    for item in objects:
        labels = item.manifest["metadata"]["labels"]
        assert labels[MANAGED_BY_LABEL] == "edge-agent"
        assert labels[LAYER_LABEL] == item.layer


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (obj("apps/v1", "Deployment", "web", "shop"), obj("apps/v1", "Deployment", "web", "shop")),
        # the same object under another version is still the same object
        (
            obj("autoscaling/v1", "HorizontalPodAutoscaler", "h", "shop"),
            obj("autoscaling/v2", "HorizontalPodAutoscaler", "h", "shop"),
        ),
    ],
)
def test_duplicates_across_layers_are_refused(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    layers = [layer("base", ("a.yaml", [first])), layer("site", ("b.yaml", [second]))]
    with pytest.raises(DuplicateObjectError) as caught:
        desired_objects(layers)
    assert caught.value.ref == ref_of(first)
    assert "layer 'base' file 'a.yaml'" in str(caught.value)
    assert "layer 'site' file 'b.yaml'" in str(caught.value)
    assert not caught.value.transient


@pytest.mark.parametrize(
    "other",
    [
        obj("apps/v1", "Deployment", "web", "other-ns"),
        obj("apps/v1", "StatefulSet", "web", "shop"),
        obj("example.com/v1", "Deployment", "web", "shop"),
    ],
)
def test_same_name_elsewhere_is_not_a_duplicate(other: dict[str, Any]) -> None:
    layers = [layer("base", ("a.yaml", [obj("apps/v1", "Deployment", "web", "shop"), other]))]
    assert len(desired_objects(layers)) == 2


# --- ownership -------------------------------------------------------------------------------


def test_owned_copies_and_overrides_a_foreign_managed_by() -> None:
    manifest = obj("v1", "ConfigMap", "c", "shop")
    manifest["metadata"]["labels"] = {"app": "c", MANAGED_BY_LABEL: "Helm"}
    manifest["data"] = {"k": "v"}
    before = copy.deepcopy(manifest)
    result = owned(manifest, "base")
    assert manifest == before
    assert result["metadata"]["labels"] == {
        "app": "c",
        MANAGED_BY_LABEL: "edge-agent",
        LAYER_LABEL: "base",
    }
    result["data"]["k"] = "changed"
    assert manifest["data"]["k"] == "v"


def test_selectors() -> None:
    assert MANAGED_SELECTOR == "app.kubernetes.io/managed-by=edge-agent"
    assert layer_selector("base") == f"{MANAGED_SELECTOR},edge-agent.io/layer=base"


# --- order -----------------------------------------------------------------------------------


def kinds(objects: tuple[DesiredObject, ...]) -> list[str]:
    return [f"{o.ref.kind}/{o.ref.name}" for o in objects]


def test_apply_order_namespaces_and_crds_first_then_layers_by_kind_rank() -> None:
    ordered = apply_order(desired_objects(policy_layers()))
    assert kinds(ordered) == [
        "Namespace/shop",
        "Namespace/monitoring",
        "CustomResourceDefinition/widgets.example.com",
        # layer base
        "ConfigMap/web",
        "Deployment/web",
        "Widget/w1",
        # layer monitoring
        "ServiceAccount/node-exporter",
        "ClusterRole/node-exporter",
        "DaemonSet/node-exporter",
        "ValidatingWebhookConfiguration/v",
        # layer site
        "Secret/s",
        "Service/web",
    ]


def test_apply_order_is_stable_within_a_rank() -> None:
    layers = [
        layer("base", ("a.yaml", [obj("v1", "ConfigMap", name, "ns") for name in "zyxw"])),
    ]
    assert [o.ref.name for o in apply_order(desired_objects(layers))] == list("zyxw")


def test_apply_order_is_a_permutation_and_idempotent() -> None:
    objects = desired_objects(policy_layers())
    once = apply_order(objects)
    assert sorted(o.ref for o in once) == sorted(o.ref for o in objects)
    assert [o.ref for o in apply_order(once)] == [o.ref for o in once]


def test_delete_order_reverses_apply_order_namespaces_last() -> None:
    refs = [o.ref for o in apply_order(desired_objects(policy_layers()))]
    ordered = delete_order(refs)
    assert [f"{r.kind}/{r.name}" for r in ordered] == [
        "ValidatingWebhookConfiguration/v",
        "Widget/w1",
        "DaemonSet/node-exporter",
        "Deployment/web",
        "Service/web",
        "Secret/s",
        "ConfigMap/web",
        "ClusterRole/node-exporter",
        "ServiceAccount/node-exporter",
        "CustomResourceDefinition/widgets.example.com",
        "Namespace/monitoring",
        "Namespace/shop",
    ]


# --- inventory -------------------------------------------------------------------------------

DEPLOY = ObjectRef("apps", "Deployment", "shop", "web")
OLD_CM = ObjectRef("", "ConfigMap", "shop", "old")
OLD_NS = ObjectRef("", "Namespace", "", "old")
HPA = ObjectRef("autoscaling", "HorizontalPodAutoscaler", "shop", "web")


def desired(*manifests: dict[str, Any]) -> tuple[DesiredObject, ...]:
    return desired_objects([layer("base", ("a.yaml", list(manifests)))])


def test_diff_prunes_only_what_was_applied_and_is_no_longer_desired() -> None:
    inventory = Inventory(
        frozenset(
            {
                InventoryEntry(DEPLOY, "apps/v1"),
                InventoryEntry(OLD_CM, "v1"),
                InventoryEntry(OLD_NS, "v1"),
                InventoryEntry(HPA, "autoscaling/v1"),
            }
        )
    )
    want = desired(
        obj("apps/v1", "Deployment", "web", "shop"),
        obj("autoscaling/v2", "HorizontalPodAutoscaler", "web", "shop"),  # version bump: kept
        obj("v1", "Service", "web", "shop"),
    )
    diff = inventory.diff(want)
    assert diff.to_apply == want
    assert diff.added == {ObjectRef("", "Service", "shop", "web")}
    # ConfigMap before its Namespace; an unmanaged object is never in the inventory, so never here
    assert diff.to_prune == (InventoryEntry(OLD_CM, "v1"), InventoryEntry(OLD_NS, "v1"))


def test_empty_inventory_prunes_nothing() -> None:
    diff = Inventory().diff(desired(obj("v1", "ConfigMap", "c", "shop")))
    assert diff.to_prune == ()
    assert diff.added == {ObjectRef("", "ConfigMap", "shop", "c")}


def test_merge_adds_successes_and_keeps_failed_prunes_for_retry() -> None:
    before = Inventory(
        frozenset(
            {
                InventoryEntry(OLD_CM, "v1"),
                InventoryEntry(OLD_NS, "v1"),
                InventoryEntry(HPA, "autoscaling/v1"),
            }
        )
    )
    want = desired(
        obj("apps/v1", "Deployment", "web", "shop"),
        obj("autoscaling/v2", "HorizontalPodAutoscaler", "web", "shop"),
        obj("v1", "Service", "web", "shop"),  # its apply failed
    )
    after = before.merge(applied=want[:2], pruned=[OLD_CM])  # deleting OLD_NS failed
    assert after.by_ref() == {
        DEPLOY: "apps/v1",
        HPA: "autoscaling/v2",
        OLD_NS: "v1",
    }
    assert ObjectRef("", "Service", "shop", "web") not in after
    assert after.diff(want).to_prune == (InventoryEntry(OLD_NS, "v1"),)
    assert before.by_ref()[HPA] == "autoscaling/v1"  # values are not changed in place


def test_merge_accepts_entries_and_pruning_an_unknown_ref_is_harmless() -> None:
    after = Inventory().merge(applied=[InventoryEntry(DEPLOY, "apps/v1")], pruned=[OLD_CM])
    assert after == Inventory(frozenset({InventoryEntry(DEPLOY, "apps/v1")}))


def test_inventory_queries() -> None:
    inventory = Inventory.of(desired(obj("apps/v1", "Deployment", "web", "shop")))
    assert len(inventory) == 1
    assert DEPLOY in inventory and OLD_CM not in inventory
    assert inventory.api_version(DEPLOY) == "apps/v1"
    assert inventory.api_version(OLD_CM) is None
    assert inventory.refs == {DEPLOY}


def test_one_entry_per_ref() -> None:
    with pytest.raises(ValueError, match="more than once"):
        Inventory(
            frozenset(
                {InventoryEntry(HPA, "autoscaling/v1"), InventoryEntry(HPA, "autoscaling/v2")}
            )
        )


def test_json_round_trip_is_exact_and_deterministic() -> None:
    inventory = Inventory(
        frozenset(
            {
                InventoryEntry(DEPLOY, "apps/v1"),
                InventoryEntry(OLD_NS, "v1"),
                InventoryEntry(HPA, "autoscaling/v2"),
            }
        )
    )
    raw = json.loads(json.dumps(inventory.to_json()))
    assert Inventory.from_json(raw) == inventory
    assert json.dumps(inventory.to_json()) == json.dumps(Inventory.from_json(raw).to_json())
    assert raw["version"] == 1
    assert raw["entries"][0] == {
        "group": "",
        "kind": "Namespace",
        "namespace": "",
        "name": "old",
        "apiVersion": "v1",
    }
    assert Inventory.from_json(Inventory().to_json()) == Inventory()


GOOD_ENTRY = {"group": "", "kind": "ConfigMap", "namespace": "n", "name": "c", "apiVersion": "v1"}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"entries": []},
        {"version": 2, "entries": []},
        {"version": 1, "entries": {}},
        {"version": 1, "entries": [None]},
        {"version": 1, "entries": [{**GOOD_ENTRY, "extra": "x"}]},
        {"version": 1, "entries": [{k: v for k, v in GOOD_ENTRY.items() if k != "apiVersion"}]},
        {"version": 1, "entries": [{**GOOD_ENTRY, "name": 3}]},
        {"version": 1, "entries": [{**GOOD_ENTRY, "kind": ""}]},
        {"version": 1, "entries": [GOOD_ENTRY, {**GOOD_ENTRY, "apiVersion": "v2"}]},
        {"version": 1, "entries": [{**GOOD_ENTRY, "adopted": "yes"}]},
        {"version": 1, "entries": [{**GOOD_ENTRY, "digest": 3}]},
    ],
)
def test_damaged_inventory_json_is_a_corrupt_store(raw: Any) -> None:
    with pytest.raises(StateCorruptError):
        Inventory.from_json(raw)


def test_entries_of_older_agents_read_as_not_adopted_with_unknown_digest() -> None:
    (entry,) = Inventory.from_json({"version": 1, "entries": [GOOD_ENTRY]})
    assert entry == InventoryEntry(ObjectRef("", "ConfigMap", "n", "c"), "v1")
    assert not entry.adopted and entry.digest == ""
    assert entry.to_json() == GOOD_ENTRY  # written back in the old shape


def test_adopted_and_digest_round_trip() -> None:
    entry = InventoryEntry(DEPLOY, "apps/v1", "ab" * 32, adopted=True)
    raw = json.loads(json.dumps(Inventory(frozenset({entry})).to_json()))
    assert raw["entries"][0]["adopted"] is True and raw["entries"][0]["digest"] == "ab" * 32
    assert Inventory.from_json(raw) == Inventory(frozenset({entry}))
    assert Inventory.from_json(raw).entry(DEPLOY) == entry


def test_digest_is_of_the_canonical_manifest() -> None:
    (web,) = desired(obj("apps/v1", "Deployment", "web", "shop"))
    reordered = dict(reversed(list(web.manifest.items())))
    assert InventoryEntry.of(web).digest == manifest_digest(reordered)
    assert len(InventoryEntry.of(web).digest) == 64
    changed = copy.deepcopy(dict(web.manifest))
    changed["spec"] = {"replicas": 2}
    assert manifest_digest(changed) != InventoryEntry.of(web).digest


def test_merge_keeps_adopted_when_the_object_is_applied_again() -> None:
    (web,) = desired(obj("apps/v1", "Deployment", "web", "shop"))
    before = Inventory(frozenset({InventoryEntry(DEPLOY, "apps/v1", "", adopted=True)}))
    after = before.merge(applied=[web], pruned=[])
    assert after.entry(DEPLOY) == InventoryEntry.of(web, adopted=True)
    assert Inventory().merge(applied=[web], pruned=[]).entry(DEPLOY) == InventoryEntry.of(web)
