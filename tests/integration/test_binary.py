"""The one-file binary (dist/edge-agent, scripts/build-binary.sh), run as an operator and as
systemd would run it.

A one-file build is two processes: the bootloader (what systemd starts: the main PID) unpacks
the bundle into ``$TMPDIR/_MEI*`` and runs the agent in a child it waits for, forwarding
signals to it, and removes the folder when the child is gone. Three things follow, each shown
here with the real binary under ``tests.fake_systemd`` (sender pids from ``SCM_CREDENTIALS``,
NotifyAccess, the watchdog, KillMode, all read from scripts/edge-agent.service itself):

- notifications come from the child: ``NotifyAccess=main`` rejects them all (the service would
  never be up), the shipped unit accepts them;
- ``WATCHDOG_PID`` names the bootloader: the agent accepts it as its own (``systemd.Notifier``)
  and pings; systemd's watchdog never fires;
- the unpack folder must allow exec: on a ``noexec`` mount the binary cannot start; the unit
  unpacks into its own cache folder (``TMPDIR``), emptied of a killed run's leftovers by
  ``ExecStartPre``.

Plus the smoke test of the binary itself: verify, import, status (text and JSON), a short
``run`` against a manifest folder, ``enforce --once`` against a Kubernetes API. Without
dist/edge-agent these are skipped with the reason, except under ``CI=true`` (.ci/run builds it
first): there they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mgmt_stub.keys import KeyDirectory
from tests.conftest import REPO, BundleMaker, Site, make_site, wait_for
from tests.fake_apiserver import FakeApiServer
from tests.fake_systemd import FakeSystemd, ServiceSettings

BINARY = REPO / "dist" / "edge-agent"
UNIT = REPO / "scripts" / "edge-agent.service"
WATCHDOG_USEC = 2_000_000
"""Small, so a few watchdog intervals pass in seconds (the agent pings every second)."""


@pytest.fixture(scope="module")
def binary() -> Path:
    if BINARY.is_file() and os.access(BINARY, os.X_OK):
        return BINARY
    if os.environ.get("CI") == "true":
        pytest.fail(f"{BINARY} is missing: .ci/run builds it (scripts/build-binary.sh) first")
    pytest.skip(f"{BINARY} is not built (scripts/build-binary.sh builds it)")


@pytest.fixture
def unit(tmp_path: Path) -> ServiceSettings:
    """The shipped unit's settings (%C in a temporary folder), with a short watchdog."""
    shipped = ServiceSettings.from_unit(UNIT, cache_root=tmp_path / "cache")
    return shipped.replace(watchdog_usec=WATCHDOG_USEC)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


def agent_site(tmp_path: Path, keys: KeyDirectory) -> tuple[Site, Path, Path]:
    """(site, drop folder, manifest folder): a site with no management server."""
    drop, manifests = tmp_path / "drop", tmp_path / "manifests"
    drop.mkdir()
    manifests.mkdir()
    extra = f"drop_folders: ['{drop}']\ntarget: {{kind: manifest-dir, folder: {manifests}}}\n"
    return make_site(tmp_path / "site", keys, extra=extra), drop, manifests


def run(
    binary: Path, site: Site, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "--config", str(site.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def unpacked(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("_MEI*"))


def start_agent(
    systemd: FakeSystemd, binary: Path, site: Site, settings: ServiceSettings, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return systemd.start(
            [str(binary), "--config", str(site.config_path), "run"], settings, output=out
        )


# -- the binary as an operator runs it ---------------------------------------------------------


def test_the_binary_verifies_imports_and_reports_status(
    binary: Path, tmp_path: Path, keys: KeyDirectory, make_bundle: BundleMaker
) -> None:
    site, _, _ = agent_site(tmp_path, keys)
    bundle = make_bundle(1)
    verified = run(binary, site, "verify", str(bundle))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("valid: bundle hello-web-r1")
    assert not site.config.state_dir.exists(), "verify created state"
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert run(binary, site, "verify", str(tampered)).returncode == 1

    imported = run(binary, site, "import", str(bundle))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("revision 1 now in force")
    text = run(binary, site, "status")
    assert text.returncode == 0 and "revision 1" in text.stdout, text.stdout + text.stderr
    doc = json.loads(run(binary, site, "status", "--json").stdout)
    assert doc["verdict"] == "healthy" and doc["policy"]["revision"] == 1
    assert doc["cluster_id"] == "site-1"


def test_the_binary_enforces_onto_a_kubernetes_api(
    binary: Path, tmp_path: Path, keys: KeyDirectory, make_bundle: BundleMaker
) -> None:
    # The kubernetes client is a hidden import of the build (edge_agent loads it lazily).
    with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        site = make_site(
            tmp_path / "site",
            keys,
            extra=f"target: {{kind: kubernetes, kubeconfig: {kubeconfig}}}\n",
        )
        assert run(binary, site, "import", str(make_bundle(1))).returncode == 0
        cycle = run(binary, site, "enforce", "--once", "--json")
        assert cycle.returncode == 0, cycle.stderr
        assert json.loads(cycle.stdout)["counts"]["created"] == 4


# -- the binary as systemd runs it -------------------------------------------------------------


def test_under_notify_access_main_systemd_rejects_every_notification(
    binary: Path, tmp_path: Path, keys: KeyDirectory, unit: ServiceSettings, systemd: FakeSystemd
) -> None:
    site, _, _ = agent_site(tmp_path, keys)
    process = start_agent(
        systemd, binary, site, unit.replace(notify_access="main"), tmp_path / "log"
    )
    wait_for(lambda: any(m.fields.get("READY") == "1" for m in systemd.rejected), 30)
    wait_for(lambda: any(m.fields.get("WATCHDOG") == "1" for m in systemd.rejected), 10)
    ready = next(m for m in systemd.rejected if m.fields.get("READY") == "1")
    # Sent by the agent, a child of the bootloader systemd started: not the main PID.
    assert ready.pid != process.pid and ready.pid in systemd.processes()
    assert ready.reason == f"reception only permitted for main PID {process.pid}"
    assert systemd.messages == [] and systemd.state == "activating"  # never up
    assert systemd.stop() == 0


def test_the_shipped_unit_runs_the_binary(
    binary: Path,
    tmp_path: Path,
    keys: KeyDirectory,
    make_bundle: BundleMaker,
    unit: ServiceSettings,
    systemd: FakeSystemd,
) -> None:
    site, drop, manifests = agent_site(tmp_path, keys)
    unpack = Path(unit.environment["TMPDIR"])
    assert unpack in unit.cache_directories  # the service's own folder
    log = tmp_path / "run.log"
    process = start_agent(systemd, binary, site, unit, log)
    wait_for(lambda: systemd.state == "running", 30)
    main, *children = systemd.processes()
    assert main == process.pid and len(children) == 1  # the bootloader and the agent
    [agent] = children
    ready = next(m for m in systemd.received if m.fields.get("READY") == "1")
    assert ready.pid == agent and ready.accepted
    assert ready.fields["STATUS"].startswith("NOT INITIALISED")
    assert len(unpacked(unpack)) == 1

    # WATCHDOG_PID names the bootloader; the agent takes the watchdog as its own and pings.
    started = time.monotonic()
    pings_before = systemd.seen("WATCHDOG", "1")
    shutil.copy(make_bundle(1), drop / "r1.bundle")
    wait_for(lambda: len(list(manifests.glob("*.yaml"))) == 2, 30)
    systemd.reload()  # ExecReload=/bin/kill -HUP $MAINPID: forwarded by the bootloader
    wait_for(lambda: systemd.seen("RELOADING", "1") == 1, 10)
    wait_for(lambda: systemd.seen("READY", "1") == 2, 20)
    time.sleep(max(0.0, started + 3 * WATCHDOG_USEC / 1e6 - time.monotonic()))
    pings = systemd.seen("WATCHDOG", "1") - pings_before
    assert pings >= 4, f"{pings} pings in three watchdog intervals"
    assert {m.pid for m in systemd.received} == {agent}
    assert systemd.rejected == [] and systemd.watchdog_failures == []

    stopping = time.monotonic()
    assert systemd.stop() == 0  # the agent stopped cleanly: one SIGTERM, forwarded once
    assert time.monotonic() - stopping < 5
    assert [pid for pid, _ in systemd.signals] == [main, main]  # HUP, TERM: the bootloader only
    assert systemd.seen("STOPPING", "1") == 1
    assert unpacked(unpack) == []  # the bootloader removed its folder
    text = log.read_text()
    assert "configuration reloaded" in text and "Traceback" not in text


def test_a_killed_run_leaves_its_unpack_folder_and_the_next_start_removes_it(
    binary: Path, tmp_path: Path, keys: KeyDirectory, unit: ServiceSettings, systemd: FakeSystemd
) -> None:
    site, _, _ = agent_site(tmp_path, keys)
    unpack = Path(unit.environment["TMPDIR"])
    start_agent(systemd, binary, site, unit, tmp_path / "log")
    wait_for(lambda: systemd.state == "running", 30)
    systemd.kill_all()  # kill -9 of the whole service, or the power went
    left = unpacked(unpack)
    assert len(left) == 1, "SIGKILL left no unpack folder: nothing to show"

    start_agent(systemd, binary, site, unit, tmp_path / "log")  # ExecStartPre runs first
    wait_for(lambda: systemd.state == "running", 30)
    now = unpacked(unpack)
    assert len(now) == 1 and now != left
    assert systemd.stop() == 0
    assert unpacked(unpack) == []


def test_a_noexec_unpack_folder_stops_the_binary_and_the_units_folder_does_not(
    binary: Path, tmp_path: Path, keys: KeyDirectory, unit: ServiceSettings
) -> None:
    # A private mount namespace: the noexec tmpfs is seen by that process only, and goes
    # away with it.
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "noexec",
            "tmpfs",
            str(noexec),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a noexec tmpfs here (root and unshare needed): {probe.stderr}")
    site, _, _ = agent_site(tmp_path, keys)

    def status(tmpdir: str) -> subprocess.CompletedProcess[str]:
        script = 'mount -t tmpfs -o noexec tmpfs "$0" && exec "$@"'
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                str(noexec),
                str(binary),
                "--config",
                str(site.config_path),
                "status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "TMPDIR": tmpdir},
        )

    failed = status(str(noexec))
    assert failed.returncode == 127, failed
    assert "failed to map segment from shared object" in failed.stderr  # the symptom
    for folder in unit.cache_directories:
        folder.mkdir(parents=True)
    works = status(unit.environment["TMPDIR"])  # the unit's setting, same namespace
    assert works.returncode == 3 and "NOT-INITIALISED" in works.stdout, works


# -- heavy imports ---------------------------------------------------------------------------


def imported_modules(site: Site, *args: str) -> set[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "edge_agent",
            "--config",
            str(site.config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("command", ["status", "verify", "import"])
def test_kubernetes_is_not_imported_by_commands_that_do_not_enforce_onto_it(
    tmp_path: Path, keys: KeyDirectory, make_bundle: BundleMaker, command: str
) -> None:
    site, _, _ = agent_site(tmp_path, keys)
    args = [command] if command == "status" else [command, str(make_bundle(1))]
    modules = imported_modules(site, *args)
    assert "edge_agent.cli" in modules
    assert not {m.split(".")[0] for m in modules} & {"kubernetes", "pydantic"}


def test_enforcing_onto_a_cluster_does_import_kubernetes(
    tmp_path: Path, keys: KeyDirectory
) -> None:
    # The check above sees the import where there is one (the server needs not answer).
    kubeconfig = tmp_path / "kubeconfig"
    with FakeApiServer() as api:
        api.write_kubeconfig(kubeconfig)
    site = make_site(
        tmp_path / "site", keys, extra=f"target: {{kind: kubernetes, kubeconfig: {kubeconfig}}}\n"
    )
    assert "kubernetes.client" in imported_modules(site, "enforce", "--once")
