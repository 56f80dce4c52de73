"""`edge-agent watch` end to end: a real process, real inotify, a real (tmpfs) USB stick."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, Site, make_site, wait_for


def status(site: Site) -> dict:
    return json.loads(site.run("status", "--json").stdout)


@pytest.fixture
def watching(tmp_path: Path, keys) -> Iterator[tuple[Site, Path, subprocess.Popen[str]]]:
    media = tmp_path / "media"
    media.mkdir()
    site = make_site(tmp_path / "site", keys, extra=f'drop_folders: ["{media}/*/edge-bundles"]\n')
    process = subprocess.Popen(
        [str(BIN / "edge-agent"), "--config", str(site.config_path), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: site.config.status_snapshot.exists())  # provisioned and running
        yield site, media, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_watch_imports_copied_bundles_once_and_records_rejections(watching, make_bundle) -> None:
    site, media, process = watching
    folder = media / "stick" / "edge-bundles"
    folder.mkdir(parents=True)
    # The folder matches the pattern from now on; whether the copy lands before the next
    # poll (found by its scan) or after (found by close-after-write), it is imported.
    shutil.copy(make_bundle(1), folder / "r1.bundle")
    wait_for(lambda: (status(site).get("policy") or {}).get("revision") == 1)

    tampered = bytearray(make_bundle(2).read_bytes())
    index = tampered.index(b"Hello from the edge")
    tampered[index] ^= 0x01
    (folder / "r2-tampered.bundle").write_bytes(bytes(tampered))
    wait_for(lambda: status(site)["imports"][-1].get("code") == "hash-mismatch")
    assert status(site)["policy"]["revision"] == 1

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    _, stderr = process.communicate(timeout=30)
    assert "committed: revision 1" in stderr
    assert "rejected: hash-mismatch" in stderr
    imports = [entry["result"] for entry in status(site)["imports"]]
    assert imports == ["committed", "rejected"], imports  # each file handled exactly once


def test_watch_finds_a_bundle_on_a_newly_mounted_stick(watching, make_bundle) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs stick needs root")
    site, media, process = watching
    stick = media / "usb0"
    stick.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(stick)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (stick / "edge-bundles").mkdir()
        shutil.copy(make_bundle(3), stick / "edge-bundles" / "site.bundle")
        subprocess.run(["mount", "-o", "remount,ro", str(stick)], check=True)  # a read-only stick
        wait_for(lambda: (status(site).get("policy") or {}).get("revision") == 3)
        assert sorted(p.name for p in (stick / "edge-bundles").iterdir()) == ["site.bundle"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        subprocess.run(["umount", "-l", str(stick)], check=False)
