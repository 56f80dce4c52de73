"""``metrics.render``: the Prometheus text from a state view, and the ``metrics`` config."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from edge_agent.clock import UTC, format_time
from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.metrics import render

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
LINE = re.compile(r'^edge_agent_[a-z_]+(\{[a-z]+="[^"\n]*"(,[a-z]+="[^"\n]*")*\})? -?\d+(\.\d+)?$')


def ago(seconds: int) -> str:
    return format_time(NOW - dt.timedelta(seconds=seconds))


def view(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "policy": {
            "revision": 7,
            "settings": {"mode": "enforce", "reconcile_interval_s": 60, "sync_interval_s": 300},
            "source": {"kind": "sync", "received_at": ago(600)},
        },
        "trust": {"root_version": 1, "root_expires_at": "2027-11-24T12:00:00Z"},
        "imports": [{"result": "committed", "at": ago(600)}],
        "import_counts": {"committed": 3, "rejected": 1},
        "last_cycle": {
            "revision": 7,
            "finished_at": ago(30),
            "error": None,
            "counts": {"drifted": 2, "failed": 0},
            "health": {"worst": "ready", "counts": {"ready": 4}},
            "line": "revision 7",
        },
        "outbox": {
            "count": 5,
            "oldest_time": ago(90),
            "dropped": {"health": 2},
            "coalesced": {},
            "refused": {},
        },
        "sync": {"last_success_at": ago(12), "offline_since": None},
    }
    doc.update(extra)
    return doc


def samples(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        found[name] = value
    return found


def test_the_figures_of_a_healthy_synced_site() -> None:
    found = samples(render(view(), NOW))
    assert found["edge_agent_policy_revision"] == "7"
    assert found['edge_agent_policy_source_info{source="sync"}'] == "1"
    assert found['edge_agent_verdict{verdict="healthy"}'] == "1"
    assert found['edge_agent_verdict{verdict="degraded"}'] == "0"
    assert found["edge_agent_status_code"] == "0"
    assert found["edge_agent_last_sync_age_seconds"] == "12"
    assert found["edge_agent_sync_online"] == "1"
    assert found["edge_agent_outbox_events"] == "5"
    assert found["edge_agent_outbox_oldest_age_seconds"] == "90"
    assert found['edge_agent_outbox_dropped_total{type="health"}'] == "2"
    assert found["edge_agent_drift_objects"] == "2"
    assert found['edge_agent_objects{health="ready"}'] == "4"
    assert found['edge_agent_imports_total{result="rejected"}'] == "1"
    assert found["edge_agent_last_reconcile_failed"] == "0"


def test_status_reports_waiting_for_their_receipt() -> None:
    waiting = {
        **view(),
        "reports": [
            {"report_id": "a", "created_at": "2026-11-22T12:00:00Z", "where": "/m", "events": 3},
            {"report_id": "b", "created_at": "2026-11-24T11:00:00Z", "where": "/m", "events": 1},
        ],
    }
    found = samples(render(waiting, NOW))
    assert found["edge_agent_usb_reports_unacknowledged"] == "2"
    assert found["edge_agent_usb_report_oldest_age_seconds"] == str(2 * 86400)  # two days
    found = samples(render({**view(), "reports": []}, NOW))
    assert found["edge_agent_usb_reports_unacknowledged"] == "0"
    assert "edge_agent_usb_report_oldest_age_seconds" not in found


def test_nothing_made_up_before_a_policy_or_a_sync() -> None:
    text = render({"policy": None, "trust": None, "imports": [], "outbox": {"count": 0}}, NOW)
    found = samples(text)
    assert found['edge_agent_verdict{verdict="not-initialised"}'] == "1"
    assert found["edge_agent_status_code"] == "3"
    for absent in ("policy_revision", "last_sync_age_seconds", "drift_objects", "policy_stale"):
        assert f"edge_agent_{absent}" not in text


def test_every_metric_has_help_and_type_once() -> None:
    text = render(view(), NOW)
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps and len(names) >= 15


def test_label_values_are_escaped() -> None:
    text = render(view(outbox={"count": 0, "dropped": {'a"b\\c\nd': 1}}), NOW)
    assert 'edge_agent_outbox_dropped_total{type="a\\"b\\\\c\\nd"} 1' in text


def test_offline_and_stale_are_visible() -> None:
    doc = view(sync={"last_success_at": ago(7200), "offline_since": ago(7000)})
    doc["policy"]["settings"] = {**doc["policy"]["settings"], "stale_after_s": 3600}
    doc["policy_confirmed_at"] = ago(7200)
    found = samples(render(doc, NOW))
    assert found["edge_agent_sync_online"] == "0" and found["edge_agent_policy_stale"] == "1"
    assert found["edge_agent_status_code"] == "1"


def config(tmp_path: Path, metrics: Any) -> Any:
    doc = {"cluster_id": "site-1", "paths": {"initial_root": "root.json"}, "metrics": metrics}
    return parse_config(doc, where="test.yaml", base=tmp_path)


def test_metrics_config(tmp_path: Path) -> None:
    parsed = config(tmp_path, {"textfile": "m.prom", "listen": "127.0.0.1:9479"})
    assert parsed.metrics.textfile == tmp_path / "m.prom"
    assert parsed.metrics.listen == ("127.0.0.1", 9479)
    assert config(tmp_path, {}).metrics.listen is None


@pytest.mark.parametrize("listen", ["0.0.0.0:9479", "10.0.0.1:80", "127.0.0.1", "localhost:0"])
def test_metrics_listen_only_on_loopback(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen must be a loopback"):
        config(tmp_path, {"listen": listen})
