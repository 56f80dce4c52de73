"""The real console scripts, run as an operator would: exit codes, one-line errors, JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, PROFILES, REPO, Site, make_site


def mgmt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mgmt-stub"), *args], capture_output=True, text=True, timeout=120
    )


def test_status_before_anything_is_not_initialised(site: Site) -> None:
    result = site.run("status", "--json")
    assert result.returncode == 3, result
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "not-initialised" and doc["policy"] is None
    assert not site.config.state_dir.exists(), "status created state"


def test_verify_after_an_unprovisioned_store_exists_does_not_provision_it(
    site: Site, make_bundle
) -> None:
    from edge_agent.state import StateStore

    StateStore.open(site.config.state_dir).close()  # e.g. left by an aborted first start
    assert site.run("verify", str(make_bundle(1))).returncode == 0
    with StateStore.open(site.config.state_dir) as store:
        assert not store.is_provisioned()


def test_verify_has_no_side_effects(site: Site, make_bundle) -> None:
    result = site.run("verify", str(make_bundle(1)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: bundle hello-web-r1")
    assert not site.config.state_dir.exists(), "verify created state"


def test_import_then_status_shows_the_policy(site: Site, make_bundle) -> None:
    bundle = make_bundle(3)
    result = site.run("import", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("revision 3 now in force")
    status = site.run("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["verdict"] == "healthy"
    assert doc["cluster_id"] == "site-1" and doc["labels"] == {"region": "eu", "tier": "edge"}
    policy = doc["policy"]
    assert policy["revision"] == 3 and policy["source"]["kind"] == "bundle"
    assert policy["source"]["location"] == str(bundle)
    assert [(layer["name"], layer["objects"]) for layer in policy["layers"]] == [
        ("base", 1),
        ("app", 3),
    ]
    assert doc["trust"]["root_version"] == 1 and doc["trust"]["time_high_water"]
    assert doc["imports"][-1]["result"] == "committed"
    human = site.run("status")
    assert "revision 3" in human.stdout and "layer      app" in human.stdout


def test_rejected_import_exits_1_with_one_line_and_json(site: Site, make_bundle) -> None:
    assert site.run("import", str(make_bundle(5))).returncode == 0
    older = make_bundle(4)
    result = site.run("import", str(older))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "rollback" in result.stderr
    as_json = site.run("import", "--json", str(older))
    assert json.loads(as_json.stdout)["code"] == "rollback"
    status = json.loads(site.run("status", "--json").stdout)
    # An older bundle left on a stick is no reason for alarm...
    assert status["policy"]["revision"] == 5 and status["verdict"] == "healthy"
    tampered = bytearray(make_bundle(6).read_bytes())
    tampered[tampered.index(b"Hello from the edge")] ^= 0x01
    (site.root / "tampered.bundle").write_bytes(bytes(tampered))
    assert site.run("import", str(site.root / "tampered.bundle")).returncode == 1
    # ...a tampered one is.
    status = json.loads(site.run("status", "--json").stdout)
    assert status["verdict"] == "degraded" and "hash-mismatch" in status["reason"]
    assert site.run("status").returncode == 1


def test_status_fails_when_the_trust_root_has_expired(tmp_path: Path, make_bundle) -> None:
    from edge_agent.importer import import_file
    from mgmt_stub.keys import KeyDirectory
    from tests.conftest import NOW, FakeClock

    then = NOW - dt.timedelta(days=100)
    short = KeyDirectory(tmp_path / "short-keys")
    short.init(now=NOW - dt.timedelta(days=400), expires_days=365)  # expired 35 days before NOW
    site = make_site(tmp_path / "short-site", short)
    with site.open_store() as store:  # imported back when the root was still valid
        store.provision(site.config.initial_root.read_bytes(), now=then)
        bundle = make_bundle(1, key_dir=short, now=then - dt.timedelta(hours=1))
        import_file(bundle, store=store, config=site.config, clock=FakeClock(then))
    result = site.run("status", "--json")  # today, on the real clock
    doc = json.loads(result.stdout)
    assert result.returncode == 2 and doc["verdict"] == "failing", doc["reason"]
    assert "expired" in doc["reason"] and doc["policy"]["revision"] == 1


def test_missing_file_is_a_clear_rejection(site: Site) -> None:
    result = site.run("verify", "/nonexistent/bundle.tar")
    assert result.returncode == 1
    assert "read-failed" in result.stderr and "No such file" in result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "cluster_id: Site_1\npaths: {initial_root: r.json}\n",
            "cluster_id must be a lowercase DNS-style name",
        ),
        ("cluster_id: s\npaths: {initial_root: r.json}\nlimts: {}\n", "unknown key 'limts'"),
        ("cluster_id: s\n", "paths.initial_root is required"),
        (
            "cluster_id: s\npaths: {initial_root: r.json}\nlimits: {max_bundle_bytes: -1}\n",
            "limits.max_bundle_bytes must be a positive integer",
        ),
        (
            "cluster_id: s\npaths: {initial_root: r.json}\nlabels: {'bad key!': x}\n",
            "is not a valid Kubernetes label",
        ),
        ("cluster_id: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        (
            "cluster_id: a\ncluster_id: b\npaths: {initial_root: r.json}\n",
            "key 'cluster_id' is given twice",
        ),
    ],
)
def test_broken_config_is_one_line_exit_2(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    result = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(tmp_path / "nope.yaml"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "file not found" in result.stderr


def test_tampered_initial_root_is_refused(site: Site, make_bundle) -> None:
    root = json.loads(site.config.initial_root.read_text())
    root["signatures"][0]["sig"] = root["signatures"][0]["sig"][::-1]
    site.config.initial_root.write_text(json.dumps(root))
    result = site.run("import", "--json", str(make_bundle(1)))
    # A bad trust anchor is a provisioning (configuration) problem, not a rejected bundle.
    assert result.returncode == 2 and "initial root" in result.stderr
    assert json.loads(result.stdout)["result"] == "config-error"


def _interpreter_for(user: str) -> list[str] | None:
    """A command that runs this package as ``user``, or None if none can be found.

    The venv's interpreter may live under a private home (e.g. /root/.pyenv); a system
    Python of the same minor version with the venv's site-packages on the path works too.
    """
    import sys
    import sysconfig

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = f"PYTHONPATH={REPO}:{sysconfig.get_paths()['purelib']}"
    for interpreter in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "env", env, interpreter, "-c", "import edge_agent.cli"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return ["runuser", "-u", user, "--", "env", env, interpreter, "-m", "edge_agent"]
    return None


def test_status_by_another_user_reads_the_snapshot(keys, make_bundle) -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run status as the 'nobody' user")
    import tempfile

    # pytest's own tmp folders are private to root; a site like /etc + /var/lib is not.
    public = Path(tempfile.mkdtemp(prefix="edge-agent-site-"))
    public.chmod(0o755)
    site = make_site(public / "site", keys)
    site.root.chmod(0o755)
    site.config_path.chmod(0o644)
    assert site.run("import", str(make_bundle(2))).returncode == 0
    command = _interpreter_for("nobody")
    if command is None:
        pytest.skip("no Python interpreter this package can run under is executable by 'nobody'")
    result = subprocess.run(
        [*command, "--config", str(site.config_path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["policy"]["revision"] == 2
    assert doc["read_from"].startswith("snapshot")
    # ...and nobody cannot read the private store itself.
    peek = subprocess.run(
        ["runuser", "-u", "nobody", "--", "ls", str(site.config.state_dir / "store")],
        capture_output=True,
    )
    assert peek.returncode != 0
    shutil.rmtree(public)


def test_three_rotations_carried_offline_and_a_revoked_key_rejected(
    site: Site, keys, make_bundle
) -> None:
    assert site.run("import", str(make_bundle(1))).returncode == 0
    compromised = json.loads(mgmt("keys", "show", "--keys", str(keys.path), "--json").stdout)[
        "policy_keys"
    ][0]
    stolen_copy = keys.path.parent / "stolen-keys"
    shutil.copytree(keys.path, stolen_copy)  # an attacker's copy of the policy key, taken now

    rotations = [
        ("--new-root-key",),  # v2: add a root key
        ("--new-policy-key", "--revoke", compromised[:12]),  # v3: replace the compromised key
        (),  # v4: plain renewal
    ]
    for revision, extra in enumerate(rotations, start=2):
        done = mgmt("keys", "rotate", "--keys", str(keys.path), *extra)
        assert done.returncode == 0, done.stderr
        result = site.run(
            "import", str(make_bundle(revision))
        )  # each bundle carries the root chain
        assert result.returncode == 0, result.stderr

    status = json.loads(site.run("status", "--json").stdout)
    assert status["trust"]["root_version"] == 4
    assert compromised in status["trust"]["revoked_keys"]
    assert compromised not in status["trust"]["policy_keys"]

    from mgmt_stub.keys import KeyDirectory

    forged = make_bundle(10, key_dir=KeyDirectory(stolen_copy))  # signed by the stolen key
    result = site.run("import", str(forged))
    assert result.returncode == 1 and "key-revoked" in result.stderr, result.stderr
    assert json.loads(site.run("status", "--json").stdout)["policy"]["revision"] == 4


def test_a_second_site_catches_up_on_all_rotations_in_one_bundle(
    tmp_path: Path, keys, make_bundle
) -> None:
    for extra in (("--new-root-key",), ("--new-policy-key",), ()):
        assert mgmt("keys", "rotate", "--keys", str(keys.path), *extra).returncode == 0
    late = make_site(tmp_path / "late-site", keys)  # provisioned with root v1 long ago
    result = late.run("import", str(make_bundle(1)))
    assert result.returncode == 0, result.stderr
    assert json.loads(late.run("status", "--json").stdout)["trust"]["root_version"] == 4


def test_mgmt_keys_are_private_and_never_printed(tmp_path: Path) -> None:
    key_dir = tmp_path / "k"
    init = mgmt(
        "keys", "init", "--keys", str(key_dir), "--policy-keys", "2", "--policy-threshold", "2"
    )
    assert init.returncode == 0, init.stderr
    private = list((key_dir / "private").iterdir())
    assert len(private) == 3
    for pem in private:
        assert oct(pem.stat().st_mode & 0o777) == "0o600"
        body = "".join(pem.read_text().splitlines()[1:-1])
        assert body not in init.stdout + init.stderr
    assert oct(key_dir.stat().st_mode & 0o777) == "0o700"
    again = mgmt("keys", "init", "--keys", str(key_dir))
    assert again.returncode == 1 and "already initialised" in again.stderr


def test_mgmt_bundle_build_targets_and_errors(tmp_path: Path, keys, site: Site) -> None:
    out = tmp_path / "b.bundle"
    built = mgmt(
        "bundle",
        "build",
        "--profile",
        str(PROFILES / "monitoring"),
        "--target",
        "region=eu",
        "--revision",
        "7",
        "--keys",
        str(keys.path),
        "-o",
        str(out),
    )
    assert built.returncode == 0, built.stderr
    assert site.run("verify", str(out)).returncode == 0
    bad = mgmt(
        "bundle",
        "build",
        "--profile",
        str(PROFILES / "monitoring"),
        "--target",
        "Not_An_Id",
        "--revision",
        "7",
        "--keys",
        str(keys.path),
        "-o",
        str(out),
    )
    assert bad.returncode == 2 and "not a valid cluster id" in bad.stderr
    other = mgmt(
        "bundle",
        "build",
        "--profile",
        str(PROFILES / "monitoring"),
        "--target",
        "region=us",
        "--revision",
        "8",
        "--keys",
        str(keys.path),
        "-o",
        str(out),
    )
    assert other.returncode == 0
    refused = site.run("verify", str(out))
    assert refused.returncode == 1 and "wrong-target" in refused.stderr
