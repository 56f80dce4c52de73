"""``edge-agent run`` as a real process under a faithful notify socket.

The test plays systemd's part: an AF_UNIX datagram socket in a temporary folder, named by
``NOTIFY_SOCKET`` (with ``WATCHDOG_USEC``), collecting what the daemon says. The daemon runs
the whole offline loop: a bundle dropped in a folder is imported and enforced into a
manifest folder, a file changed behind its back is healed, and it stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mgmt_stub.keys import KeyDirectory
from tests.conftest import BIN, BundleMaker, wait_for
from tests.fake_systemd import FakeSystemd
from tests.stub_process import free_port
from tests.variants import daemon_site


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


def start(config: Path, systemd: FakeSystemd, log: Path, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "edge-agent"), "--config", str(config), *options, "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_run_notifies_enforces_dropped_bundles_reloads_and_stops(
    tmp_path: Path, keys: KeyDirectory, make_bundle: BundleMaker, systemd: FakeSystemd
) -> None:
    port = free_port()
    textfile = tmp_path / "textfile" / "edge_agent.prom"
    textfile.parent.mkdir()
    config, drop, manifests = daemon_site(
        tmp_path, keys, f"metrics: {{textfile: {textfile}, listen: '127.0.0.1:{port}'}}\n"
    )
    process = start(config, systemd, tmp_path / "run.log")
    try:
        wait_for(lambda: systemd.seen("READY", "1") == 1, 20)
        wait_for(textfile.exists, 10)
        assert 'edge_agent_verdict{verdict="not-initialised"} 1' in textfile.read_text()
        ready = next(m for m in systemd.messages if m.get("READY") == "1")
        assert ready["STATUS"].startswith("NOT INITIALISED")
        # Pings every half watchdog period while healthy.
        before = systemd.seen("WATCHDOG", "1")
        time.sleep(1.6)
        assert systemd.seen("WATCHDOG", "1") - before >= 2

        # The offline loop: a bundle dropped in the folder is imported, then enforced.
        bundle = make_bundle(1)
        shutil.copy(bundle, drop / "r1.bundle")
        wait_for(lambda: len(list(manifests.glob("*.yaml"))) == 2, 30)
        victim = sorted(manifests.glob("*.yaml"))[0]
        original = victim.read_text()
        victim.write_text(original + "\n# changed behind the agent's back\n")
        wait_for(lambda: victim.read_text() == original, 20)
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith(
            "text/plain; version=0.0.4"
        )
        assert "edge_agent_policy_revision 1\n" in scraped.text
        assert 'edge_agent_imports_total{result="committed"} 1' in scraped.text
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404

        # SIGHUP: a broken config is refused and the running one stays...
        good = config.read_text()
        config.write_text(good + "unknown_key: 1\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: systemd.seen("RELOADING", "1") == 1, 10)
        wait_for(lambda: systemd.seen("READY", "1") == 2, 10)
        assert process.poll() is None
        # ...and a good one is taken.
        config.write_text(good)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: systemd.seen("READY", "1") == 3, 20)
        assert process.poll() is None

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - started < 12
        assert systemd.seen("STOPPING", "1") == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = (tmp_path / "run.log").read_text()
    assert "reload refused" in text and "unknown key" in text
    assert "Traceback" not in text


def test_a_broken_config_at_start_is_exit_2_and_never_ready(
    tmp_path: Path, keys: KeyDirectory, systemd: FakeSystemd
) -> None:
    config, _, _ = daemon_site(tmp_path, keys)
    config.write_text(config.read_text().replace("kind: manifest-dir", "kind: nonsense"))
    process = start(config, systemd, tmp_path / "run.log")
    assert process.wait(30) == 2
    assert systemd.seen("READY") == 0
    assert "target.kind" in (tmp_path / "run.log").read_text()


def test_json_logs_are_one_object_per_line(
    tmp_path: Path, keys: KeyDirectory, make_bundle: BundleMaker, systemd: FakeSystemd
) -> None:
    config, drop, manifests = daemon_site(tmp_path, keys)
    log = tmp_path / "run.log"
    process = start(config, systemd, log, "--log-format", "json")
    try:
        wait_for(lambda: systemd.seen("READY", "1") == 1, 20)
        shutil.copy(make_bundle(1), drop / "r1.bundle")
        wait_for(lambda: len(list(manifests.glob("*.yaml"))) == 2, 30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = log.read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) >= 4 and {d["level"] for d in docs} <= {"info", "warning", "error"}
    assert any("committed: revision 1" in d["message"] for d in docs)


def test_a_supervisor_that_never_reads_cannot_stall_the_daemon(
    tmp_path: Path, keys: KeyDirectory
) -> None:
    config, _, _ = daemon_site(tmp_path, keys)
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # full after a few messages
    path = tmp_path / "deaf.sock"
    deaf.bind(str(path))
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "run.log"
    try:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(BIN / "edge-agent"), "--config", str(config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_for(lambda: "edge-agent running" in log.read_text(), 20)
        time.sleep(2)  # pings every 0.1 s: the socket's queue is long full
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        deaf.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "cannot notify systemd" in log.read_text()
