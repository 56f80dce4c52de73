"""Drop-folder watching: find bundle files that arrive in drop folders and hand them over.

One concept: turn "a bundle file may have become complete in a drop folder" into a call of
``on_bundle(path)``. Drop folders are glob patterns (``/media/*/edge-bundles``) so that USB
sticks mounted under any name are found.

How: inotify (through watchdog) reports a file closed after writing and a file renamed into
a folder. inotify cannot see everything, so the watcher also polls:

- a filesystem mounted over a watched folder is invisible to the old watch, and a watch on
  a folder whose filesystem is unmounted and mounted again dies silently (the observer
  still reports alive). ``poll()`` therefore detects mount-table changes by reading
  ``/proc/self/mountinfo`` and by ``poll(2)``-ing it for ``POLLPRI``. The second is needed:
  a stick pulled and pushed in again between two polls can get the same mount id and
  device number (the kernel reuses the lowest free ones), so the table text can read
  byte-for-byte the same. On any change every folder is
  watched afresh (unschedule, schedule) and then scanned once.
- folders appear and disappear without mounts, and a watch dies when its folder is deleted.
  ``poll()`` expands the patterns again and re-watches (then scans) any folder that is new,
  was replaced (other device or inode) or whose watch has stopped.

Stopping: ``request_stop()`` only sets a flag (no lock, no join), so a signal handler may call
it; ``stop()`` and a set ``run(stop_event)`` event count as a request too. Every offer, from a
scan or from an event, checks for a request first, so a scan of a stick full of big bundles
ends after the callback that is running, not after the last file.

What it does not do: it does not read, hash, verify or remember bundle contents (the
callback does, and it ignores files it has already imported); it does not watch
sub-folders; it never writes, renames or deletes anything in a watched folder (USB media
may be read-only); it does not blacklist a file that fails.

Invariants:
- Only regular files (``lstat``, so never a symlink) with a bundle suffix (``.bundle``,
  ``.bundle.tar``, ``.bundle.tar.gz``, ``.bundle.tgz``; not a bare ``.tar``, which would pick
  up container image tarballs carried on the same stick) and a name not starting with ``.``
  are handed over. A scan offers them in natural order (``r2.bundle`` before ``r10.bundle``).
- Once a stop is requested no offer starts: a callback already running finishes (the
  importer is atomic), nothing new is handed over, whatever thread it would run on.
- ``on_bundle`` is never called concurrently: inotify events (observer thread) and scans
  (the thread calling ``poll()``) take the same lock. It returns True when the file is done
  with, whatever the outcome, and False when it is worth offering again (a copy still in
  progress). An exception from it is logged and counts as False.
- A file the callback called done is not offered again while its device, inode, size and
  mtime are unchanged (so rescans do not make the callback hash big files again). The
  stamp is taken before the call, so a file that changed during the call is offered again.
- A half-copied file may be offered (a rename or close before the copy ends); it is offered
  again on its next close-after-write event, or by the scan after the next mount change.
- Events used: close-after-write and rename (the destination). A plain create is not used:
  a copy always ends with a close-after-write, and with watchdog's full events every rename
  is a move event. So a hard link made into a folder is seen only by the next scan.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import select
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SUFFIXES: tuple[str, ...] = (".bundle", ".bundle.tar", ".bundle.tar.gz", ".bundle.tgz")
"""File name endings of bundle files, compared without regard to case (FAT sticks).

Bundle-specific on purpose: a plain ``.tar`` would also match container image tarballs
(``images.tar``) carried on the same stick, which then fail verification."""

MOUNTINFO_PATH = Path("/proc/self/mountinfo")

BundleCallback = Callable[[Path], bool]
"""Called with a candidate file; True = done with it, False = offer it again later."""

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_DIGIT_RUN = re.compile(r"([0-9]+)")


# -- pure: mount table and names --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountPoint:
    """One line of ``/proc/<pid>/mountinfo``, the fields the watcher needs."""

    mount_id: int
    mount_point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\134`` backslash)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[MountPoint, ...]:
    """Parse the text of a mountinfo file (proc(5)); blank lines are skipped.

    A line is ``id parent major:minor root mount-point options [optional...] - type source
    super-options``. Raise ValueError naming the line when one does not have that shape.
    """
    mounts: list[MountPoint] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            separator = fields.index("-", 6)
        except ValueError:
            raise ValueError(f"mountinfo line {number}: no ' - ' separator in {line!r}") from None
        if len(fields) < separator + 3 or not fields[0].isdigit():
            raise ValueError(f"mountinfo line {number}: expected id and source in {line!r}")
        mounts.append(
            MountPoint(
                mount_id=int(fields[0]),
                mount_point=_unescape(fields[4]),
                fs_type=_unescape(fields[separator + 1]),
                source=_unescape(fields[separator + 2]),
            )
        )
    return tuple(mounts)


def changed_mount_points(
    before: Iterable[MountPoint], after: Iterable[MountPoint]
) -> frozenset[str]:
    """Mount points where something was mounted, unmounted or replaced; empty if none."""
    return frozenset(mount.mount_point for mount in set(before) ^ set(after))


def is_candidate_name(name: str, suffixes: Iterable[str]) -> bool:
    """True when a file name looks like a finished bundle: a known suffix and not hidden."""
    folded = name.casefold()
    return not name.startswith(".") and any(
        folded.endswith(ending) and len(folded) > len(ending)
        for ending in (suffix.casefold() for suffix in suffixes)
    )


def natural_sort_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """A sort key that orders names as a person would: ``r2.bundle`` before ``r10.bundle``.

    Runs of ASCII digits compare as integers, the text between them without regard to case;
    ties (``r01``/``r1``, ``A``/``a``) are broken by the name itself, so the order is total.
    """
    parts = _DIGIT_RUN.split(name.casefold())  # text, digits, text, ..., text: types alternate
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), name


# -- the shell --------------------------------------------------------------------------------


class _FileStamp(NamedTuple):
    """What must stay the same for a file to count as unchanged."""

    device: int
    inode: int
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _Watched:
    """A folder being watched: the watch, and which directory it was when scheduled."""

    watch: ObservedWatch
    identity: tuple[int, int]  # (st_dev, st_ino)


class _Events(FileSystemEventHandler):
    """Forwards close-after-write and rename-into events to the watcher (observer thread)."""

    def __init__(self, offer: Callable[[Path], None]) -> None:
        self._offer = offer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            target = event.src_path
        elif isinstance(event, FileMovedEvent) and event.dest_path:
            target = event.dest_path
        else:
            return
        try:
            self._offer(Path(os.fsdecode(target)))
        except Exception:  # an exception here would end the observer thread
            log.exception("drop watcher: event for %s not handled", os.fsdecode(target))


class DropWatcher:
    """Watches the folders matching ``patterns`` and offers bundle files to ``on_bundle``.

    ``start()`` starts the inotify observer and polls once; ``poll()`` checks the mount table
    and the patterns once (deterministic, no sleeping); ``run(stop_event)`` is the daemon
    loop (it starts the watcher itself, so that its first scan already honours the event);
    ``request_stop()`` asks, from any thread or a signal handler, that no further file be
    offered; ``stop()`` stops and joins the observer and may be called any number of times.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        on_bundle: BundleCallback,
        *,
        mountinfo_path: Path = MOUNTINFO_PATH,
        poll_interval_s: float = 2.0,
        suffixes: Sequence[str] = DEFAULT_SUFFIXES,
        on_arrival: Callable[[Path], None] | None = None,
    ) -> None:
        """``poll_interval_s``: how long a mount or a new folder may go unnoticed; 2 s is
        quick enough for a person waiting at a USB port and costs one small file read.

        ``on_arrival(folder)`` is called (on the polling thread, after the folder's scan)
        when a stick is plugged in after the first poll: a matching folder appears, or
        something is mounted at or above a matching folder. Not for an unmount, and not for
        a mount elsewhere (on a Kubernetes node pods mount volumes all the time)."""
        for pattern in patterns:
            if not os.path.isabs(pattern):
                raise ConfigError(f"drop folder pattern {pattern!r}: expected an absolute path")
        if not suffixes or not all(suffixes):
            raise ConfigError(f"bundle suffixes {list(suffixes)!r}: expected non-empty suffixes")
        if poll_interval_s <= 0:
            raise ConfigError(f"drop folder poll interval {poll_interval_s}: expected > 0 s")
        self._patterns = tuple(patterns)
        self._on_bundle = on_bundle
        self._mountinfo_path = mountinfo_path
        self.poll_interval_s = poll_interval_s
        self._suffixes = tuple(suffixes)
        self._on_arrival = on_arrival
        self._polled = False  # folders found by the first poll were there before us

        self._handler = _Events(self._offer)
        self._observer: InotifyObserver | None = None  # created by start()
        self._stopped = False
        # Stop requests: read before every offer. A plain attribute, written without a lock,
        # so that request_stop() is safe in a signal handler (a handler that took a lock
        # could interrupt the main thread holding it and wait forever).
        self._stop_requested = False
        self._run_stop_event: threading.Event | None = None  # set by run()

        self._poll_lock = threading.Lock()  # one poll at a time; never held by the observer
        self._watched: dict[Path, _Watched] = {}
        self._unwatchable: set[Path] = set()  # folders whose watch failed, to warn once
        self._mounts: tuple[MountPoint, ...] | None = None  # None: not read yet
        # mount points mounted and unmounted (or replaced: both) as of the last poll
        self._mounted: frozenset[str] = frozenset()
        self._unmounted: frozenset[str] = frozenset()
        self._mountinfo_unreadable = False
        self._mount_events: select.poll | None = None
        self._mount_events_fd: int | None = None

        self._offer_lock = threading.Lock()  # serialises on_bundle; guards _done
        self._done: dict[Path, _FileStamp] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the observer thread, then poll once (which scans every folder found)."""
        with self._poll_lock:
            if self._observer is not None or self._stopped:
                raise RuntimeError("a drop watcher can be started only once")
            self._observer = InotifyObserver(generate_full_events=True)
            self._observer.start()
        self.poll()

    def request_stop(self) -> None:
        """Ask that no further file be offered; return at once. Safe in a signal handler.

        Only sets a flag: it takes no lock and joins nothing. A callback already running
        finishes; scans and events offer nothing after it; ``poll()`` does nothing. It does
        not wake ``run()``: set the event given to ``run()`` as well (or instead), or the loop
        ends at its next poll. Still call ``stop()`` (``run()`` does) to end the threads.
        """
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        """True once ``request_stop()`` or ``stop()`` was called or the run's event is set."""
        run_stop_event = self._run_stop_event
        return (
            self._stop_requested
            or self._stopped
            or (run_stop_event is not None and run_stop_event.is_set())
        )

    def stop(self) -> None:
        """Stop watching and join the observer thread. Idempotent; no callback starts after.

        A callback already running on the observer thread is waited for.
        """
        self._stop_requested = True  # a scan running in another thread offers nothing more
        with self._poll_lock:
            if self._stopped:
                return
            self._stopped = True
            self._watched.clear()
            if self._mount_events_fd is not None:
                os.close(self._mount_events_fd)
                self._mount_events_fd = None
                self._mount_events = None
            observer = self._observer
        if observer is not None:
            observer.stop()
            observer.join()

    def run(self, stop_event: threading.Event) -> None:
        """Start if needed, poll every ``poll_interval_s`` until ``stop_event`` is set, stop.

        ``stop_event`` is also checked before every offer (scans and events), from the first
        scan on when ``run()`` does the start; the loop also ends after ``request_stop()``.
        """
        self._run_stop_event = stop_event
        try:
            if self._observer is None and not self.stop_requested:
                self.start()
            while not self.stop_requested and not stop_event.wait(self.poll_interval_s):
                self.poll()
        finally:
            self.stop()

    @property
    def watched_folders(self) -> frozenset[Path]:
        """The folders being watched, as of the last poll (resolved paths)."""
        with self._poll_lock:
            return frozenset(self._watched)

    # -- polling ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Check the mount table and the patterns once; (re)watch and scan what changed.

        Watches are scheduled before the scan, so a file arriving during the scan is seen by
        one or the other (or both: the done record makes the second offer a no-op). A scan
        waits while the callback handles an event on the observer thread.
        """
        with self._poll_lock:
            if self._observer is None and not self._stopped:
                raise RuntimeError("drop watcher polled before start()")
            if self.stop_requested or self._observer is None:
                return
            observer = self._observer
            mounts_changed = self._check_mounts()
            folders = self._expand_patterns()
            live = {emitter.watch for emitter in observer.emitters if emitter.is_alive()}

            to_scan: list[Path] = []
            arrived: list[Path] = []
            for folder, watched in list(self._watched.items()):
                identity = folders.get(folder)
                if identity is None:
                    self._unwatch(observer, folder)
                    log.info("drop folder %s gone", folder)
                elif mounts_changed or identity != watched.identity or watched.watch not in live:
                    self._unwatch(observer, folder)
                    if self._watch(observer, folder, identity):
                        log.debug("drop folder %s watched afresh", folder)
                        to_scan.append(folder)
                        if self._arrived(folder, was_watched=True):
                            arrived.append(folder)
            for folder, identity in folders.items():
                if folder not in self._watched and self._watch(observer, folder, identity):
                    log.info("drop folder %s watched", folder)
                    to_scan.append(folder)
                    if self._polled and self._arrived(folder, was_watched=False):
                        arrived.append(folder)
            if not self._polled:
                log.info(
                    "watching drop folders %s (%d present now)",
                    ", ".join(self._patterns),
                    len(self._watched),
                )
            self._polled = True

        # Outside the poll lock, so that stop() need not wait for a whole scan; on_bundle is
        # still serialised with events by the offer lock.
        for folder in to_scan:
            self._scan(folder)
            if folder in arrived and self._on_arrival is not None and not self.stop_requested:
                try:
                    self._on_arrival(folder)
                except Exception:
                    log.exception("drop folder %s: arrival not handled", folder)

    def _check_mounts(self) -> bool:
        """True when the mount table changed since the last poll (never on the first one)."""
        self._mounted = self._unmounted = frozenset()
        signalled = self._mount_table_signalled()
        try:
            mounts = parse_mountinfo(os.fsdecode(self._mountinfo_path.read_bytes()))
        except (OSError, ValueError) as exc:
            if not self._mountinfo_unreadable:
                log.warning("mount table %s not read: %s", self._mountinfo_path, exc)
                self._mountinfo_unreadable = True
            return signalled
        self._mountinfo_unreadable = False
        previous, self._mounts = self._mounts, mounts
        if previous is None:
            return False
        changed = changed_mount_points(previous, mounts)
        self._mounted = frozenset(m.mount_point for m in set(mounts) - set(previous))
        self._unmounted = frozenset(m.mount_point for m in set(previous) - set(mounts))
        if changed:
            log.debug("mount table changed at %s", ", ".join(sorted(changed)))
        elif signalled:
            log.debug("mount table changed (and maybe back) since the last poll")
        return bool(changed) or signalled

    def _arrived(self, folder: Path, *, was_watched: bool) -> bool:
        """Whether ``folder``, found by this poll, is a stick plugged in: something was
        mounted at it or above it (not ``/``), whatever device and inode numbers it got; or,
        with no mount change there, it is a folder not watched before (made, or moved in).
        An unmount is never an arrival, even when it uncovers a folder of the host."""

        def at_or_above(points: frozenset[str]) -> bool:
            return any(point != "/" and folder.is_relative_to(point) for point in points)

        if at_or_above(self._mounted):
            return True
        return not was_watched and not at_or_above(self._unmounted)

    def _mount_table_signalled(self) -> bool:
        """True when the kernel flagged a mount-table change on our mountinfo handle.

        An open proc mountinfo file reports POLLPRI once for all changes since the previous
        ``poll(2)`` on it; a regular file (a test fake) never does.
        """
        if self._mount_events is None:
            try:
                fd = os.open(self._mountinfo_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
            self._mount_events_fd = fd
            self._mount_events = select.poll()
            self._mount_events.register(fd, select.POLLPRI)
            self._mount_events.poll(0)  # changes before the first poll are not news
            return False
        return any(
            flags & (select.POLLPRI | select.POLLERR) for _, flags in self._mount_events.poll(0)
        )

    def _expand_patterns(self) -> dict[Path, tuple[int, int]]:
        """Existing folders matching the patterns, resolved, with their (st_dev, st_ino)."""
        folders: dict[Path, tuple[int, int]] = {}
        for pattern in self._patterns:
            for match in sorted(glob.glob(pattern)):
                try:
                    folder = Path(match).resolve(strict=True)
                    info = folder.stat()
                except (OSError, RuntimeError):  # gone meanwhile, or a symlink loop
                    continue
                if stat.S_ISDIR(info.st_mode):
                    folders[folder] = (info.st_dev, info.st_ino)
        return folders

    def _watch(self, observer: InotifyObserver, folder: Path, identity: tuple[int, int]) -> bool:
        try:
            watch = observer.schedule(
                self._handler, str(folder), event_filter=[FileClosedEvent, FileMovedEvent]
            )
        except OSError as exc:  # gone meanwhile, no permission, inotify watch limit
            if folder not in self._unwatchable:
                log.warning("drop folder %s not watched: %s", folder, exc)
                self._unwatchable.add(folder)
            return False
        self._unwatchable.discard(folder)
        self._watched[folder] = _Watched(watch, identity)
        return True

    def _unwatch(self, observer: InotifyObserver, folder: Path) -> None:
        watched = self._watched.pop(folder)
        with contextlib.suppress(KeyError):
            observer.unschedule(watched.watch)

    # -- offering ---------------------------------------------------------------------------

    def _scan(self, folder: Path) -> None:
        """Offer every candidate file in ``folder`` in natural order, until a stop request;
        forget files that are no longer there."""
        try:
            with os.scandir(folder) as entries:
                names = sorted((entry.name for entry in entries), key=natural_sort_key)
        except OSError as exc:
            log.warning("drop folder %s not scanned: %s", folder, exc)
            return
        present = {folder / name for name in names}
        with self._offer_lock:
            for path in [path for path in self._done if path.parent == folder]:
                if path not in present:
                    del self._done[path]
        for name in names:
            if self.stop_requested:
                log.debug("drop folder %s: scan ended early, the watcher is stopping", folder)
                return
            self._offer(folder / name)

    def _offer(self, path: Path) -> None:
        """Call on_bundle for ``path`` if it is a candidate and not done and unchanged, and
        no stop was requested (checked under the offer lock, after any running callback)."""
        if not is_candidate_name(path.name, self._suffixes):
            return
        with self._offer_lock:
            if self.stop_requested:
                log.debug("bundle file %s not offered: the watcher is stopping", path)
                return
            try:
                info = path.lstat()
            except OSError:
                return  # gone again (a temp file renamed away, a stick pulled)
            if not stat.S_ISREG(info.st_mode):
                return
            stamp = _FileStamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if self._done.get(path) == stamp:
                return
            log.debug("offering bundle file %s (%d bytes)", path, info.st_size)
            try:
                done = bool(self._on_bundle(path))
            except Exception:
                log.exception("bundle file %s: handler failed; it will be offered again", path)
                done = False
            if done:
                self._done[path] = stamp
            else:
                self._done.pop(path, None)
