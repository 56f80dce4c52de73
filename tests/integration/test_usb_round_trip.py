"""Status out by USB and the receipt back: an air-gapped site gets a voice.

Real processes throughout: the management stub on loopback, ``mgmt-stub`` operator commands
and ``edge-agent`` commands and daemon against real files. The site never talks to the stub;
only files move between them, as a stick would carry them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.report import public_key_raw, sign_report
from tests.conftest import BIN, PROFILES, wait_for
from tests.stub_process import StubProcess

CLUSTER = "mine-1"


class AirGappedSite:
    def __init__(self, root: Path, stub: StubProcess, drop_pattern: str) -> None:
        self.root = root
        root.mkdir()
        (root / "manifests").mkdir()
        shutil.copy(stub.keys / "roots" / "1.json", root / "root.json")
        self.config = root / "config.yaml"
        self.config.write_text(
            f"cluster_id: {CLUSTER}\n"
            "labels: {site: mine}\n"
            f"paths: {{state_dir: {root / 'state'}, initial_root: {root / 'root.json'}}}\n"
            f"drop_folders: ['{drop_pattern}']\n"
            f"target: {{kind: manifest-dir, folder: {root / 'manifests'}}}\n",
            encoding="utf-8",
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "edge-agent"), "--config", str(self.config), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def json(self, *args: str) -> dict[str, Any]:
        result = self.run(*args, "--json")
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return dict(json.loads(result.stdout))

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        return dict(json.loads(result.stdout))

    def queued(self) -> int:
        return int(self.status()["outbox"]["count"])


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, prefix: str) -> str:
    assert result.returncode == code, (result.args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return lines[0]


def tamper_payload(envelope: bytes) -> bytes:
    """The envelope with one byte of its signed payload changed (the signatures kept)."""
    doc = json.loads(envelope)
    payload = bytearray(base64.b64decode(doc["payload"]))
    payload[len(payload) // 2] ^= 0x01
    doc["payload"] = base64.b64encode(bytes(payload)).decode()
    return json.dumps(doc).encode()


def register_and_export(stub: StubProcess, site: AirGappedSite, stick: Path) -> Path:
    """What an operator does at headquarters: make the cluster known with its agent key,
    assign it a profile, put the signed bundle on the stick."""
    agent_key = site.json("agent-key")["agent_key"]
    ok(stub.cli("cluster", "register", CLUSTER, "--labels", "site=mine", "--agent-key", agent_key))
    stub.put_profile("web", PROFILES / "hello-web")
    ok(stub.cli("assign", "put", "mine", "--profile", "web", "--cluster", CLUSTER))
    bundle = stick / "policy.bundle"
    ok(stub.cli("bundle", "export", "--cluster", CLUSTER, "-o", str(bundle)))
    return bundle


def site_with_policy(stub: StubProcess, tmp_path: Path) -> tuple[AirGappedSite, Path]:
    """A registered air-gapped site with revision 1 imported from ``tmp_path/stick``."""
    stick = tmp_path / "stick"
    stick.mkdir()
    site = AirGappedSite(tmp_path / "site", stub, str(tmp_path / "unused" / "*"))
    ok(site.run("import", str(register_and_export(stub, site, stick))))
    return site, stick


def server_events(stub: StubProcess) -> list[dict[str, Any]]:
    cluster = stub.admin.get(f"/v1/admin/clusters/{CLUSTER}").json()
    return list(cluster["recent_events"])


def test_report_out_receipt_back_marks_exactly_the_carried_events_delivered(
    stub: StubProcess, tmp_path: Path
) -> None:
    site, stick = site_with_policy(stub, tmp_path)
    ok(site.run("enforce", "--once"))
    carried = site.queued()
    assert carried >= 3  # import, reconcile, health

    exported = site.json("export-status", str(stick))
    report = Path(exported["path"])
    assert report.parent == stick and report.name.endswith(".report")
    assert exported["events"] == carried
    assert [p.name for p in stick.iterdir() if p.name.startswith(".")] == []  # no temp left
    # Written is not delivered: everything stays queued until management says it has it.
    assert site.queued() == carried
    status = site.status()
    assert [r["report_id"] for r in status["reports"]] == [exported["report_id"]]
    assert "1 status report awaiting" in ok(site.run("status"))

    # Meanwhile the site goes on: a manifest changed behind its back is healed (new events).
    victim = next((site.root / "manifests").rglob("*.yaml"))
    victim.write_text("tampered: true\n")
    ok(site.run("enforce", "--once"))
    later = site.queued() - carried
    assert later >= 1

    # A tampered report is refused at headquarters, one line, nothing recorded.
    tampered = stick / "tampered.report"
    tampered.write_bytes(tamper_payload(report.read_bytes()))
    one_line_error(stub.cli("ingest", str(tampered)), 1, "mgmt-stub: ")
    assert server_events(stub) == []

    # The real one is recorded as if it came online, and the receipt lands on the stick.
    ingested = json.loads(ok(stub.cli("ingest", str(report), "--json")))
    assert ingested["accepted"] == carried + 2  # plus the report's health and import history
    receipt = Path(ingested["receipt_file"])
    assert receipt.parent == stick and receipt.name == f"edge-receipt-{CLUSTER}.receipt"
    cluster = stub.admin.get(f"/v1/admin/clusters/{CLUSTER}").json()
    assert cluster["connectivity"] == "air-gapped" and cluster["health"] is not None
    assert {e["via"] for e in server_events(stub)} == {"usb"}
    types = {e["type"] for e in server_events(stub)}
    assert {"import", "health", "import-history"} <= types

    # A receipt tampered with: refused, nothing acknowledged.
    forged = stick / "forged.receipt"
    forged.write_bytes(tamper_payload(receipt.read_bytes()))
    line = one_line_error(site.run("receipt", str(forged)), 1, "edge-agent: rejected: ")
    assert "receipt" in line and "signature" in line
    assert site.queued() == carried + later

    # The real receipt: exactly the carried events are delivered, the later ones stay.
    accepted = site.json("receipt", str(receipt))
    assert accepted == {
        "result": "accepted",
        "report_ids": [exported["report_id"]],
        "delivered": carried,
    }
    assert site.queued() == later
    assert site.status()["reports"] == []
    # The same receipt again acknowledges nothing more.
    again = site.json("receipt", str(receipt))
    assert again["report_ids"] == [] and site.queued() == later


def test_a_receipt_from_foreign_keys_or_for_another_cluster_is_refused(
    stub: StubProcess, tmp_path: Path
) -> None:
    site, stick = site_with_policy(stub, tmp_path)
    report = Path(site.json("export-status", str(stick))["path"])
    queued = site.queued()

    # Another management server (keys this site does not trust) ingests the same report.
    other = StubProcess.start(tmp_path / "other-stub")
    try:
        agent_key = site.json("agent-key")["agent_key"]
        ok(other.cli("cluster", "register", CLUSTER, "--agent-key", agent_key))
        foreign = tmp_path / "foreign.receipt"
        ok(other.cli("ingest", str(report), "--receipt", str(foreign)))
    finally:
        other.stop()
    line = one_line_error(site.run("receipt", str(foreign)), 1, "edge-agent: rejected: ")
    assert "key" in line
    assert site.queued() == queued

    # Our own server's receipt, for another cluster: refused too.
    key = Ed25519PrivateKey.generate()
    raw = base64.b64encode(public_key_raw(key)).decode()
    ok(stub.cli("cluster", "register", "mine-2", "--agent-key", raw))
    theirs = tmp_path / "theirs.report"
    theirs.write_bytes(
        sign_report(
            key, cluster_id="mine-2", report_id="r1", created_at="2026-12-01T00:00:00Z", events=[]
        )
    )
    elsewhere = tmp_path / "mine-2.receipt"
    ok(stub.cli("ingest", str(theirs), "--receipt", str(elsewhere)))
    line = one_line_error(site.run("receipt", str(elsewhere)), 1, "edge-agent: rejected: ")
    assert "mine-2" in line
    assert site.queued() == queued

    # Ours, fetched later from the server rather than written at ingest: accepted.
    ok(stub.cli("ingest", str(report), "--no-receipt"))
    mine = tmp_path / "mine.receipt"
    ok(stub.cli("cluster", "receipt", CLUSTER, "-o", str(mine)))
    assert site.json("receipt", str(mine))["delivered"] == queued
    assert site.queued() == 0


def test_export_to_a_missing_or_read_only_folder_fails_cleanly(
    stub: StubProcess, tmp_path: Path
) -> None:
    site, _stick = site_with_policy(stub, tmp_path)
    queued = site.queued()
    missing = one_line_error(
        site.run("export-status", str(tmp_path / "nope")), 6, "edge-agent: export folder"
    )
    assert "does not exist" in missing
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a read-only tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        line = one_line_error(
            site.run("export-status", str(read_only)), 6, "edge-agent: status report not written"
        )
        assert "Read-only file system" in line
        assert os.listdir(read_only) == []
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert site.queued() == queued and site.status()["reports"] == []


def test_the_daemon_leaves_a_report_on_an_inserted_stick_and_takes_the_receipt_back(
    stub: StubProcess, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    site = AirGappedSite(tmp_path / "site", stub, str(media / "*" / "edge"))
    headquarters = tmp_path / "hq"
    headquarters.mkdir()
    bundle = register_and_export(stub, site, headquarters)
    log = (site.root / "run.log").open("ab")
    daemon = subprocess.Popen(
        [str(BIN / "edge-agent"), "--config", str(site.config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "watching drop folders" in (site.root / "run.log").read_text(), 20)
        # A stick that was in before the daemon started is no arrival; this one arrives.
        stick = media / "stick1" / "edge"
        stick.mkdir(parents=True)
        shutil.copy(bundle, stick / "policy.bundle")

        def reports() -> list[Path]:
            return sorted(stick.glob("*.report")) if stick.exists() else []

        wait_for(lambda: len(reports()) == 1, 30)
        status = site.status()
        assert status["policy"]["revision"] >= 1  # the bundle on it was imported first
        carried = status["reports"][0]["events"]
        assert carried >= 1 and site.queued() >= carried

        # The stick goes to headquarters (pulled), the report is ingested, the receipt is
        # written onto it, and it comes back (plugged in again).
        shutil.move(str(media / "stick1"), str(tmp_path / "carried"))
        wait_for(lambda: "edge gone" in (site.root / "run.log").read_text(), 20)
        ok(stub.cli("ingest", str(next((tmp_path / "carried" / "edge").glob("*.report")))))
        before = site.queued()
        shutil.move(str(tmp_path / "carried"), str(media / "stick1"))
        wait_for(lambda: site.status()["reports"] != [] and len(reports()) == 2, 30)
        # The receipt was taken before the new report was written: the new one carries only
        # what was queued since, and the first report's events are delivered.
        status = site.status()
        assert [r["events"] for r in status["reports"]] == [before - carried]
        assert site.queued() == before - carried
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        log.close()
