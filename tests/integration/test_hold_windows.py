"""The hold and maintenance windows: verified revisions kept pending until their time.

In-process with an injected clock (windows are moved through by the test, never waited
for), real signed bundles, the real store and the manifest-folder target; the CLI commands
``hold``/``release``/``status`` as real processes where the wall clock does not matter.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from edge_agent.clock import UTC
from edge_agent.control import hold, promote_if_due, release
from edge_agent.enforcer import run_cycle
from edge_agent.errors import BundleError
from edge_agent.importer import import_file
from edge_agent.reconcile.manifest_dir import ManifestDirTarget
from edge_agent.status import report
from tests.conftest import BundleMaker, FakeClock, Site
from tests.variants import BERLIN, WEDNESDAY_NOON, berlin_site, profile_variant


def revision(site: Site) -> int | None:
    with site.open_store() as store:
        policy = store.current_policy()
    return None if policy is None else int(policy["revision"])


def test_a_hold_keeps_new_revisions_pending_and_healing_goes_on(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    site = berlin_site(site)
    clock = FakeClock(WEDNESDAY_NOON)
    target = ManifestDirTarget(site.root / "m")
    first, second = make_bundle(1, now=clock.now()), make_bundle(2, "baseline", now=clock.now())
    with site.open_store() as store:
        store.provision(site.config.initial_root.read_bytes(), now=clock.now())
        assert (
            import_file(first, store=store, config=site.config, clock=clock).outcome == "committed"
        )
        run_cycle(store, target, clock, site.config)
        hold(store, "fair day at the site", clock)
        result = import_file(second, store=store, config=site.config, clock=clock)
        assert result.outcome == "pending"
        assert store.current_policy()["revision"] == 1  # type: ignore[index]
        assert store.trust().revision == 2  # counted: revision 1 is a rollback from now on
        # Drift healing of revision 1 goes on.
        victim = sorted((site.root / "m").glob("*.yaml"))[0]
        original = victim.read_text()
        victim.write_text(original + "\n# edited\n")
        summary = run_cycle(store, target, clock, site.config)
        assert summary is not None and summary["revision"] == 1 and victim.read_text() == original
        try:
            import_file(first, store=store, config=site.config, clock=clock)
        except BundleError as exc:
            assert exc.code.value == "rollback"
        else:
            raise AssertionError("revision 1 was accepted after revision 2")
        doc = report(store.view(), cluster_id="site-1", labels={}, source="t", now=clock.now())
        assert doc["verdict"] == "degraded" and "held on site" in doc["reason"]
        assert doc["pending"]["revision"] == 2 and doc["hold"]["reason"] == "fair day at the site"
        health = [json.loads(text) for _, text in store.outbox_batch(1000, 1 << 30)]
        last = [e for e in health if e["type"] == "health"][-1]["data"]
        assert last["hold"]["reason"] == "fair day at the site" and last["pending_revision"] == 2
        released, applied, waiting = release(store, site.config, clock)
        assert released is not None and applied == 2 and waiting is None
        assert store.current_policy()["revision"] == 2  # type: ignore[index]
        assert store.previous_policy()["revision"] == 1  # type: ignore[index]
        assert store.pending_policy() is None
        assert [i["result"] for i in store.imports()][-2:] == ["rejected", "applied"]


def test_a_revision_waits_for_the_maintenance_window_unless_urgent(
    site: Site, make_bundle: BundleMaker, tmp_path: Path
) -> None:
    site = berlin_site(site)
    clock = FakeClock(WEDNESDAY_NOON)
    sat = ["Sat 02:00-04:00"]
    first = make_bundle(
        1,
        profile_dir=profile_variant(tmp_path, "hello-web", maintenance_windows=sat),
        now=clock.now(),
    )
    second = make_bundle(
        2,
        profile_dir=profile_variant(tmp_path, "baseline", maintenance_windows=sat),
        now=clock.now(),
    )
    target = ManifestDirTarget(site.root / "m")
    with site.open_store() as store:
        store.provision(site.config.initial_root.read_bytes(), now=clock.now())
        import_file(first, store=store, config=site.config, clock=clock)
        assert (
            import_file(second, store=store, config=site.config, clock=clock).outcome == "pending"
        )
        doc = report(
            store.view(), cluster_id="s", labels={}, source="t", now=clock.now(), site_tz=BERLIN
        )
        assert doc["verdict"] == "healthy"  # waiting for its window is the plan, not a problem
        assert doc["pending"]["applies_at"] == "2026-11-28T02:00:00+01:00"
        clock.current = dt.datetime(2026, 11, 28, 1, 59, tzinfo=BERLIN).astimezone(UTC)
        assert promote_if_due(store, site.config, clock) is None
        clock.current = dt.datetime(2026, 11, 28, 2, 1, tzinfo=BERLIN).astimezone(UTC)
        summary = run_cycle(store, target, clock, site.config)  # the cycle applies it first
        assert summary is not None and summary["revision"] == 2

        # The next Wednesday: an urgent revision applies at once, an ordinary one waits.
        clock.current = WEDNESDAY_NOON + dt.timedelta(days=7)
        urgent = make_bundle(
            3,
            profile_dir=profile_variant(
                tmp_path, "hello-web", maintenance_windows=sat, urgent=True
            ),
            now=clock.now(),
        )
        ordinary = make_bundle(4, "baseline", now=clock.now())
        assert (
            import_file(urgent, store=store, config=site.config, clock=clock).outcome == "committed"
        )
        assert (
            import_file(ordinary, store=store, config=site.config, clock=clock).outcome == "pending"
        )
        assert store.current_policy()["revision"] == 3  # type: ignore[index]


def test_hold_and_release_commands(site: Site, make_bundle: BundleMaker) -> None:
    assert site.run("import", str(make_bundle(1))).returncode == 0
    held = site.run("hold", "--reason", "inspection until 14:00", "--json")
    assert held.returncode == 0 and json.loads(held.stdout)["result"] == "held"
    assert site.run("import", str(make_bundle(2, "baseline"))).returncode == 0
    status = site.run("status")
    assert status.returncode == 1  # degraded: a newer revision is held back
    assert "hold         since" in status.stdout and "pending      revision 2" in status.stdout
    released = site.run("release", "--json")
    assert released.returncode == 0 and json.loads(released.stdout)["applied"] == 2
    after = json.loads(site.run("status", "--json").stdout)
    assert after["policy"]["revision"] == 2 and after["hold"] is None and after["pending"] is None
    assert site.run("hold", "--reason", "").returncode == 2


def test_a_hold_set_before_the_first_policy_holds_it_too(
    site: Site, make_bundle: BundleMaker
) -> None:
    assert site.run("hold", "--reason", "site not ready").returncode == 0
    imported = site.run("import", str(make_bundle(1)), "--json")
    assert imported.returncode == 0 and json.loads(imported.stdout)["result"] == "pending"
    assert revision(site) is None
    status = site.run("status", "--json")
    doc = json.loads(status.stdout)
    assert doc["pending"]["revision"] == 1 and doc["hold"]["reason"] == "site not ready"
    assert status.returncode == 3  # not initialised: nothing is enforced yet
    assert (
        doc["reason"]
        == "no policy in force yet; revision 1 waits (held on site: edge-agent release)"
    )
    released = site.run("release", "--json")
    assert released.returncode == 0 and json.loads(released.stdout)["applied"] == 1
    assert revision(site) == 1
