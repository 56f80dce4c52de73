"""The management side: key rotation that never drops keys or lowers thresholds, and a
builder that refuses at build time every profile the agents would refuse.

CLI behaviour (exit codes, one-line errors, nothing written) is checked through the real
``mgmt-stub`` console script; rotation rules through ``KeyDirectory``; acceptance by a real
agent through a ``Site`` importing a bundle built after the rotation.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mgmt_stub.keys import KeyDirectory, KeyStoreError
from tests.conftest import BIN, NOW, PROFILES, make_site


def mgmt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mgmt-stub"), *args], capture_output=True, text=True, timeout=120
    )


def show(key_dir: Path) -> dict[str, Any]:
    done = mgmt("keys", "show", "--keys", str(key_dir), "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgmt-stub: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(key_dir: Path) -> dict[str, bytes]:
    """Every file in a key directory with its content, to prove nothing was written."""
    return {str(p.relative_to(key_dir)): p.read_bytes() for p in key_dir.rglob("*") if p.is_file()}


def init_keys(key_dir: Path, *args: str) -> dict[str, Any]:
    done = mgmt("keys", "init", "--keys", str(key_dir), *args)
    assert done.returncode == 0, done.stderr
    return show(key_dir)


# -- rotation ----------------------------------------------------------------------------


def test_rotation_keeps_a_root_key_held_elsewhere_and_the_agent_accepts_it(
    tmp_path: Path, make_bundle
) -> None:
    key_dir = tmp_path / "officer-a"
    before = init_keys(key_dir, "--root-keys", "3", "--root-threshold", "2")
    held_elsewhere = before["root_keys"][0]
    (key_dir / "private" / f"{held_elsewhere}.pem").unlink()  # another officer holds it
    site = make_site(tmp_path / "site", KeyDirectory(key_dir))  # provisioned with root v1

    done = mgmt("keys", "rotate", "--keys", str(key_dir), "--new-policy-key")
    assert done.returncode == 0, done.stderr

    after = show(key_dir)
    assert after["root_version"] == 2
    assert after["root_keys"] == before["root_keys"]  # all three, including the absent one
    assert after["root_threshold"] == 2
    assert set(before["policy_keys"]) < set(after["policy_keys"])
    bundle = make_bundle(1, key_dir=KeyDirectory(key_dir))
    result = site.run("import", str(bundle))
    assert result.returncode == 0, result.stderr
    trust = json.loads(site.run("status", "--json").stdout)["trust"]
    assert trust["root_version"] == 2
    assert held_elsewhere not in trust["revoked_keys"]


def test_a_2_of_3_root_stays_2_of_3_when_a_key_is_replaced(tmp_path: Path, make_bundle) -> None:
    key_dir = tmp_path / "keys-2of3"
    before = init_keys(key_dir, "--root-keys", "3", "--root-threshold", "2")
    site = make_site(tmp_path / "site", KeyDirectory(key_dir))
    held_elsewhere, replaced = before["root_keys"][:2]
    (key_dir / "private" / f"{held_elsewhere}.pem").unlink()

    done = mgmt(
        "keys", "rotate", "--keys", str(key_dir), "--revoke", replaced[:12], "--new-root-key"
    )
    assert done.returncode == 0, done.stderr

    after = show(key_dir)
    assert len(after["root_keys"]) == 3 and after["root_threshold"] == 2
    assert replaced not in after["root_keys"] and held_elsewhere in after["root_keys"]
    assert (key_dir / "revoked" / f"{replaced}.pem").exists()
    result = site.run("import", str(make_bundle(1, key_dir=KeyDirectory(key_dir))))
    assert result.returncode == 0, result.stderr
    assert replaced in json.loads(site.run("status", "--json").stdout)["trust"]["revoked_keys"]


def test_revoking_below_the_threshold_fails_and_writes_nothing(tmp_path: Path) -> None:
    key_dir = tmp_path / "mgmt-keys"
    before = init_keys(key_dir, "--policy-keys", "2", "--policy-threshold", "2")
    files = snapshot(key_dir)

    done = mgmt("keys", "rotate", "--keys", str(key_dir), "--revoke", before["policy_keys"][0])

    assert_one_line_failure(done, "policy role", "threshold 2", before["policy_keys"][0][:16])
    assert snapshot(key_dir) == files  # no roots/2.json, no new key, nothing moved
    assert not (key_dir / "roots" / "2.json").exists()


def test_a_new_key_in_the_same_rotation_makes_up_for_a_revocation(tmp_path: Path) -> None:
    key_dir = tmp_path / "mgmt-keys"
    before = init_keys(key_dir, "--policy-keys", "2", "--policy-threshold", "2")
    revoked = before["policy_keys"][0]

    done = mgmt("keys", "rotate", "--keys", str(key_dir), "--revoke", revoked, "--new-policy-key")
    assert done.returncode == 0, done.stderr

    after = show(key_dir)
    assert after["policy_threshold"] == 2 and len(after["policy_keys"]) == 2
    assert revoked not in after["policy_keys"]


def test_revoking_the_only_root_key_without_a_replacement_is_refused(keys: KeyDirectory) -> None:
    root, _ = keys.current_root()
    (only,) = root.root_role.keyids
    files = snapshot(keys.path)
    with pytest.raises(KeyStoreError, match="root role 0 key"):
        keys.rotate(now=NOW, expires_days=365, revoke=[only])
    assert snapshot(keys.path) == files


def test_too_few_old_root_private_keys_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    key_dir = tmp_path / "mgmt-keys"
    before = init_keys(key_dir, "--root-keys", "3", "--root-threshold", "2")
    for keyid in before["root_keys"][:2]:
        (key_dir / "private" / f"{keyid}.pem").unlink()
    files = snapshot(key_dir)

    done = mgmt("keys", "rotate", "--keys", str(key_dir), "--new-root-key")

    assert_one_line_failure(done, "signed by 2 of the 3 root keys of version 1", "only 1")
    assert snapshot(key_dir) == files


def test_the_new_roots_own_threshold_needs_its_private_keys_present(tmp_path: Path) -> None:
    """Old threshold met (A, B here), but the new root {B, C} has only B here: refused,
    unless a new root key added in the same rotation is the second signer."""
    key_dir = tmp_path / "mgmt-keys"
    before = init_keys(key_dir, "--root-keys", "3", "--root-threshold", "2")
    a, b, c = before["root_keys"]
    (key_dir / "private" / f"{c}.pem").unlink()
    files = snapshot(key_dir)
    directory = KeyDirectory(key_dir)

    with pytest.raises(KeyStoreError, match="2 of its own 2 root keys") as caught:
        directory.rotate(now=NOW, expires_days=365, revoke=[a])
    assert "\n" not in str(caught.value)
    assert snapshot(key_dir) == files

    rotated = directory.rotate(now=NOW, expires_days=365, revoke=[a], new_root_keys=1)
    assert rotated.root_role.threshold == 2
    assert {b, c} < rotated.root_role.keyids and a not in rotated.root_role.keyids


def test_three_api_rotations_keep_absent_keys_and_chain_verifies(
    tmp_path: Path, make_bundle
) -> None:
    key_dir = KeyDirectory(tmp_path / "mgmt-keys")
    key_dir.init(
        now=NOW - dt.timedelta(days=1),
        expires_days=365,
        root_keys=2,
        root_threshold=1,
        policy_keys=2,
        policy_threshold=1,
    )
    root, _ = key_dir.current_root()
    absent_policy = sorted(root.policy_role.keyids)[1]
    (key_dir.path / "private" / f"{absent_policy}.pem").unlink()  # lives in an HSM
    site = make_site(tmp_path / "site", key_dir)
    for _ in range(3):
        root = key_dir.rotate(now=NOW, expires_days=365)
    assert root.version == 4
    assert absent_policy in root.policy_role.keyids and root.keys[absent_policy]
    result = site.run("import", str(make_bundle(1, key_dir=key_dir)))
    assert result.returncode == 0, result.stderr


def test_a_corrupt_private_key_is_a_one_line_failure_not_a_usage_error(
    tmp_path: Path, keys: KeyDirectory
) -> None:
    root, _ = keys.current_root()
    (policy,) = root.policy_role.keyids
    (keys.path / "private" / f"{policy}.pem").write_text("not a key\n")
    out = tmp_path / "b.bundle"
    done = mgmt(*build_args(PROFILES / "hello-web", keys.path, out))
    assert_one_line_failure(done, f"{policy}.pem", "not an unencrypted PEM private key")
    assert not out.exists()


# -- bundle build ------------------------------------------------------------------------


def build_args(profile: Path, key_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "bundle",
        "build",
        "--profile",
        str(profile),
        "--target",
        "site-1",
        "--revision",
        "1",
        "--keys",
        str(key_dir),
        "-o",
        str(out),
        *extra,
    ]


HELLO = (PROFILES / "hello-web" / "profile.yaml").read_text(encoding="utf-8")
LAYERS = "layers:\n  - {name: base, path: layers/base}\n  - {name: app, path: layers/app}\n"


def spec_with(**replace: str) -> str:
    """hello-web's profile.yaml with some top-level blocks replaced (or removed if "")."""
    blocks = {
        "name": "name: hello-web\n",
        "settings": "settings: {mode: enforce, reconcile_interval_s: 60, sync_interval_s: 300}\n",
        "layers": LAYERS,
        "artifacts": "",
    }
    blocks.update(replace)
    return "".join(blocks.values())


BAD_PROFILES = {
    "mode-banana": (
        spec_with(settings="settings: {mode: banana}\n"),
        "settings mode must be 'enforce' or 'audit'",
    ),
    "interval-too-short": (
        spec_with(settings="settings: {reconcile_interval_s: 5}\n"),
        "reconcile_interval_s must be an integer from 10 to 86400",
    ),
    "interval-not-integer": (
        spec_with(settings="settings: {sync_interval_s: '300'}\n"),
        "sync_interval_s must be an integer",
    ),
    "unknown-setting": (
        spec_with(settings="settings: {reconcile_intervall_s: 60}\n"),
        "unknown setting 'reconcile_intervall_s'",
    ),
    "settings-not-a-mapping": (spec_with(settings="settings: [enforce]\n"), "'settings' must be"),
    "layer-name-uppercase": (
        spec_with(layers="layers:\n  - {name: Base_1, path: layers/base}\n"),
        "layer name 'Base_1'",
    ),
    "layer-name-repeated": (
        spec_with(
            layers="layers:\n  - {name: base, path: layers/base}\n"
            "  - {name: base, path: layers/app}\n"
        ),
        "layer name 'base' is used twice",
    ),
    "profile-name-with-spaces": (spec_with(name="name: hello web\n"), "profile name 'hello web'"),
    "profile-name-not-a-string": (spec_with(name="name: [a]\n"), "profile name"),
    "artifact-kind-unknown": (
        spec_with(artifacts="artifacts:\n  - {path: a/images.tar, kind: tarball}\n"),
        "artifact kind must be one of",
    ),
    "artifact-basename-twice": (
        spec_with(
            artifacts="artifacts:\n  - {path: a/images.tar, kind: image-archive}\n"
            "  - {path: b/images.tar, kind: image-archive}\n"
        ),
        "would both be 'artifacts/images.tar'",
    ),
    "artifact-as-a-string": (
        spec_with(artifacts="artifacts:\n  - a/images.tar\n"),
        "artifact 1 must be a mapping",
    ),
    "artifacts-not-a-list": (
        spec_with(artifacts="artifacts: {path: a/images.tar}\n"),
        "'artifacts' must be a list",
    ),
    "layer-as-a-string": (
        spec_with(layers="layers:\n  - layers/base\n"),
        "layer 1 must be a mapping with name, path, found str 'layers/base'",
    ),
    "layer-without-path": (
        spec_with(layers="layers:\n  - {name: base}\n"),
        "layer 1 needs a non-empty string 'path'",
    ),
    "missing-layers": (spec_with(layers=""), "'layers' must be a non-empty list"),
    "empty-layers": (spec_with(layers="layers: []\n"), "'layers' must be a non-empty list"),
    "unknown-field": (spec_with(artifact="artifact: []\n"), "unknown field 'artifact'"),
    "not-a-mapping": ("- just\n- a list\n", "must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_a_profile_agents_would_refuse_fails_at_build_time(
    case: str, tmp_path: Path, keys: KeyDirectory
) -> None:
    spec, message = BAD_PROFILES[case]
    profile = tmp_path / "profile"
    shutil.copytree(PROFILES / "hello-web", profile)
    for folder in ("a", "b"):
        (profile / folder).mkdir()
        (profile / folder / "images.tar").write_bytes(b"image " + folder.encode())
    (profile / "profile.yaml").write_text(spec, encoding="utf-8")
    out = tmp_path / "out" / "b.bundle"
    out.parent.mkdir()

    done = mgmt(*build_args(profile, keys.path, out))

    assert_one_line_failure(done, message)
    assert list(out.parent.iterdir()) == []  # no bundle, no partial file


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--revision", "0"), "revision must be an integer from 1"),
        (("--expires-days", "0"), "expires_at is not after issued_at"),
    ],
)
def test_values_the_agent_refuses_fail_at_build_time(
    extra: tuple[str, ...], message: str, tmp_path: Path, keys: KeyDirectory
) -> None:
    out = tmp_path / "b.bundle"
    done = mgmt(*build_args(PROFILES / "hello-web", keys.path, out, *extra))
    assert_one_line_failure(done, "agents would refuse this bundle", message)
    assert not out.exists()


def test_an_unexpected_error_is_one_line_exit_1(tmp_path: Path, keys: KeyDirectory) -> None:
    out = tmp_path / "b.bundle"
    done = mgmt(*build_args(PROFILES / "hello-web", keys.path, out, "--expires-days", "999999999"))
    assert_one_line_failure(done)
    assert not out.exists()


def test_a_good_profile_with_artifacts_still_builds_and_imports(
    site, keys: KeyDirectory, profile_with_artifact, tmp_path: Path
) -> None:
    profile = profile_with_artifact(b"image bytes")
    out = tmp_path / "good.bundle"
    done = mgmt(*build_args(profile, keys.path, out))
    assert done.returncode == 0, done.stderr
    assert "bundle hello-web-r1-" in done.stdout
    result = site.run("import", str(out))
    assert result.returncode == 0, result.stderr
