"""The dashboard page in real headless Chromium, against the stub as a real process.

Everything the page shows is created through the real API: a profile and an assignment,
clusters enrolled with a one-use token, health events posted as each agent, an air-gapped
cluster registered with its agent key and a status report signed by that key imported as
from a USB stick. Chromium is driven through chromedriver (selenium). Without Chromium or
chromedriver on the machine the test is skipped with the reason; with ``CI=true`` it fails
instead, because ``.ci/run`` installs them. ``EDGE_AGENT_SCREENSHOT=1`` saves the page as
``docs/dashboard.png``.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import Signature, encode_envelope, keyid_for, pae
from tests.conftest import PROFILES, REPO

SCREENSHOT = REPO / "docs" / "dashboard.png"
# The status report's wire format (a DSSE envelope, docs/management.md), written out here so
# that the test checks the format rather than reusing the code under test.
REPORT_PAYLOAD_TYPE = "application/vnd.edge-agent.status-report+json; version=1"
HOSTILE = "<img src=x onerror=alert(1)>"
DASH = "\u2013"  # what the page shows for no value
# The probe-tested flags for this machine: without the background-networking ones Chromium
# tries Google's hosts at every start, and this network refuses them.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,820",
)
# Installed before any script of the page runs: alert() records instead of blocking, so an
# injected handler would be seen rather than hang the driver.
ALERT_TRAP = (
    "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"
)
# One call reads what the table shows, cell by cell, as text.
READ_ROWS = """
const text = (root, sel) => { const n = root.querySelector(sel); return n ? n.textContent : null; };
return Array.from(document.querySelectorAll('#rows tr[data-cluster-id]')).map(tr => ({
  id: text(tr, 'th'),
  labels: Array.from(tr.querySelectorAll('.labels .chip')).map(c => c.textContent),
  health: tr.querySelector('.health').dataset.health,
  health_text: text(tr, '.health .pill'),
  summary: text(tr, '.health .summary'),
  connectivity: tr.querySelector('.connectivity').dataset.connectivity,
  connectivity_text: text(tr, '.connectivity .pill'),
  ingest: text(tr, '.connectivity .ingest'),
  seen: Array.from(tr.querySelectorAll('.seen .stack > *')).map(n => n.textContent),
  revision: text(tr, '.revision .rev'),
  out_of_date: tr.querySelector('.revision .rev').classList.contains('mismatch'),
  drift: text(tr, '.drift'),
  assignment: text(tr, '.assignment'),
}));
"""
READ_COUNTS = """
const ids = ['total', 'healthy', 'unhealthy', 'offline', 'outdated'];
return Object.fromEntries(ids.map(k => [k, document.getElementById('count-' + k).textContent]));
"""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run this test (.ci/run installs chromium chromium-driver)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        unavailable(
            "needs Chromium and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
    except ImportError:
        unavailable("needs selenium (the test extra: pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # Both paths given: selenium's driver manager is never consulted (it would go online).
    service = webdriver.ChromeService(
        executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ALERT_TRAP})
        yield driver
    finally:
        driver.quit()


def utc(offset_s: float = 0) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def health(agent: Any, event_id: str, time: str, **data: Any) -> None:
    body = {"events": [{"id": event_id, "type": "health", "time": time, "data": data}]}
    response = agent.post("/v1/agent/events", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def signed_report(
    key: Ed25519PrivateKey, cluster_id: str, created_at: str, events: list[Any]
) -> bytes:
    """A status report as an air-gapped agent writes it to a USB stick, signed by its key."""
    payload = canonical.encode(
        {
            "_type": "status-report",
            "format_version": 1,
            "cluster_id": cluster_id,
            "report_id": f"{cluster_id}-1",
            "created_at": created_at,
            "events": events,
        }
    )
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = Signature(keyid_for(public), key.sign(pae(REPORT_PAYLOAD_TYPE, payload)))
    return encode_envelope(REPORT_PAYLOAD_TYPE, payload, [signature])


def fleet(stub: Any) -> tuple[str, Any]:
    """Five clusters in every state the page distinguishes.

    Returns a viewer credential and the agent client of ``paris-02`` (degraded, on r1).
    """
    stub.put_profile("hello-web", PROFILES / "hello-web")
    response = stub.admin.put(
        "/v1/admin/assignments/eu",
        json={"profile": "hello-web", "selector": {"labels": {"region": "eu"}}},
    )
    assert response.status_code == 200, response.text
    berlin = stub.agent("berlin-01", {"region": "eu", "tier": "edge"})
    paris = stub.agent("paris-02", {"region": "eu", "tier": "core"})
    austin = stub.agent("austin-03", {"region": "us", "tier": "edge"})
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    agent_key = base64.b64encode(public).decode("ascii")
    response = stub.admin.post(
        "/v1/admin/clusters",
        json={"cluster_id": "ship-07", "labels": {"region": "eu"}, "agent_key": agent_key},
    )
    assert response.status_code == 201, response.text
    response = stub.admin.post(
        "/v1/admin/clusters", json={"cluster_id": "spare-05", "labels": {"region": "apac"}}
    )
    assert response.status_code == 201, response.text
    # a changed profile is a new revision for the eu assignment: every eu cluster wants r2
    stub.put_profile("hello-web", with_description(PROFILES / "hello-web", stub.root))
    desired = {c["id"]: c["desired"] for c in stub.dump("/v1/admin/clusters")["clusters"]}
    assert desired == {
        "berlin-01": 2,
        "paris-02": 2,
        "austin-03": None,
        "ship-07": 2,
        "spare-05": None,
    }

    health(berlin, "b-1", utc(-5), verdict="healthy", revision=2, drift=0)
    health(
        paris, "p-1", utc(-5), verdict="degraded", revision=1, drift=3, summary="3 objects drifted"
    )
    health(austin, "a-1", utc(-5), verdict="healthy", drift=0, summary=HOSTILE)
    two_days_ago = utc(-2 * 86400 - 120)
    report = signed_report(
        key,
        "ship-07",
        two_days_ago,
        [
            {
                "id": "s-1",
                "type": "health",
                "time": two_days_ago,
                "data": {"verdict": "healthy", "revision": 1, "drift": 0},
            }
        ],
    )
    response = stub.admin.post("/v1/admin/ingest", content=report)
    assert response.status_code == 200, response.text

    response = stub.admin.post("/v1/admin/operators", json={"name": "wall", "role": "viewer"})
    assert response.status_code == 201, response.text
    return str(response.json()["credential"]), paris


def with_description(folder: Path, scratch: Path) -> Path:
    copy = scratch / "hello-web-v2"
    shutil.copytree(folder, copy)
    spec = copy / "profile.yaml"
    spec.write_text(spec.read_text() + "description: second version\n")
    return copy


def wait(driver: Any, what: str, predicate: Any, timeout_s: float = 10.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda d: predicate(d), f"dashboard: {what} within {timeout_s} s"
    )


def rows(driver: Any) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in driver.execute_script(READ_ROWS)}


def banner(driver: Any) -> str | None:
    return driver.execute_script(
        "const b = document.getElementById('error'); return b.hidden ? null : b.textContent;"
    )


def test_dashboard_shows_the_fleet_filters_updates_and_escapes(browser, stub) -> None:
    credential, paris_agent = fleet(stub)
    browser.get(f"{stub.url}/dashboard#credential={credential}")
    wait(browser, "five cluster rows", lambda d: len(rows(d)) == 5)

    # the credential left the address bar at once and lives in this tab only
    assert "credential" not in browser.current_url
    assert browser.execute_script("return location.hash") == ""
    assert (
        browser.execute_script("return sessionStorage.getItem('edge-agent.dashboard.credential')")
        == credential
    )
    status = browser.find_element("id", "status").text
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d", status), status
    assert banner(browser) is None

    shown = rows(browser)
    assert list(shown) == sorted(shown)
    berlin, paris, austin, ship, spare = (
        shown[c] for c in ("berlin-01", "paris-02", "austin-03", "ship-07", "spare-05")
    )
    assert berlin["labels"] == ["region=eu", "tier=edge"]
    assert (berlin["health"], berlin["health_text"]) == ("healthy", "healthy")
    assert (berlin["connectivity"], berlin["connectivity_text"]) == ("online", "online")
    assert re.fullmatch(r"just now|\d+ s ago", berlin["seen"][0]), berlin["seen"]
    assert (berlin["revision"], berlin["out_of_date"]) == ("r2 / r2", False)
    assert (berlin["drift"], berlin["assignment"]) == ("0", "eu")

    assert (paris["health"], paris["summary"]) == ("degraded", "3 objects drifted")
    assert (paris["revision"], paris["out_of_date"], paris["drift"]) == ("r2 / r1", True, "3")

    assert (austin["health"], austin["connectivity"]) == ("healthy", "online")
    assert (austin["revision"], austin["out_of_date"], austin["assignment"]) == (
        f"{DASH} / {DASH}",
        False,
        "none",
    )

    assert (ship["connectivity"], ship["health"]) == ("air-gapped", "healthy")
    assert ship["ingest"] == "last import 2 days 0 h ago"
    assert ship["seen"][0] == "2 days 0 h ago"
    assert re.fullmatch(r"USB report of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", ship["seen"][1])
    assert (ship["revision"], ship["out_of_date"]) == ("r2 / r1", True)

    assert (spare["health"], spare["connectivity"], spare["seen"]) == (
        "unknown",
        "never",
        ["never"],
    )
    assert (spare["revision"], spare["drift"]) == (f"{DASH} / {DASH}", DASH)

    assert browser.execute_script(READ_COUNTS) == {
        "total": "5",
        "healthy": "3",
        "unhealthy": "1",
        "offline": "1",
        "outdated": "2",
    }

    # an agent's free text is shown as text: no element was made of it, no handler ran
    assert austin["summary"] == HOSTILE
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return window.__alerts") == []

    if os.environ.get("EDGE_AGENT_SCREENSHOT") == "1":
        browser.save_screenshot(str(SCREENSHOT))

    # a new health event shows up on the next refresh, without a reload
    health(paris_agent, "p-2", utc(), verdict="healthy", revision=2, drift=0)
    wait(
        browser,
        "paris-02 turns healthy on r2",
        lambda d: (
            rows(d)["paris-02"]["health"] == "healthy"
            and rows(d)["paris-02"]["revision"] == "r2 / r2"
        ),
    )
    counts = browser.execute_script(READ_COUNTS)
    assert (counts["healthy"], counts["unhealthy"], counts["outdated"]) == ("4", "0", "1")

    # the label filter narrows the list through the server's selector
    apply_filter(browser, "region=eu")
    wait(
        browser, "only eu clusters", lambda d: set(rows(d)) == {"berlin-01", "paris-02", "ship-07"}
    )
    apply_filter(browser, "region = eu, tier=edge")
    wait(browser, "only berlin-01", lambda d: set(rows(d)) == {"berlin-01"})
    assert browser.find_element("id", "filter").get_attribute("value") == "region=eu,tier=edge"
    assert browser.execute_script(READ_COUNTS)["total"] == "1"

    # a filter the server refuses: a clear banner, the last data stays
    apply_filter(browser, "region")
    wait(browser, "a filter error", lambda d: banner(d) is not None)
    assert "Filter not accepted" in banner(browser)
    assert "is not key=value" in banner(browser)
    assert set(rows(browser)) == {"berlin-01"}
    browser.find_element("id", "filter-clear").click()
    wait(browser, "all clusters again", lambda d: len(rows(d)) == 5 and banner(d) is None)

    # the page survives a reload from this tab's storage, without the fragment
    browser.refresh()
    wait(browser, "rows after a reload", lambda d: len(rows(d)) == 5)

    # the credential is revoked: the banner says so, the last data stays visible
    assert stub.admin.delete("/v1/admin/operators/wall").status_code == 204
    wait(browser, "a refused-credential banner", lambda d: banner(d) is not None)
    assert "Credential refused" in banner(browser)
    assert (
        browser.execute_script("return sessionStorage.getItem('edge-agent.dashboard.credential')")
        is None
    )
    assert browser.find_element("id", "login").is_displayed()
    assert len(rows(browser)) == 5

    # a new credential typed into the form takes over
    response = stub.admin.post("/v1/admin/operators", json={"name": "wall-2", "role": "viewer"})
    assert response.status_code == 201, response.text
    browser.find_element("id", "credential").send_keys(response.json()["credential"] + "\n")
    wait(
        browser,
        "the data to come back under the new credential",
        lambda d: not d.find_element("id", "login").is_displayed() and banner(d) is None,
    )
    assert browser.find_element("id", "status").text.startswith("updated ")

    # a link with a fragment opened in the same tab (no reload) is read and cleared too
    response = stub.admin.post("/v1/admin/operators", json={"name": "wall-3", "role": "viewer"})
    assert response.status_code == 201, response.text
    third = response.json()["credential"]
    browser.get(f"{stub.url}/dashboard#credential={third}")
    wait(
        browser,
        "the fragment's credential to be taken",
        lambda d: (
            d.execute_script(
                "return location.hash === '' && "
                "sessionStorage.getItem('edge-agent.dashboard.credential')"
            )
            == third
        ),
    )
    assert len(rows(browser)) == 5
    assert browser.execute_script("return window.__alerts") == []


def apply_filter(driver: Any, text: str) -> None:
    field = driver.find_element("id", "filter")
    field.clear()
    field.send_keys(text + "\n")
