"""The drop watcher against real inotify on temporary folders, and real tmpfs mounts as root.

No test sleeps for a fixed time: each waits (up to 5 s, in 20 ms steps) for an offer. To show
that something was *not* offered, a test writes a barrier file after it and waits for the
barrier: inotify events of one folder are handed over in order.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.watch import DropWatcher, parse_mountinfo
from tests.recorder import Recorder

BASE_TABLE = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def barrier(recorder: Recorder, folder: Path, name: str = "zz-barrier.bundle") -> None:
    """Write a file and wait for its offer: every earlier event of ``folder`` was handled."""
    (folder / name).write_bytes(b"barrier")
    recorder.wait_for(folder / name)


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    """A fixed mount table, so that mounts made elsewhere on the host do not cause rescans."""
    path = tmp_path / "mountinfo"
    path.write_text(BASE_TABLE)
    return path


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def make_watcher(mountinfo: Path) -> Iterator[Callable[..., DropWatcher]]:
    made: list[DropWatcher] = []

    def make(
        patterns: list[str], recorder: Recorder, *, mountinfo_path: Path = mountinfo
    ) -> DropWatcher:
        watcher = DropWatcher(patterns, recorder, mountinfo_path=mountinfo_path)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


# -- files arriving ----------------------------------------------------------------------------


def test_a_file_written_and_closed_is_handed_over_once(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    make_watcher([str(drop)], recorder).start()

    with (drop / "site.bundle").open("wb") as handle:
        handle.write(b"x" * 100_000)
        handle.flush()
        handle.write(b"y" * 100_000)
    barrier(recorder, drop)

    assert recorder.offers == [drop / "site.bundle", drop / "zz-barrier.bundle"]


def test_a_file_renamed_into_the_folder_is_handed_over(
    tmp_path: Path, drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    make_watcher([str(drop)], recorder).start()
    outside = tmp_path / "outside.bundle.tar"
    outside.write_bytes(b"from elsewhere")

    outside.rename(drop / "site.bundle.tar")  # like mv on one filesystem
    (drop / ".site.bundle.Xy12").write_bytes(b"rsync temp")  # hidden: not offered
    (drop / ".site.bundle.Xy12").rename(drop / "site.bundle")  # like rsync's last step
    barrier(recorder, drop)

    assert recorder.offers == [
        drop / "site.bundle.tar",
        drop / "site.bundle",
        drop / "zz-barrier.bundle",
    ]


def test_a_half_written_file_is_not_handed_over_until_closed(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    make_watcher([str(drop)], recorder).start()

    handle = (drop / "big.bundle").open("wb")
    try:
        handle.write(b"first half")
        handle.flush()
        os.fsync(handle.fileno())
        barrier(recorder, drop)
        assert recorder.count(drop / "big.bundle") == 0
        handle.write(b"second half")
    finally:
        handle.close()

    recorder.wait_for(drop / "big.bundle")
    assert recorder.count(drop / "big.bundle") == 1


def test_a_file_reported_retryable_is_offered_again_after_the_next_close(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    complete = b"HEADER" + b"x" * 1000 + b"TRAILER"
    recorder = Recorder(verdict=lambda path: path.read_bytes() == complete)
    make_watcher([str(drop)], recorder).start()
    target = drop / "site.bundle"

    target.write_bytes(complete[:500])  # a copy tool that closes between chunks
    recorder.wait_for(target)
    with target.open("ab") as handle:
        handle.write(complete[500:])

    recorder.wait_for(target, times=2)
    barrier(recorder, drop)
    assert recorder.count(target) == 2


def test_only_regular_files_with_a_bundle_name_are_offered(
    tmp_path: Path, drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    real = tmp_path / "real.bundle"
    real.write_bytes(b"r")
    (drop / "link.bundle").symlink_to(real)
    (drop / "dir.bundle").mkdir()
    os.mkfifo(drop / "pipe.bundle")
    (drop / "notes.txt").write_bytes(b"n")
    (drop / ".hidden.bundle").write_bytes(b"h")
    (drop / "images.tar").write_bytes(b"container images, not a bundle")
    (drop / "good.bundle.tar.gz").write_bytes(b"g")
    recorder = Recorder()

    make_watcher([str(drop)], recorder).start()

    assert recorder.offers == [drop / "good.bundle.tar.gz"]


def test_a_scan_offers_files_in_natural_order(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    for name in ["r10.bundle", "r2.bundle.tgz", "r1.bundle", "R3.bundle", "r20.bundle.tar"]:
        (drop / name).write_bytes(name.encode())
    recorder = Recorder()

    make_watcher([str(drop)], recorder).start()

    assert [path.name for path in recorder.offers] == [
        "r1.bundle",
        "r2.bundle.tgz",
        "R3.bundle",
        "r10.bundle",
        "r20.bundle.tar",
    ]


def test_an_unchanged_done_file_is_not_offered_again_by_a_rescan(
    drop: Path, mountinfo: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    watcher = make_watcher([str(drop)], recorder)
    (drop / "old.bundle").write_bytes(b"old")
    watcher.start()
    (drop / "new.bundle").write_bytes(b"new")
    recorder.wait_for(drop / "new.bundle")

    mountinfo.write_text(BASE_TABLE + "99 27 8:17 / /media/usb0 rw - vfat /dev/sdb1 rw\n")
    watcher.poll()  # mount table changed: watched afresh and scanned
    (drop / "old.bundle").write_bytes(b"old, rewritten")  # changed: offered again
    barrier(recorder, drop)

    assert recorder.offers == [
        drop / "old.bundle",
        drop / "new.bundle",
        drop / "old.bundle",
        drop / "zz-barrier.bundle",
    ]


# -- folders coming and going ------------------------------------------------------------------


def test_a_folder_missing_at_start_is_picked_up_when_it_appears(
    tmp_path: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    watcher = make_watcher([f"{tmp_path}/media/*/edge-bundles"], recorder)
    watcher.start()  # nothing matches: no error
    folder = tmp_path / "media" / "stick" / "edge-bundles"
    folder.mkdir(parents=True)
    (folder / "early.bundle").write_bytes(b"before the watch")

    watcher.poll()
    recorder.wait_for(folder / "early.bundle")
    (folder / "late.bundle").write_bytes(b"after the watch")
    recorder.wait_for(folder / "late.bundle")

    assert watcher.watched_folders == {folder}
    assert recorder.count(folder / "early.bundle") == 1


def test_a_folder_deleted_or_moved_and_made_again_is_watched_again(
    tmp_path: Path, drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    watcher = make_watcher([str(drop)], recorder)
    watcher.start()

    drop.rmdir()
    watcher.poll()
    assert watcher.watched_folders == frozenset()
    drop.mkdir()
    watcher.poll()
    (drop / "a.bundle").write_bytes(b"a")
    recorder.wait_for(drop / "a.bundle")

    drop.rename(tmp_path / "old-drop")  # moved away and made again between two polls
    drop.mkdir()
    watcher.poll()
    (drop / "b.bundle").write_bytes(b"b")
    recorder.wait_for(drop / "b.bundle")

    shutil.rmtree(drop)  # deleted and made again between two polls: the inode number may be
    drop.mkdir()  # the same, but the old watch ends (asynchronously) with the old folder
    (drop / "c.bundle").write_bytes(b"c")

    def polled_until_seen() -> bool:
        watcher.poll()
        return recorder.count(drop / "c.bundle") == 1

    wait_until(polled_until_seen, "c.bundle to be offered")
    (drop / "d.bundle").write_bytes(b"d")
    recorder.wait_for(drop / "d.bundle")


# -- never writes; survives its callback; stops cleanly ----------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Names, sizes, mtimes and modes: what a write by the watcher would change."""
    result = {".": (0, folder.stat().st_mtime_ns, folder.stat().st_mode)}
    for path in folder.iterdir():
        info = path.lstat()
        result[path.name] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return result


def test_a_read_only_folder_is_watched_and_never_written(
    drop: Path, make_watcher: Callable[..., DropWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    (drop / "a.bundle").write_bytes(b"a")
    drop.chmod(0o555)
    try:
        before = _snapshot(drop)
        recorder = Recorder(verdict=lambda path: path.read_bytes() != b"")
        watcher = make_watcher([str(drop)], recorder)
        watcher.start()
        recorder.wait_for(drop / "a.bundle")
        watcher.poll()
        watcher.stop()

        assert _snapshot(drop) == before
        assert stat.S_IMODE(drop.stat().st_mode) == 0o555
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        drop.chmod(0o755)


def test_a_callback_that_raises_does_not_stop_the_watcher(
    drop: Path, make_watcher: Callable[..., DropWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    def verdict(path: Path) -> bool:
        if path.name.startswith("bad"):
            raise RuntimeError("importer bug")
        return True

    recorder = Recorder(verdict)
    (drop / "bad-scanned.bundle").write_bytes(b"b")
    make_watcher([str(drop)], recorder).start()  # raises in the polling thread
    (drop / "bad-event.bundle").write_bytes(b"b")  # raises in the observer thread
    recorder.wait_for(drop / "bad-event.bundle")

    (drop / "good.bundle").write_bytes(b"g")
    recorder.wait_for(drop / "good.bundle")
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(failures) == 2


def test_stop_is_idempotent_and_joins_every_thread(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    before = set(threading.enumerate())
    recorder = Recorder()
    watcher = make_watcher([str(drop)], recorder)
    watcher.start()
    assert set(threading.enumerate()) - before  # observer, emitter, inotify reader

    watcher.stop()
    watcher.stop()

    assert set(threading.enumerate()) - before == set()
    watcher.poll()  # a no-op once stopped
    (drop / "late.bundle").write_bytes(b"l")
    assert recorder.offers == []
    with pytest.raises(RuntimeError):
        watcher.start()


# -- stopping in the middle: nothing new is offered ---------------------------------------------

FOUR_BUNDLES = ["r1.bundle", "r2.bundle", "r10.bundle", "r11.bundle"]


def test_a_stop_requested_during_a_scan_ends_it_after_the_running_callback(
    drop: Path, make_watcher: Callable[..., DropWatcher]
) -> None:
    for name in FOUR_BUNDLES:
        (drop / name).write_bytes(b"a big bundle")
    watchers: list[DropWatcher] = []

    def verdict(path: Path) -> bool:
        watchers[0].request_stop()  # what the SIGTERM handler does
        return True

    recorder = Recorder(verdict)
    watcher = make_watcher([str(drop)], recorder)
    watchers.append(watcher)
    watcher.start()  # the first poll scans; the first callback asks to stop

    assert recorder.offers == [drop / "r1.bundle"]
    assert watcher.stop_requested
    watcher.poll()  # a no-op now: no rescan, no offer
    assert recorder.offers == [drop / "r1.bundle"]


def test_the_run_event_set_during_a_scan_ends_the_scan_and_the_run(
    drop: Path, mountinfo: Path
) -> None:
    for name in FOUR_BUNDLES:
        (drop / name).write_bytes(b"a big bundle")
    stop_event = threading.Event()

    def verdict(path: Path) -> bool:
        stop_event.set()  # what the CLI's SIGTERM handler does
        return True

    recorder = Recorder(verdict)
    watcher = DropWatcher([str(drop)], recorder, mountinfo_path=mountinfo, poll_interval_s=60)
    before = set(threading.enumerate())

    watcher.run(stop_event)  # in this thread: returns once the first scan has ended

    assert recorder.offers == [drop / "r1.bundle"]
    assert set(threading.enumerate()) - before == set()


def test_a_stop_requested_during_an_event_callback_offers_no_later_event(
    drop: Path, make_watcher: Callable[..., DropWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.watch")
    in_callback = threading.Event()
    release = threading.Event()

    def verdict(path: Path) -> bool:
        in_callback.set()
        assert release.wait(timeout=5), "the test did not release the callback"
        return True

    recorder = Recorder(verdict)
    watcher = make_watcher([str(drop)], recorder)
    watcher.start()
    (drop / "r1.bundle").write_bytes(b"first")
    assert in_callback.wait(timeout=5)  # the observer thread is inside the callback
    (drop / "r2.bundle").write_bytes(b"second")  # their events queue up behind it
    (drop / "r3.bundle").write_bytes(b"third")

    watcher.request_stop()  # returns at once although a callback holds the offer lock
    release.set()

    def skipped(name: str) -> bool:
        return any(
            "not offered" in record.getMessage() and name in record.getMessage()
            for record in caplog.records
        )

    wait_until(lambda: skipped("r2.bundle") and skipped("r3.bundle"), "later events skipped")
    assert recorder.offers == [drop / "r1.bundle"]


def test_stop_before_start_is_harmless(drop: Path) -> None:
    watcher = DropWatcher([str(drop)], Recorder())
    watcher.stop()
    watcher.stop()


def test_run_polls_until_the_event_is_set(tmp_path: Path, mountinfo: Path) -> None:
    recorder = Recorder()
    watcher = DropWatcher(
        [f"{tmp_path}/late"], recorder, mountinfo_path=mountinfo, poll_interval_s=0.02
    )
    stop_event = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop_event,))
    thread.start()
    try:
        staged = tmp_path / "staged"
        staged.mkdir()
        (staged / "a.bundle").write_bytes(b"a")
        staged.rename(tmp_path / "late")  # appears with a file in it, seen by a poll
        recorder.wait_for(tmp_path / "late" / "a.bundle")
    finally:
        stop_event.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert watcher.watched_folders == frozenset()


# -- real mounts (root only) -------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """``mount(*args)``; skips the test when this sandbox does not allow mounting."""
    if os.geteuid() != 0:
        pytest.skip("real mount tests need root; the fake-mountinfo tests cover the logic")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not installed")
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    tried = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
    if tried.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {tried.stderr.strip()}")
    _run("umount", str(probe))
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        result = _run("mount", *args)
        assert result.returncode == 0, result.stderr
        mounted.append(Path(args[-1]))

    yield mount
    for point in reversed(mounted):  # os.path.ismount misses a bind mount from the same disk
        for _ in range(10):
            if not _is_mount_point(point):
                break
            if _run("umount", str(point)).returncode != 0:
                _run("umount", "-l", str(point))
        assert not _is_mount_point(point), f"{point} is still mounted"


def _is_mount_point(point: Path) -> bool:
    table = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return any(mount.mount_point == os.path.realpath(point) for mount in table)


def _umount(point: Path) -> None:
    result = _run("umount", str(point))
    assert result.returncode == 0, result.stderr


def test_a_tmpfs_mounted_unmounted_and_mounted_again_is_still_seen(
    drop: Path, mounter: Callable[..., None], make_watcher: Callable[..., DropWatcher]
) -> None:
    recorder = Recorder()
    watcher = make_watcher([str(drop)], recorder, mountinfo_path=Path("/proc/self/mountinfo"))
    watcher.start()

    mounter("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(drop))
    (drop / "first.bundle").write_bytes(b"1")  # the old watch is under the mount: unseen
    watcher.poll()
    recorder.wait_for(drop / "first.bundle")
    (drop / "second.bundle").write_bytes(b"2")
    recorder.wait_for(drop / "second.bundle")

    _umount(drop)
    mounter("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(drop))
    (drop / "third.bundle").write_bytes(b"3")  # the watch died with the first tmpfs
    watcher.poll()  # seen even though the mount table may read exactly as before
    recorder.wait_for(drop / "third.bundle")
    (drop / "fourth.bundle").write_bytes(b"4")
    recorder.wait_for(drop / "fourth.bundle")

    barrier(recorder, drop)
    assert [path.name for path in recorder.offers] == [
        "first.bundle",
        "second.bundle",
        "third.bundle",
        "fourth.bundle",
        "zz-barrier.bundle",
    ]


def test_a_read_only_mount_is_scanned_without_errors(
    tmp_path: Path,
    drop: Path,
    mounter: Callable[..., None],
    make_watcher: Callable[..., DropWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = tmp_path / "stick"
    source.mkdir()
    (source / "a.bundle").write_bytes(b"a")
    mounter("--bind", str(source), str(drop))
    mounter("-o", "remount,bind,ro", str(drop))
    assert _run("touch", str(drop / "probe")).returncode != 0  # read-only, even for root
    recorder = Recorder(verdict=lambda path: path.read_bytes() == b"a")

    make_watcher([str(drop)], recorder).start()

    assert recorder.offers == [drop / "a.bundle"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
