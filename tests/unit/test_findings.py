"""What outcomes tell the management plane: import, reconcile, drift and health event data.

Cycle summaries come from ``reconcile.cycle.summarize`` / ``failed`` on real ``CycleReport``
values, so the shapes are the ones the enforcer records.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from edge_agent.clock import UTC, format_time, parse_time
from edge_agent.findings import MAX_LISTED, MAX_TEXT, cycle_events, health_data, import_data
from edge_agent.reconcile.cycle import failed, summarize
from edge_agent.reconcile.health import Health, HealthStatus
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import ObjectRef
from edge_agent.reconcile.target import Action, CycleReport, ObjectResult
from mgmt_stub.service import MAX_EVENT_DATA
from tests.views import state_view

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
#: How the server measures an event's data (mgmt_stub.service._check_event).
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
READY = Health(HealthStatus.READY, "Ready", "deployment/web is ready")


def ref(name: str, kind: str = "ConfigMap") -> ObjectRef:
    return ObjectRef("", kind, "default", name)


def result(name: str, action: Action, detail: str = "") -> ObjectResult:
    return ObjectResult(ref(name), action, detail, READY)


def summary(*results: ObjectResult, revision: int = 7, mode: str = "enforce") -> dict[str, Any]:
    return summarize(
        CycleReport(tuple(results), Inventory()),
        revision=revision,
        target="kubernetes",
        mode=mode,
        started_at=NOW - dt.timedelta(seconds=2),
        finished_at=NOW,
    )


def failed_cycle(error: str, revision: int | None = 7) -> dict[str, Any]:
    return failed(
        error,
        revision=revision,
        target="kubernetes",
        mode="enforce",
        started_at=NOW - dt.timedelta(seconds=2),
        finished_at=NOW,
    )


def types(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in events]


# -- import events ---------------------------------------------------------------------------


def test_import_data_keeps_the_record_fields() -> None:
    record = {
        "at": "2026-11-24T12:00:00Z",
        "result": "committed",
        "location": "/media/usb/hello-web-r7.tar",
        "revision": 7,
        "bundle_id": "hello-web-r7",
        "file_sha256": "ab" * 32,
        "code": None,
        "message": None,
    }
    assert import_data(record, "usb") == {
        "result": "committed",
        "source": "usb",
        "location": "/media/usb/hello-web-r7.tar",
        "revision": 7,
        "bundle_id": "hello-web-r7",
        "file_sha256": "ab" * 32,
        "code": None,
        "message": None,
    }


def test_import_data_of_a_rejection_with_only_some_fields() -> None:
    data = import_data(
        {"result": "rejected", "code": "bad-signature", "message": "signature invalid"}, "sync"
    )
    assert data["result"] == "rejected"
    assert (data["code"], data["message"], data["source"]) == (
        "bad-signature",
        "signature invalid",
        "sync",
    )
    assert (data["location"], data["revision"], data["bundle_id"]) == (None, None, None)


def test_import_data_cuts_long_texts() -> None:
    data = import_data(
        {"result": "failed", "location": "/" + "d" * 1000, "message": "x" * 1000}, "usb"
    )
    assert len(data["message"]) == MAX_TEXT and data["message"].endswith("…")
    assert data["message"][:-1] == "x" * (MAX_TEXT - 1)
    assert len(data["location"]) == MAX_TEXT


def test_a_text_of_exactly_max_text_is_kept_whole() -> None:
    message = "m" * MAX_TEXT
    assert import_data({"result": "failed", "message": message}, "usb")["message"] == message


# -- reconcile events ------------------------------------------------------------------------


def test_an_idle_cycle_on_the_same_revision_queues_nothing() -> None:
    previous = summary(result("a", Action.UNCHANGED))
    current = summary(result("a", Action.UNCHANGED), result("b", Action.UNCHANGED))
    assert cycle_events(previous, current) == []


def test_the_first_cycle_is_a_reconcile_event() -> None:
    events = cycle_events(None, summary(result("a", Action.UNCHANGED)))
    assert types(events) == ["reconcile"]
    data = events[0][1]
    assert data == {
        "revision": 7,
        "mode": "enforce",
        "target": "kubernetes",
        "counts": {
            "created": 0,
            "unchanged": 1,
            "healed": 0,
            "drifted": 0,
            "pruned": 0,
            "would-prune": 0,
            "failed": 0,
        },
        "error": None,
        "line": "revision 7 · 1 objects · 0 drifted · 1 ready",
    }


def test_a_new_revision_is_a_reconcile_event_even_when_idle() -> None:
    previous = summary(result("a", Action.UNCHANGED), revision=6)
    events = cycle_events(previous, summary(result("a", Action.UNCHANGED), revision=7))
    assert types(events) == ["reconcile"]
    assert events[0][1]["revision"] == 7


@pytest.mark.parametrize("action", [Action.CREATED, Action.HEALED, Action.PRUNED, Action.FAILED])
def test_a_change_on_the_same_revision_is_a_reconcile_event(action: Action) -> None:
    previous = summary(result("a", Action.UNCHANGED))
    events = cycle_events(previous, summary(result("a", Action.UNCHANGED), result("b", action)))
    assert "reconcile" in types(events)
    reconcile = dict(events)["reconcile"]
    assert reconcile["counts"][action.value] == 1


def test_a_cycle_that_could_not_run_is_a_reconcile_event_with_its_error() -> None:
    previous = summary(result("a", Action.UNCHANGED))
    events = cycle_events(previous, failed_cycle("the cluster API is down"))
    assert types(events) == ["reconcile"]
    data = events[0][1]
    assert data["error"] == "the cluster API is down"
    assert data["counts"] == {}
    assert data["line"] == "revision 7 · cycle failed: the cluster API is down"


def test_a_repeated_failure_is_reported_each_time() -> None:
    previous = failed_cycle("the cluster API is down")
    assert types(cycle_events(previous, failed_cycle("the cluster API is down"))) == ["reconcile"]


def test_reconcile_texts_are_cut() -> None:
    events = cycle_events(None, failed_cycle("e" * 5000))
    data = events[0][1]
    assert len(data["error"]) == MAX_TEXT and data["error"].endswith("…")
    assert len(data["line"]) == MAX_TEXT and data["line"].endswith("…")


# -- drift events ----------------------------------------------------------------------------


def test_audit_drift_on_the_same_revision_is_a_drift_event_only() -> None:
    previous = summary(result("a", Action.UNCHANGED), mode="audit")
    current = summary(
        result("a", Action.DRIFTED, "data.key"),
        result("b", Action.UNCHANGED),
        ObjectResult(ref("old"), Action.WOULD_PRUNE, "no longer desired"),
        mode="audit",
    )
    events = cycle_events(previous, current)
    assert types(events) == ["drift"]
    assert events[0][1] == {
        "revision": 7,
        "mode": "audit",
        "count": 2,
        "objects": [
            {"ref": "ConfigMap default/a", "action": "drifted", "detail": "data.key"},
            {
                "ref": "ConfigMap default/old",
                "action": "would-prune",
                "detail": "no longer desired",
            },
        ],
    }


def test_a_healed_object_is_both_a_change_and_drift() -> None:
    previous = summary(result("a", Action.UNCHANGED))
    events = cycle_events(previous, summary(result("a", Action.HEALED, "spec.replicas")))
    assert types(events) == ["reconcile", "drift"]
    assert dict(events)["drift"]["objects"] == [
        {"ref": "ConfigMap default/a", "action": "healed", "detail": "spec.replicas"}
    ]


def test_created_pruned_and_failed_objects_are_not_drift() -> None:
    events = cycle_events(
        None,
        summary(
            result("a", Action.CREATED),
            ObjectResult(ref("b"), Action.PRUNED),
            result("c", Action.FAILED, "forbidden"),
        ),
    )
    assert types(events) == ["reconcile"]


def test_a_drift_list_is_cut_to_max_listed_but_counts_all() -> None:
    drifted = [result(f"cm-{i:03d}", Action.DRIFTED, "data") for i in range(MAX_LISTED + 25)]
    previous = summary(mode="audit")
    events = cycle_events(previous, summary(*drifted, mode="audit"))
    drift = dict(events)["drift"]
    assert drift["count"] == MAX_LISTED + 25
    assert len(drift["objects"]) == MAX_LISTED
    assert [o["ref"] for o in drift["objects"]] == [
        f"ConfigMap default/cm-{i:03d}" for i in range(MAX_LISTED)
    ]


def test_a_drift_detail_is_cut() -> None:
    events = cycle_events(
        summary(mode="audit"), summary(result("a", Action.DRIFTED, "p" * 2000), mode="audit")
    )
    detail = dict(events)["drift"]["objects"][0]["detail"]
    assert len(detail) == MAX_TEXT and detail == "p" * (MAX_TEXT - 1) + "…"


def _drifted_deployments(n: int) -> list[ObjectResult]:
    """``n`` deployments each drifted on five long paths, as ``Drift.describe`` words it."""
    paths = ", ".join(
        f"spec.template.spec.containers[name=app-{c}].env[name=FEATURE_FLAG_{c}].value"
        for c in range(5)
    )
    return [
        ObjectResult(
            ObjectRef("apps", "Deployment", "production", f"web-{i:03d}"), Action.DRIFTED, paths
        )
        for i in range(n)
    ]


def test_a_drift_event_of_many_objects_with_short_details_fits_the_server_limit() -> None:
    short = [result(f"cm-{i:03d}", Action.DRIFTED, "data.key") for i in range(MAX_LISTED * 4)]
    for _, data in cycle_events(None, summary(*short, mode="audit")):
        assert len(_compact(data)) <= MAX_EVENT_DATA


def test_a_drift_event_stays_within_the_servers_event_size() -> None:
    events = cycle_events(None, summary(*_drifted_deployments(MAX_LISTED * 4), mode="audit"))
    drift = dict(events)["drift"]
    assert drift["count"] == MAX_LISTED * 4
    assert len(_compact(drift)) <= MAX_EVENT_DATA


# -- health ----------------------------------------------------------------------------------


def health_view(
    *,
    last_cycle: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    confirmed_at: str = "2026-11-24T11:00:00Z",
    imports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return state_view(
        settings=settings,
        source_kind="sync",
        confirmed_at=confirmed_at,
        imports=imports,
        last_cycle=last_cycle,
    )


def test_health_of_a_healthy_site() -> None:
    view = health_view(last_cycle=summary(result("a", Action.UNCHANGED)))
    assert health_data(view, NOW) == {
        "verdict": "healthy",
        "revision": 7,
        "drift": 0,
        "summary": "revision 7 in force",
        "stale": False,
    }


def test_health_before_provisioning() -> None:
    view = health_view()
    view["trust"] = None
    data = health_data(view, NOW)
    assert data["verdict"] == "not-initialised"
    assert data["revision"] is None


def test_health_revision_is_the_applied_one_not_the_committed_one() -> None:
    # Revision 7 is committed (the policy in force) but the last cycle enforced 6.
    view = health_view(last_cycle=summary(result("a", Action.UNCHANGED), revision=6))
    assert health_data(view, NOW)["revision"] == 6


def test_health_revision_is_none_when_the_last_cycle_errored() -> None:
    view = health_view(last_cycle=failed_cycle("the cluster API is down", revision=7))
    data = health_data(view, NOW)
    assert data["revision"] is None
    assert data["verdict"] == "degraded"
    assert data["drift"] == 0
    assert "the cluster API is down" in data["summary"]


def test_health_revision_is_none_before_any_cycle() -> None:
    assert health_data(health_view(), NOW)["revision"] is None


def test_health_drift_counts_drifted_and_would_prune_objects() -> None:
    cycle = summary(
        result("a", Action.DRIFTED, "data"),
        result("b", Action.DRIFTED, "data"),
        ObjectResult(ref("c"), Action.WOULD_PRUNE),
        result("d", Action.HEALED),  # healed: no longer drift
        mode="audit",
    )
    assert health_data(health_view(last_cycle=cycle), NOW)["drift"] == 3


def test_health_summary_is_cut() -> None:
    view = health_view(last_cycle=failed_cycle("z" * 2000))
    summary_text = health_data(view, NOW)["summary"]
    assert len(summary_text) == MAX_TEXT and summary_text.endswith("…")


def test_health_of_a_stale_policy_says_since_when_and_what_it_does() -> None:
    view = health_view(
        last_cycle=summary(result("a", Action.UNCHANGED)),
        settings={
            "mode": "enforce",
            "reconcile_interval_s": 60,
            "sync_interval_s": 300,
            "stale_after_s": 600,
            "on_stale": "audit",
        },
        confirmed_at="2026-11-24T11:00:00Z",
    )
    data = health_data(view, NOW)
    assert data["verdict"] == "degraded"
    assert data["stale"] is True
    assert data["stale_since"] == "2026-11-24T11:10:00Z"
    assert data["on_stale"] == "audit"
    assert "STALE since 2026-11-24T11:10:00Z" in data["summary"]


def test_health_of_a_fresh_policy_with_a_rule_has_no_stale_keys() -> None:
    view = health_view(
        settings={
            "mode": "enforce",
            "reconcile_interval_s": 60,
            "sync_interval_s": 300,
            "stale_after_s": 7200,
            "on_stale": "audit",
        },
        confirmed_at="2026-11-24T11:00:00Z",
    )
    data = health_data(view, NOW)
    assert data["stale"] is False
    assert "stale_since" not in data and "on_stale" not in data


def _looks_like_a_time(value: Any) -> bool:
    try:
        parse_time(value)
    except (TypeError, ValueError):
        return False
    return True


def test_two_equal_states_give_equal_health_at_different_times() -> None:
    view = health_view(last_cycle=summary(result("a", Action.DRIFTED, "data"), mode="audit"))
    first = health_data(view, NOW)
    an_hour_later = health_data(view, NOW + dt.timedelta(hours=1))
    assert first == an_hour_later
    assert not any(_looks_like_a_time(v) for v in first.values())
    assert format_time(NOW) not in json.dumps(first)


def test_a_stale_health_does_not_change_while_it_stays_stale() -> None:
    view = health_view(
        settings={
            "mode": "enforce",
            "reconcile_interval_s": 60,
            "sync_interval_s": 300,
            "stale_after_s": 600,
        },
        confirmed_at="2026-11-24T11:00:00Z",
    )
    assert health_data(view, NOW) == health_data(view, NOW + dt.timedelta(days=3))


def test_a_different_state_gives_a_different_health() -> None:
    clean = health_view(last_cycle=summary(result("a", Action.UNCHANGED), mode="audit"))
    drifted = health_view(last_cycle=summary(result("a", Action.DRIFTED, "data"), mode="audit"))
    assert health_data(clean, NOW) != health_data(drifted, NOW)
