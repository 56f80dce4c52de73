"""The manifest-folder target against real files in a temporary folder and real inotify.

Policies are the example bundles' YAML (``bundles/hello-web``, ``bundles/baseline``) in the
state store's layer shape. No test sleeps for a fixed time: watcher tests poll with a short
deadline; to show that something did *not* happen, a test waits for a later event that did.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.bundle.model import Mode
from edge_agent.errors import TargetUnavailableError
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.manifest_dir import Layout, ManifestDirTarget
from edge_agent.reconcile.objects import DesiredObject, desired_objects
from edge_agent.reconcile.target import Action, CycleReport

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
ENFORCE, AUDIT = Mode.ENFORCE, Mode.AUDIT


def store_layers(bundle: str) -> list[dict[str, Any]]:
    """A bundle folder's layers in the state store's shape."""
    root = BUNDLES / bundle
    profile = yaml.safe_load((root / "profile.yaml").read_text())
    layers = []
    for layer in profile["layers"]:
        manifests = []
        for file in sorted((root / layer["path"]).iterdir()):
            path = f"{layer['path']}/{file.name}"
            objects = load_manifests(file.read_bytes(), path=path, limits=YamlLimits())
            manifests.append({"path": path, "objects": list(objects)})
        layers.append({"name": layer["name"], "manifests": manifests})
    return layers


def hello_web() -> tuple[DesiredObject, ...]:
    return desired_objects(store_layers("hello-web"))


def hello_web_and_baseline() -> tuple[DesiredObject, ...]:
    """hello-web's layers plus baseline's (renamed ``site``): three layers."""
    baseline = store_layers("baseline")
    baseline[0]["name"] = "site"
    return desired_objects(store_layers("hello-web") + baseline)


def actions(report: CycleReport) -> set[Action]:
    return {result.action for result in report.results}


def agent_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


LAYOUTS = {
    Layout.FLAT: {"base": "edge-agent-00-base.yaml", "app": "edge-agent-01-app.yaml"},
    Layout.PER_LAYER_DIR: {
        "base": "edge-agent-base/manifests.yaml",
        "app": "edge-agent-app/manifests.yaml",
    },
}


@pytest.fixture(params=list(Layout), ids=lambda layout: layout.value)
def layout(request: pytest.FixtureRequest) -> Layout:
    assert isinstance(request.param, Layout)
    return request.param


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "manifests"
    path.mkdir()
    return path


def first_cycle(
    folder: Path, layout: Layout, desired: tuple[DesiredObject, ...] | None = None
) -> tuple[ManifestDirTarget, CycleReport]:
    target = ManifestDirTarget(folder, layout=layout)
    report = target.reconcile(desired or hello_web(), Inventory(), mode=ENFORCE)
    return target, report


def test_first_cycle_writes_one_file_per_layer(folder: Path, layout: Layout) -> None:
    desired = hello_web()
    target, report = first_cycle(folder, layout, desired)

    assert actions(report) == {Action.CREATED}
    assert [r.ref for r in report.results] == [obj.ref for obj in desired]
    assert all(r.health is None for r in report.results)
    assert report.inventory == Inventory.of(desired)
    assert agent_files(folder) == sorted(LAYOUTS[layout].values())
    for layer, rel in LAYOUTS[layout].items():
        text = (folder / rel).read_text()
        assert text.startswith("# Managed by edge-agent")
        documents = list(yaml.safe_load_all(text))
        assert documents == [dict(obj.manifest) for obj in desired if obj.layer == layer]
    # Atomic writes leave no temp files; only the index is a dot file.
    leftovers = [p.name for p in folder.rglob(".*")]
    assert leftovers == [".edge-agent-index.json"]
    assert target.name == "manifest-dir"


def test_second_cycle_is_unchanged_and_writes_nothing(folder: Path, layout: Layout) -> None:
    target, report = first_cycle(folder, layout)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    # Make any rewrite visible even on coarse timestamps.
    for path in before:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    second = target.reconcile(hello_web(), report.inventory, mode=ENFORCE)

    assert actions(second) == {Action.UNCHANGED}
    assert second.inventory == report.inventory
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@pytest.mark.parametrize("mode", [ENFORCE, AUDIT], ids=lambda m: m.value)
def test_file_edited_behind_the_back(folder: Path, layout: Layout, mode: Mode) -> None:
    target, report = first_cycle(folder, layout)
    app = folder / LAYOUTS[layout]["app"]
    rendered = app.read_bytes()
    edited = rendered.replace(b"replicas: 2", b"replicas: 9")
    assert edited != rendered
    app.write_bytes(edited)

    again = target.reconcile(hello_web(), report.inventory, mode=mode)

    by_layer = {obj.ref: obj.layer for obj in hello_web()}
    for result in again.results:
        if by_layer[result.ref] == "base":
            assert result.action is Action.UNCHANGED
        elif mode is ENFORCE:
            assert result.action is Action.HEALED
            assert "behind" in result.detail
        else:
            assert result.action is Action.DRIFTED
    assert app.read_bytes() == (rendered if mode is ENFORCE else edited)


@pytest.mark.parametrize("mode", [ENFORCE, AUDIT], ids=lambda m: m.value)
def test_deleted_file_is_restored(folder: Path, layout: Layout, mode: Mode) -> None:
    target, report = first_cycle(folder, layout)
    base = folder / LAYOUTS[layout]["base"]
    rendered = base.read_bytes()
    base.unlink()

    again = target.reconcile(hello_web(), report.inventory, mode=mode)

    base_actions = {r.action for r in again.results if r.ref.kind == "Namespace"}
    if mode is ENFORCE:
        assert base_actions == {Action.CREATED}
        assert base.read_bytes() == rendered
    else:
        assert base_actions == {Action.DRIFTED}
        assert not base.exists()


@pytest.mark.parametrize("mode", [ENFORCE, AUDIT], ids=lambda m: m.value)
def test_layer_removed_from_policy_is_pruned(folder: Path, layout: Layout, mode: Mode) -> None:
    desired = hello_web()
    target, report = first_cycle(folder, layout, desired)
    app = folder / LAYOUTS[layout]["app"]
    only_base = tuple(obj for obj in desired if obj.layer == "base")
    app_refs = {obj.ref for obj in desired if obj.layer == "app"}

    again = target.reconcile(only_base, report.inventory, mode=mode)

    expected = Action.PRUNED if mode is ENFORCE else Action.WOULD_PRUNE
    assert {r.ref: r.action for r in again.results if r.ref in app_refs} == dict.fromkeys(
        app_refs, expected
    )
    assert {r.action for r in again.results if r.ref not in app_refs} == {Action.UNCHANGED}
    if mode is ENFORCE:
        assert not app.exists()
        assert not app.parent.exists() or app.parent == folder
        assert again.inventory == Inventory.of(only_base)
        # The next cycle has nothing left to prune.
        third = target.reconcile(only_base, again.inventory, mode=ENFORCE)
        assert actions(third) == {Action.UNCHANGED}
    else:
        assert app.exists()
        assert again.inventory == report.inventory


def test_layers_get_numbered_files_in_policy_order(folder: Path) -> None:
    _, report = first_cycle(folder, Layout.FLAT, hello_web_and_baseline())
    assert agent_files(folder) == [
        "edge-agent-00-base.yaml",
        "edge-agent-01-app.yaml",
        "edge-agent-02-site.yaml",
    ]
    assert report.count(Action.CREATED) == len(hello_web_and_baseline())


def test_policy_change_rewrites_the_layer_file(folder: Path, layout: Layout) -> None:
    desired = hello_web()
    target, report = first_cycle(folder, layout, desired)
    extra = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "extra", "namespace": "hello-web"},
    }
    layers = store_layers("hello-web")
    layers[1]["manifests"].append({"path": "layers/app/extra.yaml", "objects": [extra]})
    changed = desired_objects(layers)

    again = target.reconcile(changed, report.inventory, mode=ENFORCE)

    for obj, result in zip(changed, again.results, strict=True):
        if obj.layer == "base":
            assert result.action is Action.UNCHANGED
        elif obj.ref.name == "extra":
            assert result.action is Action.CREATED
        else:
            assert (result.action, result.detail) == (Action.HEALED, "policy changed")
    app = folder / LAYOUTS[layout]["app"]
    assert list(yaml.safe_load_all(app.read_text()))[-1]["metadata"]["name"] == "extra"
    assert again.inventory == Inventory.of(changed)


def test_reordered_layers_rename_their_files(folder: Path) -> None:
    desired = hello_web_and_baseline()
    target, report = first_cycle(folder, Layout.FLAT, desired)
    reordered = tuple(o for o in desired if o.layer == "site") + tuple(
        o for o in desired if o.layer != "site"
    )

    again = target.reconcile(reordered, report.inventory, mode=ENFORCE)

    assert actions(again) == {Action.CREATED}  # every file has a new name
    assert agent_files(folder) == [
        "edge-agent-00-site.yaml",
        "edge-agent-01-base.yaml",
        "edge-agent-02-app.yaml",
    ]


def test_without_its_index_the_agent_prunes_nothing(folder: Path, layout: Layout) -> None:
    desired = hello_web()
    target, report = first_cycle(folder, layout, desired)
    (folder / ".edge-agent-index.json").write_bytes(b"{not json")
    only_base = tuple(obj for obj in desired if obj.layer == "base")

    again = target.reconcile(only_base, report.inventory, mode=ENFORCE)

    # The objects leave the inventory (their file is no longer the agent's to keep), but a
    # file the agent cannot prove it wrote is left where it is.
    assert (folder / LAYOUTS[layout]["app"]).is_file()
    assert {r.action for r in again.results if r.ref.kind == "Namespace"} == {Action.UNCHANGED}
    # The index is rewritten and knows the desired files again.
    third = target.reconcile(only_base, again.inventory, mode=ENFORCE)
    assert actions(third) == {Action.UNCHANGED}


def test_foreign_files_are_never_touched(folder: Path, layout: Layout) -> None:
    foreign = {
        "edge-agent-extra.yaml": b"# written by a person\n",
        "edge-agent-07-old.yaml": b"# looks like ours, is not\n",
        "traefik.yaml": b"kind: HelmChart\n",
    }
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    (folder / "edge-agent-app").mkdir()
    (folder / "edge-agent-app" / "extra.yaml").write_bytes(b"# theirs\n")
    stamps = {name: (folder / name).stat().st_mtime_ns for name in foreign}

    desired = hello_web()
    target, report = first_cycle(folder, layout, desired)
    only_base = tuple(obj for obj in desired if obj.layer == "base")
    target.reconcile(only_base, report.inventory, mode=ENFORCE)
    target.reconcile((), Inventory.of(only_base), mode=ENFORCE)

    for name, data in foreign.items():
        assert (folder / name).read_bytes() == data
        assert (folder / name).stat().st_mtime_ns == stamps[name]
    assert (folder / "edge-agent-app" / "extra.yaml").read_bytes() == b"# theirs\n"
    assert agent_files(folder) == sorted([*foreign, "edge-agent-app/extra.yaml"])


def test_unwritable_layer_file_fails_only_that_layer(folder: Path) -> None:
    # Something that is not a file squats the app layer's path: that write fails.
    (folder / "edge-agent-01-app.yaml").mkdir()
    desired = hello_web()

    report = ManifestDirTarget(folder).reconcile(desired, Inventory(), mode=ENFORCE)

    for obj, result in zip(desired, report.results, strict=True):
        assert result.ref == obj.ref
        if obj.layer == "base":
            assert result.action is Action.CREATED
        else:
            assert result.action is Action.FAILED
            assert "edge-agent-01-app.yaml" in result.detail
    assert report.inventory == Inventory.of(o for o in desired if o.layer == "base")
    assert (folder / "edge-agent-00-base.yaml").is_file()
    assert (folder / "edge-agent-01-app.yaml").is_dir()


@pytest.mark.parametrize("mode", [ENFORCE, AUDIT], ids=lambda m: m.value)
def test_missing_folder_is_unavailable(tmp_path: Path, mode: Mode) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(TargetUnavailableError, match="no-such-folder") as caught:
        ManifestDirTarget(missing).reconcile(hello_web(), Inventory(), mode=mode)
    assert "\n" not in str(caught.value)
    assert not missing.exists()


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "manifests").write_bytes(b"")
    with pytest.raises(TargetUnavailableError, match="not a folder"):
        ManifestDirTarget(tmp_path / "manifests").reconcile(hello_web(), Inventory(), mode=ENFORCE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_read_only_folder_is_unavailable_in_enforce(folder: Path) -> None:
    folder.chmod(0o500)
    try:
        with pytest.raises(TargetUnavailableError, match="not writable"):
            ManifestDirTarget(folder).reconcile(hello_web(), Inventory(), mode=ENFORCE)
    finally:
        folder.chmod(0o700)


# -- the watcher -------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def watched(folder: Path, layout: Layout) -> Iterator[tuple[ManifestDirTarget, Calls, CycleReport]]:
    target, report = first_cycle(folder, layout)
    calls = Calls()
    watch = target.watch(calls)
    try:
        yield target, calls, report
    finally:
        watch.stop()


def test_watcher_reports_an_edit(
    folder: Path, layout: Layout, watched: tuple[ManifestDirTarget, Calls, CycleReport]
) -> None:
    target, calls, report = watched
    app = folder / LAYOUTS[layout]["app"]
    app.write_bytes(app.read_bytes() + b"# edited\n")
    wait_until(lambda: calls.count >= 1, "on_change after an edit", timeout_s=2.0)

    # The heal (the agent's own atomic write) does not call back; a later delete does.
    seen = calls.count
    healed = target.reconcile(hello_web(), report.inventory, mode=ENFORCE)
    assert Action.HEALED in actions(healed)
    (folder / LAYOUTS[layout]["base"]).unlink()
    wait_until(lambda: calls.count > seen, "on_change after a delete", timeout_s=2.0)
    assert calls.count == seen + 1  # the heal's rename was ignored, the delete counted once


def test_watcher_reports_a_delete_and_a_move(
    folder: Path, layout: Layout, watched: tuple[ManifestDirTarget, Calls, CycleReport]
) -> None:
    _, calls, _ = watched
    (folder / LAYOUTS[layout]["base"]).unlink()
    wait_until(lambda: calls.count >= 1, "on_change after a delete", timeout_s=2.0)
    seen = calls.count
    app = folder / LAYOUTS[layout]["app"]
    app.rename(folder / "moved-away.txt")
    wait_until(lambda: calls.count > seen, "on_change after a move", timeout_s=2.0)


def test_watcher_ignores_own_writes_and_foreign_files(
    folder: Path, layout: Layout, watched: tuple[ManifestDirTarget, Calls, CycleReport]
) -> None:
    target, calls, report = watched
    desired = hello_web()
    # Own writes: a new layer written, a layer pruned, all by the agent.
    target.reconcile(hello_web_and_baseline(), report.inventory, mode=ENFORCE)
    target.reconcile(desired, Inventory.of(hello_web_and_baseline()), mode=ENFORCE)
    (folder / "someone-elses.yaml").write_bytes(b"# theirs\n")
    # A barrier: an edit of an agent file, reported only after the events above.
    app = folder / LAYOUTS[layout]["app"]
    app.write_bytes(b"# edited\n")
    wait_until(lambda: calls.count >= 1, "on_change after the barrier edit", timeout_s=2.0)
    time.sleep(0.6)  # one debounce window: a second call would have arrived by now
    assert calls.count == 1


def test_watcher_stop_is_idempotent(folder: Path) -> None:
    target, _ = first_cycle(folder, Layout.FLAT)
    watch = target.watch(lambda: None)
    watch.stop()
    watch.stop()


def test_watching_a_missing_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TargetUnavailableError, match="missing"):
        ManifestDirTarget(tmp_path / "missing").watch(lambda: None)
