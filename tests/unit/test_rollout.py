"""The staged-rollout planner and assignment choice (pure functions)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mgmt_stub.rollout import (
    IMMEDIATE,
    AssignmentRef,
    Member,
    Selector,
    Strategy,
    canary_ids,
    choose_assignment,
    plan_rollout,
)

STABLE, TARGET = 10, 12


def members(n: int, *, desired: int | None = STABLE, reported: int | None = STABLE) -> list[Member]:
    return [
        Member(f"c{i:03d}", {"ring": "canary" if i < 2 else "main"}, desired, reported, "healthy")
        for i in range(n)
    ]


def report(ms: list[Member], ids: set[str], revision: int, health: str = "healthy") -> list[Member]:
    return [
        Member(m.cluster_id, m.labels, m.desired, revision, health) if m.cluster_id in ids else m
        for m in ms
    ]


def step(ms: list[Member], strategy: Strategy, *, paused: bool = False) -> tuple[list[Member], str]:
    plan = plan_rollout(
        rollout_id=1, stable=STABLE, target=TARGET, strategy=strategy, paused=paused, members=ms
    )
    moved = [
        Member(m.cluster_id, m.labels, plan.desired[m.cluster_id], m.reported, m.health) for m in ms
    ]
    return moved, plan.phase


def at_target(ms: list[Member]) -> set[str]:
    return {m.cluster_id for m in ms if m.desired == TARGET}


def test_canaries_first_then_the_rest_within_the_budget() -> None:
    strategy = Strategy(canary_labels={"ring": "canary"}, max_unavailable=3)
    ms, phase = step(members(10), strategy)
    assert phase == "canary"
    assert at_target(ms) == {"c000", "c001"}  # only canaries, although the budget is 3
    ms, phase = step(ms, strategy)
    assert at_target(ms) == {"c000", "c001"}  # nothing more until canaries report
    ms = report(ms, {"c000"}, TARGET)
    ms, phase = step(ms, strategy)
    assert phase == "canary" and at_target(ms) == {"c000", "c001"}
    ms = report(ms, {"c001"}, TARGET)
    ms, phase = step(ms, strategy)
    assert phase == "progressing"
    assert len(at_target(ms)) == 2 + 3  # canaries done; three more within the budget
    while phase != "complete":
        ms = report(ms, at_target(ms), TARGET)
        ms, phase = step(ms, strategy)
    assert at_target(ms) == {m.cluster_id for m in ms}


def test_unhealthy_canary_blocks_progress_and_counts_against_the_budget() -> None:
    strategy = Strategy(canary_labels={"ring": "canary"}, max_unavailable=2)
    ms, _ = step(members(10), strategy)
    ms = report(ms, {"c000"}, TARGET)
    ms = report(ms, {"c001"}, TARGET, health="failing")
    for _ in range(3):
        ms, phase = step(ms, strategy)
        assert phase == "canary"
        assert at_target(ms) == {"c000", "c001"}


def test_unhealthy_clusters_on_the_old_revision_use_up_the_budget() -> None:
    strategy = Strategy(max_unavailable=2)
    ms = report(members(6), {"c004", "c005"}, STABLE, health="degraded")
    ms, phase = step(ms, strategy)
    assert phase == "progressing" and at_target(ms) == set()


def test_paused_rollout_moves_nobody_and_resume_continues() -> None:
    strategy = Strategy(canary_percent=50, max_unavailable=10)
    ms, phase = step(members(4), strategy, paused=True)
    assert phase == "paused" and at_target(ms) == set()
    ms, phase = step(ms, strategy)
    assert phase == "canary" and len(at_target(ms)) == 2


def test_percent_canaries_are_stable_for_a_rollout_and_at_least_one() -> None:
    ms = members(7)
    first = canary_ids(5, ms, Strategy(canary_percent=10))
    assert len(first) == 1
    assert canary_ids(5, list(reversed(ms)), Strategy(canary_percent=10)) == first
    assert len(canary_ids(5, ms, Strategy(canary_percent=30))) == 3


def test_percent_budget_rounds_up_and_is_never_zero() -> None:
    assert Strategy(max_unavailable_percent=10).budget(5) == 1
    assert Strategy(max_unavailable_percent=10).budget(25) == 3
    assert Strategy(max_unavailable=0, canary_percent=5).budget(100) == 1


def test_immediate_moves_everyone_and_first_rollout_ignores_the_strategy() -> None:
    plan = plan_rollout(
        rollout_id=1,
        stable=STABLE,
        target=TARGET,
        strategy=IMMEDIATE,
        paused=False,
        members=members(5),
    )
    assert set(plan.desired.values()) == {TARGET}
    plan = plan_rollout(
        rollout_id=1,
        stable=None,
        target=TARGET,
        strategy=Strategy(canary_percent=10),
        paused=False,
        members=members(5, desired=None, reported=None),
    )
    assert set(plan.desired.values()) == {TARGET}


def test_new_member_without_desired_state_gets_the_stable_revision_during_a_rollout() -> None:
    ms = [*members(3), Member("new", {}, None, None, None)]
    plan = plan_rollout(
        rollout_id=1,
        stable=STABLE,
        target=TARGET,
        strategy=Strategy(canary_labels={"x": "y"}),
        paused=False,
        members=ms,
    )
    assert plan.desired["new"] == STABLE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, 8, STABLE, 11, TARGET, 13]),
            st.sampled_from([None, STABLE, TARGET]),
            st.sampled_from([None, "healthy", "degraded", "failing"]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 100),
    st.integers(0, 5),
    st.booleans(),
)
def test_desired_revisions_never_go_down_and_the_budget_holds(
    rows: list[tuple[int | None, int | None, str | None]],
    percent: int,
    budget: int,
    paused: bool,
) -> None:
    ms = [Member(f"c{i}", {}, d, r, h) for i, (d, r, h) in enumerate(rows)]
    strategy = Strategy(canary_percent=percent, max_unavailable=budget)
    plan = plan_rollout(
        rollout_id=3, stable=STABLE, target=TARGET, strategy=strategy, paused=paused, members=ms
    )
    for m in ms:
        assert plan.desired[m.cluster_id] >= (m.desired or 0)
        assert plan.desired[m.cluster_id] in {STABLE, TARGET, m.desired}
    newly_moved = [
        m for m in ms if plan.desired[m.cluster_id] == TARGET and (m.desired or 0) < TARGET
    ]
    if paused or strategy.immediate:
        assert not newly_moved or strategy.immediate
    else:
        assert len(newly_moved) <= max(0, strategy.budget(len(ms)) - plan.unavailable)


def test_highest_priority_then_name_governs_a_cluster() -> None:
    refs = [
        AssignmentRef("b-all-eu", Selector(labels={"region": "eu"}), 0),
        AssignmentRef("a-all-eu", Selector(labels={"region": "eu"}), 0),
        AssignmentRef("berlin", Selector(labels={"region": "eu", "city": "berlin"}), 5),
        AssignmentRef("one", Selector(cluster_id="site-9"), 10),
    ]
    assert choose_assignment("site-1", {"region": "eu"}, refs) == "a-all-eu"
    assert choose_assignment("site-2", {"region": "eu", "city": "berlin"}, refs) == "berlin"
    assert choose_assignment("site-9", {"region": "eu", "city": "berlin"}, refs) == "one"
    assert choose_assignment("site-3", {"region": "us"}, refs) is None


def test_a_percent_budget_alone_is_a_staged_rollout() -> None:
    strategy = Strategy(max_unavailable_percent=50)
    assert not strategy.immediate
    ms, phase = step(members(10), strategy)
    assert phase == "progressing" and len(at_target(ms)) == 5
