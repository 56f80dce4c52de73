"""One reconcile cycle through the state store, with a target fake at the Target seam."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from edge_agent.bundle.model import Mode
from edge_agent.enforcer import run_cycle
from edge_agent.errors import TargetUnavailableError
from edge_agent.importer import import_file
from edge_agent.reconcile.health import Health, HealthStatus
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import DesiredObject
from edge_agent.reconcile.target import Action, CycleReport, ObjectResult
from tests.conftest import FakeClock, Site


class FakeTarget:
    """A Target that records what it was asked and answers as told (not a real destination)."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[int, Mode, int]] = []
        self.down = False
        self.degrade: str | None = None

    def reconcile(
        self, desired: Sequence[DesiredObject], inventory: Inventory, *, mode: Mode
    ) -> CycleReport:
        self.calls.append((len(desired), mode, len(inventory)))
        if self.down:
            raise TargetUnavailableError("cluster API https://10.0.0.1:6443 refused the connection")
        results = []
        for obj in desired:
            status = HealthStatus.READY
            message = f"{obj.ref.short} ready"
            if obj.ref.kind == self.degrade:
                status, message = HealthStatus.DEGRADED, f"{obj.ref.short} 1/3 ready"
            action = Action.UNCHANGED if obj.ref in inventory else Action.CREATED
            results.append(ObjectResult(obj.ref, action, "", Health(status, "X", message)))
        return CycleReport(tuple(results), inventory.merge(applied=desired, pruned=()))


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


def test_nothing_to_do_before_a_policy(store, target: FakeTarget, clock: FakeClock) -> None:
    assert run_cycle(store, target, clock) is None
    assert target.calls == []


def test_a_cycle_is_recorded_with_its_inventory(
    store, site: Site, make_bundle, target, clock
) -> None:
    import_file(make_bundle(3), store=store, config=site.config, clock=clock)
    first = run_cycle(store, target, clock)
    assert first is not None
    assert first["line"] == "revision 3 · 4 objects · 0 drifted · 4 ready"
    assert first["counts"]["created"] == 4
    second = run_cycle(store, target, clock)
    assert second is not None and second["counts"]["unchanged"] == 4
    assert target.calls == [(4, Mode.ENFORCE, 0), (4, Mode.ENFORCE, 4)]
    assert len(Inventory.from_json(store.inventory())) == 4
    status = json.loads(site.run("status", "--json").stdout)
    assert status["verdict"] == "healthy"
    assert status["last_cycle"]["line"] == second["line"]
    assert "enforcement  fake (enforce)" in site.run("status").stdout


def test_a_degraded_object_degrades_the_status(
    store, site: Site, make_bundle, target, clock
) -> None:
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    target.degrade = "Deployment"
    summary = run_cycle(store, target, clock)
    assert summary is not None and "1 degraded: deployment/hello-web 1/3 ready" in summary["line"]
    status = site.run("status", "--json")
    assert status.returncode == 1
    assert "deployment/hello-web 1/3 ready" in json.loads(status.stdout)["reason"]


def test_an_unreachable_target_is_recorded_and_keeps_the_inventory(
    store, site: Site, make_bundle, target, clock
) -> None:
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    run_cycle(store, target, clock)
    before = store.inventory()
    target.down = True
    with pytest.raises(TargetUnavailableError):
        run_cycle(store, target, clock)
    assert store.inventory() == before
    last = store.last_cycle()
    assert last is not None and "refused the connection" in last["error"]
    status = json.loads(site.run("status", "--json").stdout)
    assert status["verdict"] == "degraded" and "enforcement did not run" in status["reason"]
    target.down = False
    assert run_cycle(store, target, clock) is not None
    assert json.loads(site.run("status", "--json").stdout)["verdict"] == "healthy"
