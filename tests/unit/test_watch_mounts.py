"""The drop watcher's pure parts (mount table, names) and mount detection with a fake table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.watch import (
    DEFAULT_SUFFIXES,
    DropWatcher,
    MountPoint,
    changed_mount_points,
    is_candidate_name,
    natural_sort_key,
    parse_mountinfo,
)
from tests.recorder import Recorder

BASE_TABLE = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "25 24 0:23 / /dev/shm rw,nosuid,nodev shared:4 master:2 - tmpfs tmpfs rw,size=65536k\n"
)


# -- parse_mountinfo ---------------------------------------------------------------------------


def test_parse_reads_id_mount_point_type_and_source_across_optional_fields() -> None:
    mounts = parse_mountinfo(BASE_TABLE)

    assert mounts == (
        MountPoint(mount_id=22, mount_point="/proc", fs_type="proc", source="proc"),
        MountPoint(mount_id=27, mount_point="/", fs_type="ext4", source="/dev/vda"),
        MountPoint(mount_id=25, mount_point="/dev/shm", fs_type="tmpfs", source="tmpfs"),
    )


def test_parse_undoes_octal_escapes_in_mount_point_and_source() -> None:
    line = (
        r"412 27 8:17 / /media/ops/EDGE\040STICK\011two rw,nosuid,nodev,relatime "
        r"shared:301 - vfat /dev/sdb1 rw,fmask=0022,codepage=437" + "\n"
        r"413 27 0:52 / /mnt/back\134slash rw - fuse.sshfs me@host:/a\040b rw" + "\n"
    )

    first, second = parse_mountinfo(line)

    assert first == MountPoint(412, "/media/ops/EDGE STICK\ttwo", "vfat", "/dev/sdb1")
    assert second == MountPoint(413, "/mnt/back\\slash", "fuse.sshfs", "me@host:/a b")


def test_parse_takes_the_fields_after_the_separator_not_an_optional_field() -> None:
    line = "50 27 0:60 /sub /srv/data rw shared:7 master:3 propagate_from:2 - xfs /dev/sdc rw\n"

    (mount,) = parse_mountinfo(line)

    assert (mount.mount_point, mount.fs_type, mount.source) == ("/srv/data", "xfs", "/dev/sdc")


def test_parse_skips_blank_lines_and_accepts_an_empty_table() -> None:
    assert parse_mountinfo("") == ()
    assert len(parse_mountinfo("\n" + BASE_TABLE + "\n\n")) == 3


@pytest.mark.parametrize(
    "line",
    [
        "27 1 254:0 / / rw,relatime ext4 /dev/vda rw",  # no separator
        "27 1 254:0 / / rw,relatime - ext4",  # no source
        "x 1 254:0 / / rw - ext4 /dev/vda rw",  # id not a number
    ],
)
def test_parse_refuses_a_malformed_line_and_names_it(line: str) -> None:
    with pytest.raises(ValueError, match="mountinfo line 2"):
        parse_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n" + line + "\n")


# -- changed_mount_points ----------------------------------------------------------------------


def test_same_table_in_another_order_is_no_change() -> None:
    mounts = parse_mountinfo(BASE_TABLE)

    assert changed_mount_points(mounts, tuple(reversed(mounts))) == frozenset()


def test_a_mount_and_an_unmount_are_changes_at_their_mount_points() -> None:
    before = parse_mountinfo(BASE_TABLE)
    stick = MountPoint(412, "/media/ops/STICK", "vfat", "/dev/sdb1")

    assert changed_mount_points(before, (*before, stick)) == {"/media/ops/STICK"}
    assert changed_mount_points((*before, stick), before) == {"/media/ops/STICK"}


def test_a_mount_replaced_at_the_same_point_is_a_change() -> None:
    old = MountPoint(412, "/media/ops/STICK", "vfat", "/dev/sdb1")
    new = MountPoint(415, "/media/ops/STICK", "vfat", "/dev/sdb1")
    other_device = MountPoint(412, "/media/ops/STICK", "vfat", "/dev/sdc1")

    assert changed_mount_points([old], [new]) == {"/media/ops/STICK"}
    assert changed_mount_points([old], [other_device]) == {"/media/ops/STICK"}


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("site-a.bundle", True),
        ("site-a.bundle.tar", True),
        ("site.bundle.tar.gz", True),
        ("site-a.bundle.tgz", True),
        ("SITE-A.BUNDLE", True),  # FAT sticks written on other systems
        ("Site-A.Bundle.Tar.GZ", True),
        ("images.tar", False),  # a container image tarball on the same stick
        ("site-a.tar", False),
        ("site-a.tar.gz", False),
        ("site-a.tgz", False),
        ("site-a.bundle.gz", False),
        (".site-a.bundle", False),  # hidden: a partial copy's temp name
        (".site-a.bundle.Xy12Zq", False),
        ("site-a.bundle.part", False),
        ("site-a.bundle.tar.part", False),
        ("notes.txt", False),
        (".bundle", False),  # hidden, and no name before the suffix
        ("bundle", False),
        ("bundle.tar", False),
    ],
)
def test_candidate_names_have_a_bundle_suffix_and_are_not_hidden(name: str, expected: bool) -> None:
    assert is_candidate_name(name, DEFAULT_SUFFIXES) is expected


def test_suffixes_are_a_parameter() -> None:
    assert is_candidate_name("site.zip", [".zip"])
    assert not is_candidate_name("site.bundle", [".zip"])


def test_natural_order_compares_digit_runs_as_numbers() -> None:
    names = ["r10.bundle", "r2.bundle", "r1.bundle", "r2.bundle.tgz", "r100.bundle", "r9.bundle"]

    assert sorted(names, key=natural_sort_key) == [
        "r1.bundle",
        "r2.bundle",
        "r2.bundle.tgz",
        "r9.bundle",
        "r10.bundle",
        "r100.bundle",
    ]


def test_natural_order_ignores_case_and_is_total() -> None:
    names = [
        "site-b.bundle",
        "Site-a.bundle",
        "site-a.bundle",
        "r01.bundle",
        "r1.bundle",
        "1.bundle",
    ]

    assert sorted(names, key=natural_sort_key) == [
        "1.bundle",  # digits sort before letters, as in plain sorting
        "r01.bundle",  # same number: the name itself breaks the tie
        "r1.bundle",
        "Site-a.bundle",
        "site-a.bundle",
        "site-b.bundle",
    ]
    assert sorted(reversed(names), key=natural_sort_key) == sorted(names, key=natural_sort_key)


def test_natural_order_handles_names_starting_with_digits_and_long_numbers() -> None:
    names = ["2024-10-01.bundle", "2024-9-30.bundle", "99999999999999999999.bundle", "3.bundle"]

    assert sorted(names, key=natural_sort_key) == [
        "3.bundle",
        "2024-9-30.bundle",
        "2024-10-01.bundle",
        "99999999999999999999.bundle",
    ]


# -- construction ------------------------------------------------------------------------------


def _ignore(path: Path) -> bool:
    return True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patterns": ["media/*/edge-bundles"]},
        {"patterns": ["/media/*/edge-bundles"], "suffixes": []},
        {"patterns": ["/media/*/edge-bundles"], "suffixes": [""]},
        {"patterns": ["/media/*/edge-bundles"], "poll_interval_s": 0},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DropWatcher(on_bundle=_ignore, **kwargs)  # type: ignore[arg-type]


def test_poll_before_start_is_a_programming_error(tmp_path: Path) -> None:
    watcher = DropWatcher([str(tmp_path)], _ignore)

    with pytest.raises(RuntimeError, match="before start"):
        watcher.poll()
    watcher.stop()


# -- a stick mounted, simulated with a fake mount table ----------------------------------------


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(BASE_TABLE)
    return path


@pytest.fixture
def watchers() -> Iterator[list[DropWatcher]]:
    made: list[DropWatcher] = []
    yield made
    for watcher in made:
        watcher.stop()


def _mount_line(mount_id: int, mount_point: Path) -> str:
    escaped = str(mount_point).replace(" ", "\\040")
    return f"{mount_id} 27 8:17 / {escaped} rw,nosuid,relatime shared:9 - vfat /dev/sdb1 rw\n"


def _plug_in(media: Path, tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    """Make ``media/<name>/edge-bundles`` appear at once, with files, without inotify events."""
    staged = tmp_path / f"staged-{name}"
    (staged / "edge-bundles").mkdir(parents=True)
    for file_name, data in files.items():
        (staged / "edge-bundles" / file_name).write_bytes(data)
    staged.rename(media / name)
    return media / name / "edge-bundles"


def test_a_newly_mounted_stick_is_scanned_once_then_watched(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher]
) -> None:
    recorder = Recorder()
    watcher = DropWatcher([f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo)
    watchers.append(watcher)
    watcher.start()
    assert watcher.watched_folders == frozenset()

    folder = _plug_in(
        media,
        tmp_path,
        "EDGE STICK",
        {"a.bundle": b"a", "b.bundle.tar.gz": b"b", "images.tar": b"i", "notes.txt": b"n"},
    )
    mountinfo.write_text(BASE_TABLE + _mount_line(412, media / "EDGE STICK"))
    watcher.poll()

    assert recorder.offers == [folder / "a.bundle", folder / "b.bundle.tar.gz"]
    assert watcher.watched_folders == {folder}

    watcher.poll()  # nothing changed: no second scan
    (folder / "c.bundle").write_bytes(b"c")  # now seen through inotify
    recorder.wait_for(folder / "c.bundle")
    assert recorder.offers == [
        folder / "a.bundle",
        folder / "b.bundle.tar.gz",
        folder / "c.bundle",
    ]


def test_a_mount_table_change_rescans_retryable_files_but_not_done_ones(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher]
) -> None:
    recorder = Recorder(verdict=lambda path: path.name != "partial.bundle")
    watcher = DropWatcher([f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo)
    watchers.append(watcher)
    folder = _plug_in(media, tmp_path, "usb0", {"done.bundle": b"d", "partial.bundle": b"p"})
    mountinfo.write_text(BASE_TABLE + _mount_line(412, media / "usb0"))
    watcher.start()
    assert recorder.offers == [folder / "done.bundle", folder / "partial.bundle"]

    mountinfo.write_text(BASE_TABLE)  # unmounted, and the folder is still there ...
    watcher.poll()
    mountinfo.write_text(BASE_TABLE + _mount_line(415, media / "usb0"))  # ... and back
    watcher.poll()

    assert recorder.count(folder / "done.bundle") == 1
    assert recorder.count(folder / "partial.bundle") == 3
    (folder / "new.bundle").write_bytes(b"n")  # the watch made afresh still works
    recorder.wait_for(folder / "new.bundle")


def test_an_unreadable_mount_table_is_logged_once_and_folders_are_still_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, watchers: list[DropWatcher]
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    recorder = Recorder()
    watcher = DropWatcher([str(folder)], recorder, mountinfo_path=tmp_path / "missing")
    watchers.append(watcher)

    watcher.start()
    watcher.poll()
    (folder / "a.bundle").write_bytes(b"a")

    recorder.wait_for(folder / "a.bundle")
    warnings = [r for r in caplog.records if "mount table" in r.getMessage()]
    assert len(warnings) == 1


# -- arrivals: when a stick counts as plugged in ------------------------------------------------


class Arrivals:
    """An ``on_arrival`` callback recording each folder, and the offers made before it."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.seen: list[tuple[Path, int]] = []

    def __call__(self, folder: Path) -> None:
        self.seen.append((folder, len(self.recorder.offers)))


def test_a_stick_plugged_in_after_the_first_poll_arrives_after_its_scan(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher]
) -> None:
    recorder = Recorder()
    arrivals = Arrivals(recorder)
    before = _plug_in(media, tmp_path, "old", {"a.bundle": b"a"})
    watcher = DropWatcher(
        [f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo, on_arrival=arrivals
    )
    watchers.append(watcher)
    watcher.start()
    assert arrivals.seen == []  # there before the watcher: not plugged in now

    folder = _plug_in(media, tmp_path, "new", {"b.bundle": b"b"})
    mountinfo.write_text(BASE_TABLE + _mount_line(412, media / "new"))
    watcher.poll()
    # After the scan of that folder: its bundle was offered first.
    assert arrivals.seen == [(folder, 2)]
    assert recorder.offers == [before / "a.bundle", folder / "b.bundle"]
    watcher.poll()
    assert arrivals.seen == [(folder, 2)]  # nothing changed: no second arrival


def test_a_stick_mounted_again_at_the_same_place_arrives_other_mounts_do_not(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher]
) -> None:
    recorder = Recorder()
    arrivals = Arrivals(recorder)
    folder = _plug_in(media, tmp_path, "usb0", {})
    mountinfo.write_text(BASE_TABLE + _mount_line(412, media / "usb0"))
    watcher = DropWatcher(
        [f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo, on_arrival=arrivals
    )
    watchers.append(watcher)
    watcher.start()

    # A Kubernetes node mounts pod volumes all the time: a rescan, never an arrival.
    pod = tmp_path / "kubelet" / "pods" / "p1" / "volumes"
    mountinfo.write_text(BASE_TABLE + _mount_line(412, media / "usb0") + _mount_line(500, pod))
    watcher.poll()
    assert arrivals.seen == []

    # The same stick unmounted (no arrival) and mounted again (same folder, same inode): one.
    mountinfo.write_text(BASE_TABLE + _mount_line(500, pod))
    watcher.poll()
    assert arrivals.seen == []
    mountinfo.write_text(BASE_TABLE + _mount_line(500, pod) + _mount_line(413, media / "usb0"))
    watcher.poll()
    assert [seen for seen, _ in arrivals.seen] == [folder]  # the mount; never the unmount


def test_a_folder_replaced_or_back_after_it_was_gone_arrives(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher]
) -> None:
    recorder = Recorder()
    arrivals = Arrivals(recorder)
    watcher = DropWatcher(
        [f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo, on_arrival=arrivals
    )
    watchers.append(watcher)
    watcher.start()
    folder = _plug_in(media, tmp_path, "stick", {})
    watcher.poll()
    (media / "stick").rename(tmp_path / "away")
    watcher.poll()  # gone
    (tmp_path / "away").rename(media / "stick")
    watcher.poll()  # back
    assert [seen for seen, _ in arrivals.seen] == [folder, folder]


def test_a_failing_arrival_callback_is_logged_and_watching_goes_on(
    tmp_path: Path, media: Path, mountinfo: Path, watchers: list[DropWatcher], caplog: Any
) -> None:
    recorder = Recorder()

    def broken(folder: Path) -> None:
        raise RuntimeError("boom")

    watcher = DropWatcher(
        [f"{media}/*/edge-bundles"], recorder, mountinfo_path=mountinfo, on_arrival=broken
    )
    watchers.append(watcher)
    watcher.start()
    folder = _plug_in(media, tmp_path, "stick", {})
    watcher.poll()
    assert "arrival not handled" in caplog.text
    (folder / "late.bundle").write_bytes(b"l")
    recorder.wait_for(folder / "late.bundle")
