"""``status`` and the management link: staleness in the verdict, connectivity in the report.

Views are built by hand in the shape of ``StateStore.view()`` (the snapshot is the same JSON).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from edge_agent.clock import UTC, format_time
from edge_agent.status import Verdict, assess, connectivity, render, report, staleness_of
from tests.views import state_view

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
SERVER = "https://mgmt.example.net"
RECEIVED = "2026-11-20T08:00:00Z"


def ago(seconds: float) -> str:
    return format_time(NOW - dt.timedelta(seconds=seconds))


def make_view(
    *,
    settings: dict[str, Any] | None = None,
    received_at: str = RECEIVED,
    confirmed_at: str | None = None,
    sync: dict[str, Any] | None = None,
    root_expires_at: str = "2027-11-24T12:00:00Z",
) -> dict[str, Any]:
    return state_view(
        settings=settings,
        received_at=received_at,
        confirmed_at=confirmed_at,
        sync=sync,
        root_expires_at=root_expires_at,
    )


def with_rule(stale_after_s: int, on_stale: str = "report") -> dict[str, Any]:
    return {
        "mode": "enforce",
        "reconcile_interval_s": 60,
        "sync_interval_s": 300,
        "stale_after_s": stale_after_s,
        "on_stale": on_stale,
    }


# -- staleness_of -----------------------------------------------------------------------------


def test_no_policy_has_no_staleness() -> None:
    view = make_view()
    view["policy"] = None
    assert staleness_of(view, NOW) is None


def test_confirmation_is_the_newer_of_the_bundle_and_the_last_sync() -> None:
    sync_newer = make_view(
        settings=with_rule(3600),
        confirmed_at=ago(7200),
        sync={"server": SERVER, "last_confirmed_at": ago(60)},
    )
    staleness = staleness_of(sync_newer, NOW)
    assert staleness is not None
    assert staleness.confirmed_at == NOW - dt.timedelta(seconds=60)
    assert staleness.stale is False

    bundle_newer = make_view(
        settings=with_rule(3600),
        confirmed_at=ago(60),
        sync={"server": SERVER, "last_confirmed_at": ago(7200)},
    )
    staleness = staleness_of(bundle_newer, NOW)
    assert staleness is not None
    assert staleness.confirmed_at == NOW - dt.timedelta(seconds=60)
    assert staleness.stale is False


def test_without_any_confirmation_the_bundle_arrival_counts() -> None:
    view = make_view(settings=with_rule(300), received_at=ago(301), sync=None)
    staleness = staleness_of(view, NOW)
    assert staleness is not None
    assert staleness.confirmed_at == NOW - dt.timedelta(seconds=301)
    assert staleness.stale is True
    assert staleness.stale_since == NOW - dt.timedelta(seconds=1)


def test_a_sync_state_without_success_falls_back_to_the_bundle_arrival() -> None:
    view = make_view(
        settings=with_rule(300),
        received_at=ago(100),
        sync={"server": SERVER, "last_attempt_at": ago(5), "last_error": "refused"},
    )
    staleness = staleness_of(view, NOW)
    assert staleness is not None
    assert staleness.confirmed_at == NOW - dt.timedelta(seconds=100)


def test_without_a_rule_an_old_policy_is_not_stale() -> None:
    view = make_view(received_at="2016-11-24T12:00:00Z")
    staleness = staleness_of(view, NOW)
    assert staleness is not None and staleness.stale is False
    assert assess(view, NOW) == (Verdict.HEALTHY, "revision 7 in force")


# -- the verdict --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_stale", "action"),
    [("report", "still enforced"), ("audit", "audit only (not changing the cluster)")],
)
def test_a_stale_policy_degrades_the_verdict(on_stale: str, action: str) -> None:
    view = make_view(settings=with_rule(3600, on_stale), confirmed_at=ago(3601 + 600))
    verdict, reason = assess(view, NOW)
    assert verdict is Verdict.DEGRADED
    assert reason == (
        f"revision 7 in force; STALE since {ago(601)} (confirmed {ago(4201)}); {action}"
    )


def test_a_policy_at_its_limit_is_still_healthy() -> None:
    view = make_view(settings=with_rule(3600), confirmed_at=ago(3600))
    assert assess(view, NOW) == (Verdict.HEALTHY, "revision 7 in force")


def test_a_recent_sync_keeps_an_old_bundle_fresh() -> None:
    view = make_view(
        settings=with_rule(3600),
        confirmed_at=ago(86400 * 30),
        sync={"server": SERVER, "last_confirmed_at": ago(10)},
    )
    assert assess(view, NOW)[0] is Verdict.HEALTHY


def test_an_expired_root_outranks_staleness() -> None:
    view = make_view(settings=with_rule(300), confirmed_at=ago(86400), root_expires_at=ago(1))
    verdict, reason = assess(view, NOW)
    assert verdict is Verdict.FAILING
    assert "STALE" not in reason


# -- connectivity -------------------------------------------------------------------------------


def test_without_a_server_the_site_is_air_gapped() -> None:
    state = {"server": SERVER, "last_success_at": ago(10), "online_since": ago(100)}
    assert connectivity(state, None) == {"state": "air-gapped", "server": None, "since": None}
    assert connectivity(None, None)["state"] == "air-gapped"


def test_no_sync_state_is_never_connected() -> None:
    link = connectivity(None, SERVER)
    assert (link["state"], link["server"], link["since"]) == ("never-connected", SERVER, None)
    assert link["enrolled"] is False
    assert link["last_success_at"] is None


def test_attempts_without_success_are_never_connected() -> None:
    state = {
        "server": SERVER,
        "last_attempt_at": ago(5),
        "last_error": "connection refused",
        "failures": 3,
    }
    link = connectivity(state, SERVER)
    assert (link["state"], link["since"]) == ("never-connected", None)
    assert link["last_attempt_at"] == ago(5)
    assert link["last_error"] == "connection refused"


def test_online_since_the_link_came_up() -> None:
    state = {
        "server": SERVER,
        "online_since": ago(3600),
        "last_success_at": ago(30),
        "last_attempt_at": ago(30),
        "credential_id": "cred-1",
        "clock_skew_s": -2,
    }
    link = connectivity(state, SERVER)
    assert (link["state"], link["since"]) == ("online", ago(3600))
    assert (link["enrolled"], link["credential_id"]) == (True, "cred-1")
    assert link["last_success_at"] == ago(30)
    assert link["clock_skew_s"] == -2


def test_online_without_online_since_dates_from_the_last_success() -> None:
    link = connectivity({"server": SERVER, "last_success_at": ago(30)}, SERVER)
    assert (link["state"], link["since"]) == ("online", ago(30))


def test_offline_since_the_first_failure_after_a_success() -> None:
    state = {
        "server": SERVER,
        "online_since": ago(7200),
        "last_success_at": ago(3600),
        "offline_since": ago(3500),
        "last_error": "timed out",
        "credential_id": "cred-1",
    }
    link = connectivity(state, SERVER)
    assert (link["state"], link["since"]) == ("offline", ago(3500))
    assert link["last_success_at"] == ago(3600)
    assert link["last_error"] == "timed out"


def test_a_state_recorded_for_another_server_counts_as_never_connected() -> None:
    state = {
        "server": "https://old-mgmt.example.net",
        "online_since": ago(7200),
        "last_success_at": ago(30),
    }
    link = connectivity(state, SERVER)
    assert (link["state"], link["server"], link["since"]) == ("never-connected", SERVER, None)
    assert link["last_success_at"] is None


def test_a_state_without_a_server_name_is_taken_as_this_servers() -> None:
    link = connectivity({"last_success_at": ago(30), "online_since": ago(60)}, SERVER)
    assert (link["state"], link["since"]) == ("online", ago(60))


def test_the_next_attempt_the_engine_recorded_is_reported() -> None:
    # The sync state exactly as SyncEngine._failed leaves it after a failure.
    state = {
        "server": SERVER,
        "last_success_at": ago(3600),
        "offline_since": ago(3500),
        "last_error": "timed out",
        "failures": 2,
        "next_attempt_at": format_time(NOW + dt.timedelta(seconds=8)),
    }
    link = connectivity(state, SERVER)
    assert link["next_attempt_at"] == state["next_attempt_at"]


def test_another_servers_credential_is_not_this_servers_enrolment() -> None:
    state = {
        "server": "https://old-mgmt.example.net",
        "last_success_at": ago(30),
        "credential_id": "cred-old",
    }
    link = connectivity(state, SERVER)
    assert link["enrolled"] is False


# -- the report and its rendering -----------------------------------------------------------


def full_report(view: dict[str, Any], server: str | None) -> dict[str, Any]:
    return report(
        view,
        cluster_id="site-1",
        labels={"region": "north"},
        source="/var/lib/edge-agent/status.json",
        now=NOW,
        sync_server=server,
    )


def test_report_carries_staleness_and_connectivity() -> None:
    view = make_view(
        settings=with_rule(3600, "audit"),
        confirmed_at=ago(7200),
        sync={"server": SERVER, "last_success_at": ago(7200), "offline_since": ago(7100)},
    )
    doc = full_report(view, SERVER)
    assert doc["verdict"] == "degraded"
    assert doc["staleness"] == {
        "stale": True,
        "on_stale": "audit",
        "stale_after_s": 3600,
        "confirmed_at": ago(7200),
        "stale_since": ago(3600),
    }
    assert doc["connectivity"]["state"] == "offline"
    assert doc["connectivity"]["since"] == ago(7100)
    assert doc["sync"] == view["sync"]  # the view itself is kept as is
    assert json.loads(json.dumps(doc)) == doc


def test_report_without_a_policy_has_no_staleness() -> None:
    view = make_view()
    view["policy"] = None
    doc = full_report(view, None)
    assert doc["verdict"] == "not-initialised"
    assert doc["staleness"] is None
    assert doc["connectivity"]["state"] == "air-gapped"


def test_report_does_not_change_the_view() -> None:
    view = make_view(sync={"server": SERVER, "last_success_at": ago(5)})
    before = copy.deepcopy(view)
    full_report(view, SERVER)
    assert view == before


def management_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("management")]
    assert len(lines) == 1, text
    return lines[0]


def test_render_says_online_since() -> None:
    view = make_view(
        sync={
            "server": SERVER,
            "online_since": ago(3600),
            "last_success_at": ago(30),
            "credential_id": "cred-1",
        }
    )
    text = render(full_report(view, SERVER))
    assert management_line(text) == f"management  online since {ago(3600)}  {SERVER}"
    assert f"credential cred-1; last sync {ago(30)}; 0 events queued" in text


def test_render_says_offline_since_with_the_last_sync_and_error() -> None:
    view = make_view(
        sync={
            "server": SERVER,
            "last_success_at": ago(3600),
            "offline_since": ago(3500),
            "last_error": "timed out",
        }
    )
    view["outbox"].update(count=4, oldest_time=ago(3400), dropped={"health": 2})
    text = render(full_report(view, SERVER))
    assert management_line(text) == (
        f"management  OFFLINE since {ago(3500)} (last sync {ago(3600)})  {SERVER}"
    )
    assert f"4 events queued, oldest {ago(3400)}, 2 dropped when full" in text
    assert "last error: timed out" in text


def test_render_says_never_connected() -> None:
    text = render(full_report(make_view(sync=None), SERVER))
    assert management_line(text) == f"management  never connected  {SERVER}"
    assert "not enrolled; last sync never" in text


def test_render_says_never_connected_for_another_servers_state() -> None:
    view = make_view(sync={"server": "https://old.example.net", "last_success_at": ago(5)})
    text = render(full_report(view, SERVER))
    assert management_line(text) == f"management  never connected  {SERVER}"


def test_render_says_air_gapped_without_a_server() -> None:
    text = render(full_report(make_view(), None))
    assert management_line(text) == "management  none configured (air-gapped); 0 events queued"


def test_render_shows_the_staleness_line_only_with_a_rule() -> None:
    stale = make_view(settings=with_rule(3600, "audit"), confirmed_at=ago(7200))
    text = render(full_report(stale, None))
    assert text.splitlines()[0] == (
        f"edge-agent: DEGRADED — revision 7 in force; STALE since {ago(3600)} "
        f"(confirmed {ago(7200)}); audit only (not changing the cluster)"
    )
    assert (
        f"staleness    STALE since {ago(3600)} (confirmed {ago(7200)}); "
        "audit only (not changing the cluster)"
    ) in text.splitlines()

    fresh = make_view(settings=with_rule(3600), confirmed_at=ago(60))
    assert (
        f"staleness    confirmed {ago(60)}; stale after 3600 s without contact"
        in render(full_report(fresh, None)).splitlines()
    )

    no_rule = render(full_report(make_view(), None))
    assert not any(line.startswith("staleness") for line in no_rule.splitlines())


def test_contact_that_confirms_nothing_does_not_keep_a_policy_fresh() -> None:
    # The server answered (a 204, an error, a bundle the agent rejected): contact, but no
    # confirmation. A server without the signing keys cannot keep a site from going stale.
    view = make_view(
        settings=with_rule(3600),
        confirmed_at=ago(7200),
        sync={"server": SERVER, "last_success_at": ago(10)},
    )
    staleness = staleness_of(view, NOW)
    assert staleness is not None and staleness.stale is True
