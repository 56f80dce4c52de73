"""`edge-agent enforce` as an operator runs it: manifest folder and Kubernetes API targets."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BIN, Site, make_site, wait_for
from tests.fake_apiserver import FakeApiServer


def manifest_site(tmp_path: Path, keys, folder: Path) -> Site:
    return make_site(
        tmp_path / "site", keys, extra=f"target: {{kind: manifest-dir, folder: {folder}}}\n"
    )


def start_daemon(site: Site) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "edge-agent"), "--config", str(site.config_path), "enforce"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_enforce_once_renders_the_policy_into_the_manifest_folder(
    tmp_path, keys, make_bundle
) -> None:
    folder = tmp_path / "k3s-manifests"
    folder.mkdir()
    site = manifest_site(tmp_path, keys, folder)
    nothing = site.run("enforce", "--once")
    assert nothing.returncode == 0 and "no policy in force yet" in nothing.stdout
    assert site.run("import", str(make_bundle(1))).returncode == 0
    first = site.run("enforce", "--once", "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["counts"]["created"] == 4 and summary["target"] == "manifest-dir"
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert len(files) == 2  # one per layer: base, app
    again = json.loads(site.run("enforce", "--once", "--json").stdout)
    assert again["counts"]["unchanged"] == 4
    status = json.loads(site.run("status", "--json").stdout)
    assert status["last_cycle"]["line"] == again["line"]


def test_enforce_without_a_target_is_a_config_error(site: Site) -> None:
    result = site.run("enforce", "--once")
    assert result.returncode == 2 and "no enforcement target" in result.stderr


def test_enforce_daemon_applies_new_policies_and_restores_tampered_files(
    tmp_path, keys, make_bundle
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    site = manifest_site(tmp_path, keys, folder)
    assert site.run("import", str(make_bundle(1))).returncode == 0
    daemon = start_daemon(site)
    try:
        agent_files = lambda: sorted(p for p in folder.iterdir() if not p.name.startswith("."))  # noqa: E731
        wait_for(lambda: len(agent_files()) == 2)
        app_file = next(p for p in agent_files() if "app" in p.name)
        original = app_file.read_text()
        app_file.write_text(original.replace("replicas: 2", "replicas: 9"))  # tampering
        wait_for(lambda: app_file.exists() and app_file.read_text() == original)
        app_file.unlink()
        wait_for(lambda: app_file.exists() and app_file.read_text() == original)
        # A new policy (a different profile) is committed by another process: applied at once.
        assert site.run("import", str(make_bundle(2, "baseline"))).returncode == 0
        wait_for(lambda: any("base" in p.name for p in agent_files()) and not app_file.exists())
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    assert "reconcile: revision 2" in stderr


def test_enforce_once_against_a_kubernetes_api(tmp_path, keys, make_bundle) -> None:
    with FakeApiServer() as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        site = make_site(
            tmp_path / "site",
            keys,
            extra=f"target: {{kind: kubernetes, kubeconfig: {kubeconfig}}}\n",
        )
        assert site.run("import", str(make_bundle(1))).returncode == 0
        first = site.run("enforce", "--once", "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["counts"]["created"] == 4
        api.clear_request_log()
        again = json.loads(site.run("enforce", "--once", "--json").stdout)
        assert again["counts"]["unchanged"] == 4
        writes = [r for r in api.request_log if r.method in ("POST", "PUT", "PATCH", "DELETE")]
        assert writes == []
        api.down()
        down = site.run("enforce", "--once")
        assert down.returncode == 5 and "target unavailable" in down.stderr
        assert down.stderr.count("\n") == 1


def test_enforce_daemon_waits_for_a_manifest_folder_that_appears_later(
    tmp_path, keys, make_bundle
) -> None:
    folder = tmp_path / "not-yet"  # k3s creates server/manifests only once it runs
    site = manifest_site(tmp_path, keys, folder)
    assert site.run("import", str(make_bundle(1))).returncode == 0
    daemon = start_daemon(site)
    try:
        time.sleep(0.5)
        assert daemon.poll() is None, "enforce exited because the folder was missing"
        folder.mkdir()
        site.run("import", str(make_bundle(2)))  # a new revision triggers a cycle at once
        wait_for(lambda: len([p for p in folder.iterdir() if not p.name.startswith(".")]) == 2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
