"""The state store is a store of record: configured, private, atomic, and honest on failure."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
import subprocess
import zlib
from pathlib import Path

import pytest

from edge_agent.errors import (
    BundleError,
    BundleErrorCode,
    StateCorruptError,
    StateError,
    StateSchemaError,
)
from edge_agent.importer import import_file
from edge_agent.state import MAX_IMPORTS, SCHEMA_VERSION, STORE_SETTINGS, ImportRecord, StateStore
from tests.conftest import NOW, FakeClock, Site


def test_store_settings_are_those_of_a_store_of_record(store: StateStore) -> None:
    settings = store.settings()
    assert settings["eviction_policy"] == "none"
    assert settings["sqlite_synchronous"] == 2  # FULL
    assert settings["disk_min_file_size"] >= 2**40  # every value inside SQLite
    assert settings["cull_limit"] == 0
    assert settings == dict(STORE_SETTINGS)
    db = sqlite3.connect(store.state_dir / "store" / "cache.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stored = dict(db.execute("SELECT key, value FROM Settings").fetchall())
    assert stored["eviction_policy"] == "none" and stored["sqlite_synchronous"] == 2


def test_settings_survive_reopening_with_diskcache_defaults(site: Site, store: StateStore) -> None:
    import diskcache

    store.close()
    # Someone opening the folder with plain diskcache must not silently re-enable eviction
    # for us: our own open always re-asserts the store-of-record settings.
    diskcache.Cache(str(site.config.state_dir / "store"), disk=diskcache.JSONDisk).close()
    with site.open_store() as reopened:
        assert reopened.settings() == dict(STORE_SETTINGS)


def test_values_are_json_inside_sqlite_never_pickles_or_side_files(
    store: StateStore, make_bundle, clock: FakeClock, site: Site
) -> None:
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    db = sqlite3.connect(store.state_dir / "store" / "cache.db")
    rows = db.execute("SELECT key, mode, filename, value FROM Cache").fetchall()
    assert rows, "the store is empty"
    for key, _mode, filename, value in rows:
        assert filename is None, f"value of {key!r} spilled to a separate file"
        json.loads(zlib.decompress(value))  # JSON, not pickle: this raises on anything else
    files = {p.name for p in (store.state_dir / "store").iterdir()}
    assert files <= {"cache.db", "cache.db-wal", "cache.db-shm", "commit.lock"}, files


def test_large_policy_stays_inside_sqlite(
    store: StateStore, make_bundle, clock, site, tmp_path
) -> None:
    profile = tmp_path / "big"
    (profile / "layers" / "app").mkdir(parents=True)
    (profile / "profile.yaml").write_text("name: big\nlayers: [{name: app, path: layers/app}]\n")
    blob = "x" * 200_000  # far above diskcache's 32 KiB side-file threshold
    (profile / "layers" / "app" / "cm.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{blob: {blob}}}\n"
    )
    import_file(make_bundle(1, profile_dir=profile), store=store, config=site.config, clock=clock)
    db = sqlite3.connect(store.state_dir / "store" / "cache.db")
    assert db.execute("SELECT count(*) FROM Cache WHERE filename IS NOT NULL").fetchone()[0] == 0


def test_permissions_keep_the_store_private_and_the_snapshot_readable(
    store: StateStore, site: Site, make_bundle, clock
) -> None:
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    for private in ("store", "artifacts", "staging"):
        mode = stat.S_IMODE((store.state_dir / private).stat().st_mode)
        assert mode == 0o700, f"{private} is {oct(mode)}"
    snapshot = site.config.status_snapshot
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o644
    view = json.loads(snapshot.read_text())
    assert view["policy"]["revision"] == 1
    assert "text" not in json.dumps(view["policy"]), "the public snapshot must not carry manifests"


def test_commit_keeps_previous_policy_and_history(
    store: StateStore, site: Site, make_bundle, clock
) -> None:
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    import_file(make_bundle(2, "baseline"), store=store, config=site.config, clock=clock)
    assert store.current_policy()["revision"] == 2
    assert store.previous_policy()["revision"] == 1
    assert [r["result"] for r in store.imports()] == ["committed", "committed"]
    assert store.trust().revision == 2


def test_rejected_import_leaves_everything_as_it_was(
    store: StateStore, site: Site, make_bundle, clock
) -> None:
    import_file(make_bundle(2), store=store, config=site.config, clock=clock)
    before = (store.current_policy(), store.trust(), store.previous_policy())
    with pytest.raises(BundleError) as caught:
        import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    assert caught.value.code is BundleErrorCode.ROLLBACK
    assert (store.current_policy(), store.trust(), store.previous_policy()) == before
    assert store.imports()[-1]["result"] == "rejected"
    assert store.imports()[-1]["code"] == "rollback"


def test_same_bundle_twice_is_already_in_force_not_an_error(
    store, site, make_bundle, clock
) -> None:
    bundle = make_bundle(1)
    first = import_file(bundle, store=store, config=site.config, clock=clock)
    second = import_file(bundle, store=store, config=site.config, clock=clock)
    assert (first.outcome, second.outcome) == ("committed", "already-in-force")
    assert store.seen_file(first.file_sha256)["result"] == "already-in-force"


def test_concurrent_commit_is_refused_not_merged(
    store: StateStore, site: Site, make_bundle, clock
) -> None:
    from edge_agent.bundle.verify import verify_bundle

    older_view_trust = store.trust()
    import_file(make_bundle(1), store=store, config=site.config, clock=clock)
    with make_bundle(2).open("rb") as handle, store.staging() as staging:
        stale = verify_bundle(
            handle,
            trust=older_view_trust,
            identity=site.config.identity,
            now=clock.now(),
            limits=site.config.limits,
            sink=staging,
        )
        from edge_agent.state import Source

        with pytest.raises(StateError, match="changed while this bundle was verified"):
            store.commit(
                stale, source=Source("bundle", "x", "0" * 64, NOW), staging=staging, now=NOW
            )
    assert store.current_policy()["revision"] == 1


def test_artifacts_are_placed_by_hash_and_collected_when_unreferenced(
    store: StateStore, site: Site, make_bundle, profile_with_artifact, clock
) -> None:
    contents = [os.urandom(100_000) for _ in range(3)]
    results = [
        import_file(
            make_bundle(i + 1, profile_dir=profile_with_artifact(c)),
            store=store,
            config=site.config,
            clock=clock,
        )
        for i, c in enumerate(contents)
    ]
    names = {p.name for p in (store.state_dir / "artifacts").iterdir()}
    kept = {r.bundle.artifacts[0].sha256 for r in results[1:]}  # in force and previous
    assert names == kept
    for sha in kept:
        import hashlib

        assert hashlib.sha256(store.artifact_path(sha).read_bytes()).hexdigest() == sha
    assert list((store.state_dir / "staging").iterdir()) == []


def test_import_history_is_bounded(store: StateStore) -> None:
    for i in range(MAX_IMPORTS + 25):
        store.record_import(ImportRecord(NOW, f"file-{i}", None, "rejected", code="hash-mismatch"))
    history = store.imports()
    assert len(history) == MAX_IMPORTS
    assert history[-1]["location"] == f"file-{MAX_IMPORTS + 24}"


def test_newer_schema_is_refused(site: Site, store: StateStore) -> None:
    store._cache.set("schema_version", SCHEMA_VERSION + 1)  # a newer agent wrote this store
    store.close()
    with pytest.raises(StateSchemaError, match="schema version 2"):
        site.open_store()


def damage(site: Site, store: StateStore) -> None:
    """Overwrite the closed store's database with garbage."""
    store.close()
    db = site.config.state_dir / "store" / "cache.db"
    for extra in ("cache.db-wal", "cache.db-shm"):
        (db.parent / extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not an sqlite database" * 200)


def test_damaged_store_is_refused_with_a_clear_error(site: Site, store: StateStore) -> None:
    damage(site, store)
    with pytest.raises(StateCorruptError, match="move the store aside"):
        site.open_store()


def test_cli_reports_damaged_store_in_one_line(site: Site, store: StateStore) -> None:
    damage(site, store)
    result = site.run("status")
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "state store" in result.stderr


def test_clock_set_back_keeps_the_trusted_time_mark(
    store: StateStore, site: Site, make_bundle, clock
) -> None:
    import_file(make_bundle(1, now=NOW), store=store, config=site.config, clock=clock)
    mark = store.trust().time_high_water
    clock.current = NOW - dt.timedelta(days=400)  # the RTC battery died
    import_file(
        make_bundle(2, now=NOW + dt.timedelta(hours=1)),
        store=store,
        config=site.config,
        clock=clock,
    )
    assert store.trust().time_high_water == NOW + dt.timedelta(hours=1) > mark


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 3 MiB tmpfs: a real full disk. Needs root and mount permission."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("full-disk test needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"full-disk test: cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_fails_cleanly_and_keeps_the_policy(
    tiny_disk: Path, keys, make_bundle, profile_with_artifact, clock
) -> None:
    from tests.conftest import make_site

    site = make_site(tiny_disk / "site", keys)
    with site.open_store() as store:
        store.provision(site.config.initial_root.read_bytes(), now=clock.now())
        import_file(make_bundle(1), store=store, config=site.config, clock=clock)
        before = (store.current_policy(), store.trust())
        too_big = make_bundle(2, profile_dir=profile_with_artifact(os.urandom(4 << 20)))
        with pytest.raises(StateError) as caught:
            import_file(too_big, store=store, config=site.config, clock=clock)
        assert "No space left on device" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert (store.current_policy(), store.trust()) == before
        assert list((store.state_dir / "staging").iterdir()) == []
    with site.open_store() as reopened:
        assert reopened.current_policy()["revision"] == 1


def test_full_disk_during_the_sqlite_commit_keeps_the_policy(
    tiny_disk: Path, keys, make_bundle, clock, tmp_path
) -> None:
    from tests.conftest import make_site

    site = make_site(tiny_disk / "site", keys)
    profile = tmp_path / "wide"
    (profile / "layers" / "app").mkdir(parents=True)
    (profile / "profile.yaml").write_text("name: wide\nlayers: [{name: app, path: layers/app}]\n")
    noise = os.urandom(600_000).hex()  # incompressible, so the policy row is ~1.2 MB
    (profile / "layers" / "app" / "cm.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wide}}\ndata: {{blob: {noise}}}\n"
    )
    with site.open_store() as store:
        store.provision(site.config.initial_root.read_bytes(), now=clock.now())
        import_file(make_bundle(1), store=store, config=site.config, clock=clock)
        before = (store.current_policy(), store.trust(), store.imports())
        filler = tiny_disk / "filler"
        free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
        filler.write_bytes(b"\0" * max(free - 600_000, 0))  # leave less than the new row needs
        with pytest.raises(StateError) as caught:
            import_file(
                make_bundle(2, profile_dir=profile), store=store, config=site.config, clock=clock
            )
        assert "full" in str(caught.value) and "\n" not in str(caught.value)
        assert (store.current_policy(), store.trust()) == before[:2]
        filler.unlink()
    with site.open_store() as reopened:
        assert reopened.current_policy()["revision"] == 1
        assert reopened.trust().revision == 1


def test_dropped_file_rejected_for_a_site_reason_is_retried_after_the_fix(
    tmp_path: Path, keys, make_bundle, clock
) -> None:
    from edge_agent.importer import import_dropped_file
    from tests.conftest import make_site

    bundle = make_bundle(1, target={"labels": {"region": "us"}})
    wrong = make_site(tmp_path / "a", keys)  # labels region=eu: the bundle is not for it
    with wrong.open_store() as store:
        store.provision(wrong.config.initial_root.read_bytes(), now=clock.now())
        assert import_dropped_file(bundle, store=store, config=wrong.config, clock=clock) is True
        assert store.imports()[-1]["code"] == "wrong-target"
        # Offered again unchanged (a rescan after restart): skipped without a new record.
        assert import_dropped_file(bundle, store=store, config=wrong.config, clock=clock) is True
        assert len(store.imports()) == 1
    fixed = make_site(tmp_path / "a", keys, extra="")  # same state, labels fixed below
    fixed.config_path.write_text(fixed.config_path.read_text().replace("region: eu", "region: us"))
    from edge_agent.config import load_config

    config = load_config(fixed.config_path)
    with fixed.open_store() as store:
        assert import_dropped_file(bundle, store=store, config=config, clock=clock) is True
        assert store.current_policy()["revision"] == 1


def test_a_dropped_file_over_the_limit_is_refused_unread(
    tmp_path: Path, site: Site, store, clock
) -> None:
    import dataclasses

    from edge_agent.importer import import_dropped_file

    big = tmp_path / "huge.bundle"
    with big.open("wb") as handle:
        handle.truncate(10 << 20)  # sparse: 10 MiB that cost nothing to make
    config = dataclasses.replace(
        site.config,
        limits=dataclasses.replace(
            site.config.limits, max_bundle_bytes=1 << 20, max_file_bytes=1 << 20
        ),
    )
    assert import_dropped_file(big, store=store, config=config, clock=clock) is True
    record = store.imports()[-1]
    assert record["code"] == "too-large" and record["file_sha256"] is None
