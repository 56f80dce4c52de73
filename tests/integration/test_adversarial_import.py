"""The adversarial corpus through the real import path: rejected, and the store untouched.

``test_adversarial_bundles`` proves each hostile bundle gets its exact code from
``verify_bundle``. Here every case whose site is a fresh one (provisioned with root v1, no
policy yet) goes through ``importer.verify_and_commit`` into a real on-disk store: the
error must be the same, and nothing but one "rejected" line in the import history may
change — no policy, no root from a carried chain, no artifact, no staging left behind.
Cases that need a site with history (rollback, a trusted rotation, a clock mark) are
covered at verify level and by the CLI tests that import real files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError
from edge_agent.importer import BundleInput, verify_and_commit
from edge_agent.state import StateStore
from tests.adversarial import CASES, Case, Scenario, base_scenario
from tests.conftest import FakeClock


def _fresh_site(scenario: Scenario) -> bool:
    trust = scenario.trust
    return (
        trust.revision is None
        and trust.time_high_water is None
        and not trust.revoked_keyids
        and trust.root.root.version == 1
    )


FRESH = [pytest.param(c, id=c.name) for c in CASES if _fresh_site(c.build())]


def _import(scenario: Scenario, tmp_path: Path) -> tuple[StateStore, Exception | None]:
    config = AgentConfig(
        cluster_id=scenario.identity.cluster_id,
        labels=scenario.identity.labels,
        state_dir=tmp_path / "state",
        initial_root=tmp_path / "unused-root.json",
        status_snapshot=tmp_path / "state" / "status.json",
        limits=scenario.limits,
    )
    store = StateStore.open(config.state_dir, snapshot_path=config.status_snapshot)
    store.provision(scenario.trust.root.envelope, now=scenario.now)
    source = BundleInput(
        io.BytesIO(scenario.archive),
        kind="bundle",
        location="usb/hostile.bundle",
        max_bytes=scenario.limits.max_bundle_bytes,
    )
    try:
        verify_and_commit(source, store=store, config=config, clock=FakeClock(scenario.now))
    except BundleError as exc:
        return store, exc
    return store, None


def test_most_of_the_corpus_runs_at_import_level() -> None:
    assert len(FRESH) >= 60, f"only {len(FRESH)} fresh-site cases"


def test_the_base_bundle_imports(tmp_path: Path) -> None:
    store, error = _import(base_scenario(), tmp_path)
    with store:
        assert error is None
        assert store.current_policy() is not None


@pytest.mark.parametrize("case", FRESH)
def test_hostile_bundle_import_leaves_the_store_untouched(case: Case, tmp_path: Path) -> None:
    store, error = _import(case.build(), tmp_path)
    with store:
        assert isinstance(error, BundleError), f"{case.name}: not rejected"
        assert error.code is case.code, f"{case.name}: got {error}"
        assert store.current_policy() is None and store.previous_policy() is None
        trust = store.trust()
        assert trust.root.root.version == 1, "a root from the rejected bundle was committed"
        assert trust.revision is None and trust.time_high_water is None
        assert len(store.root_history()) == 1
        assert list((store.state_dir / "artifacts").iterdir()) == []
        assert list((store.state_dir / "staging").iterdir()) == []
        history = store.imports()
        assert [(h["result"], h["code"]) for h in history] == [("rejected", case.code.value)]
