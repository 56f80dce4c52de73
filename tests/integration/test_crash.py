"""kill -9 at random moments while importing: the store always opens and holds a whole policy."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.state import StateStore
from tests.conftest import Site

KILLS = 32


def _check_whole_policy(store: StateStore) -> int:
    """Assert the store holds one consistent policy; return its revision (0 if none yet)."""
    policy = store.current_policy()
    trust = store.trust()
    if policy is None:
        assert trust.revision is None
        return 0
    assert (trust.revision, trust.digest) == (policy["revision"], policy["digest"])
    assert policy["layers"], "policy without layers"
    for layer in policy["layers"]:
        for manifest in layer["manifests"]:
            text_hash = hashlib.sha256(manifest["text"].encode()).hexdigest()
            assert text_hash == manifest["sha256"], f"torn manifest {manifest['path']}"
            assert manifest["objects"], "manifest without objects"
    for artifact in policy["artifacts"]:
        blob = store.artifact_path(artifact["sha256"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == artifact["sha256"], "artifact missing or torn"
    previous = store.previous_policy()
    if previous is not None:
        assert previous["revision"] < policy["revision"]
    return int(policy["revision"])


def start_importer(site: Site, keys, artifact_profile: Path) -> subprocess.Popen[bytes]:
    """A child process that builds and imports ever newer revisions until it is killed."""
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("crash_child.py")),
            str(site.config_path),
            str(keys.path),
            str(artifact_profile),
            str(repo / "bundles" / "baseline"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )


def test_sigkill_at_random_moments_never_tears_the_store(
    site: Site, keys, profile_with_artifact, tmp_path: Path
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    profile = profile_with_artifact(os.urandom(300_000))
    revision, killed_while_committing = 0, 0
    for round_no in range(KILLS):
        with start_importer(site, keys, profile) as process:
            # Wait for the first commit of this run so the kill lands mid-work, not at start-up.
            assert process.stdout is not None and process.stderr is not None
            first = process.stdout.readline().decode()
            if not first.startswith("committed"):
                process.kill()
                raise AssertionError(process.stderr.read().decode()[-2000:])
            time.sleep(rng.uniform(0.0, 0.25))  # a random moment in the build/import loop
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, f"round {round_no}: child exited on its own"
        with StateStore.open(site.config.state_dir) as store:
            now_in_force = _check_whole_policy(store)
            leftovers = list((store.state_dir / "staging").iterdir())
            assert leftovers == [], f"staging of the killed import not cleaned: {leftovers}"
        assert now_in_force >= revision, "a committed revision was lost"
        killed_while_committing += now_in_force > int(first.split()[1])
        revision = now_in_force
    assert revision >= KILLS, f"only {revision} revisions committed in {KILLS} rounds"
    assert killed_while_committing > 0, (
        "no kill landed after further commits; the test exercised nothing"
    )


def test_status_reads_while_another_process_imports(
    site: Site, keys, profile_with_artifact
) -> None:
    seen: list[int] = []
    with start_importer(site, keys, profile_with_artifact(os.urandom(50_000))) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline().decode().startswith("committed")
        try:
            for _ in range(15):
                result = site.run("status", "--json")
                assert result.returncode == 0, result.stderr
                import json

                doc = json.loads(result.stdout)
                assert doc["read_from"].startswith("state store")
                seen.append(doc["policy"]["revision"])
        finally:
            writer.kill()
    assert seen == sorted(seen), "status went backwards"
    assert seen[-1] > seen[0], "the writer made no progress while status was read"
