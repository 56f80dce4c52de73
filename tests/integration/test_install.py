"""scripts/install.sh into a temporary root: what it places, idempotence, uninstall, purge."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.conftest import BIN, REPO

SCRIPT = REPO / "scripts" / "install.sh"


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_is_idempotent_and_never_overwrites_the_operators_files(tmp_path: Path) -> None:
    root = tmp_path / "host"
    config = tmp_path / "config.yaml"
    config.write_text("cluster_id: site-1\npaths: {initial_root: /etc/edge-agent/root.json}\n")
    trust = tmp_path / "root.json"
    trust.write_text('{"signed": "root"}')
    args = ("--binary", str(BIN / "edge-agent"), "--config", str(config), "--root-json", str(trust))

    first = install(root, *args)
    assert first.returncode == 0, first.stderr
    binary = root / "usr/local/bin/edge-agent"
    unit = root / "etc/systemd/system/edge-agent.service"
    installed_config = root / "etc/edge-agent/config.yaml"
    assert mode(binary) == 0o755 and mode(unit) == 0o644 and mode(installed_config) == 0o640
    assert unit.read_text() == (REPO / "scripts/edge-agent.service").read_text()
    assert (root / "etc/edge-agent/root.json").read_text() == trust.read_text()

    second = install(root, *args)
    assert second.returncode == 0 and "installed /" not in second.stdout  # nothing to do

    installed_config.write_text("cluster_id: edited-on-site\n")
    third = install(root, *args)
    assert "kept the existing" in third.stdout
    assert installed_config.read_text() == "cluster_id: edited-on-site\n"


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "host"
    assert install(root, "--binary", str(BIN / "edge-agent")).returncode == 0
    state = root / "var/lib/edge-agent"
    state.mkdir(parents=True)
    (state / "keep-me").write_text("trust state")
    (root / "etc/edge-agent/config.yaml").write_text("cluster_id: x\n")
    unpacked = root / "var/cache/edge-agent/_MEIabc123"  # the binary's, left by a kill -9
    unpacked.mkdir(parents=True)

    removed = install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "var/cache/edge-agent").exists()
    assert (state / "keep-me").exists() and (root / "etc/edge-agent/config.yaml").exists()

    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0 and not state.exists()
    assert not (root / "etc/edge-agent").exists()


def test_bad_usage_is_exit_2(tmp_path: Path) -> None:
    assert install(tmp_path, "--bogus").returncode == 2
    assert install(tmp_path).returncode == 2  # no --binary
    assert install(tmp_path, "--binary").returncode == 2  # no value
    missing = install(tmp_path, "--binary", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "not an executable" in missing.stderr
