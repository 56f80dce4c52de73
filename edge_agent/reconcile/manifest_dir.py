"""The manifest-folder target: render each layer to a file an edge distribution auto-applies.

One concept: keep a folder of manifests (k3s and RKE2 ``/var/lib/rancher/k3s/server/manifests``,
k0s ``/var/lib/k0s/manifests``) byte for byte equal to the policy in force. The distribution
applies what is in the folder; this target only writes, restores and removes files.

Layouts (``Layout``):

* ``flat`` (k3s, RKE2): one file per layer, ``<prefix>-<NN>-<layer>.yaml``, NN the layer's
  position in the policy (``00``, ``01``, ...), so that a directory listing shows policy order.
  Reordering layers renames their files (the new name is written, the old one pruned).
* ``per-layer-dir`` (k0s, which treats every sub-folder as one "stack"):
  ``<prefix>-<layer>/manifests.yaml``. An emptied sub-folder is removed after a prune; one
  holding anything else is left.

File content: a header comment (managed by edge-agent, edits are restored), then the layer's
objects in policy order as YAML documents (``yaml.safe_dump``, keys sorted, one ``---`` per
document). Rendering is deterministic, so comparing bytes is comparing desired state.

Ownership: the index file ``.<prefix>-index.json`` in the folder lists every file the agent
wrote (relative path, layer, SHA-256 of what it last wrote). Only files in the index are ever
pruned, and only if they are still regular files; a file with the agent's prefix that the
agent did not write is never deleted (a desired file's *name* is claimed, though: in enforce
mode a file squatting it is overwritten). Dot files are skipped by k3s/RKE2 and k0s only reads
sub-folders, so neither applies the index or the atomic-write temp files (``.<name>.<pid>.tmp``).
Chosen over "every file matching the prefix" because a person may well drop their own
``edge-agent-extra.yaml`` there; chosen over the inventory because it holds refs, not files.
A lost or corrupt index only means old files are not pruned (logged), never that foreign files
are. New names are added to the index *before* their file is written, so a crash cannot
leave an agent file the index does not know.

Per cycle and layer file: equal bytes → UNCHANGED; missing → CREATED (enforce) / DRIFTED
(audit); different → HEALED (enforce: atomic rewrite) / DRIFTED (audit: left as is); an
object new to the inventory in a rewritten file is CREATED. A write that fails → FAILED for
that layer's objects, the other layers still done. Objects in the inventory and no longer
desired → PRUNED (enforce: their files are now all rewritten or removed) / WOULD_PRUNE
(audit); FAILED and kept in the inventory when any file operation of the cycle failed. No
health (the distribution applies asynchronously; ``health=None``).

Never writes when nothing changed: k3s re-applies a file on every mtime change.

A folder that is missing, not a folder, or (enforce mode) not writable raises
``TargetUnavailableError`` (transient: the distribution may create it once it has started);
audit mode only needs to read it, so a read-only folder can still be audited.

Does not: talk to a cluster, know whether the distribution deleted objects of a removed file
(k3s deletes an AddOn's objects when its file goes, k0s a stack's when its folder goes — this
is the distribution's behaviour, not checked here), write anything in audit mode (not even the
index).

``watch(on_change)`` runs a watchdog observer on the folder and calls ``on_change()`` at most
every ``debounce_s`` (0.5 s) after one of the agent's files was changed, deleted or moved away
— judged by comparing the file's current SHA-256 with what the agent last rendered, so its own
atomic writes (a rename of content it expects) and temp files never trigger it. The periodic
cycle still catches anything the observer missed (inotify queue overflow, a folder remounted).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from edge_agent.bundle.model import Mode
from edge_agent.errors import TargetUnavailableError
from edge_agent.files import atomic_write, fsync_dir
from edge_agent.reconcile.inventory import Inventory
from edge_agent.reconcile.objects import DesiredObject, ObjectRef
from edge_agent.reconcile.target import Action, CycleReport, ObjectResult

log = logging.getLogger(__name__)

FILE_MODE = 0o600  # manifests may hold Secrets; the distribution reads them as root
DIR_MODE = 0o700
INDEX_FORMAT_VERSION = 1
DEBOUNCE_S = 0.5  # coalesces an editor's write-rename-chmod burst into one cycle
_SAFE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,100})")
_HEADER = (
    "# Managed by edge-agent (layer {layer}). Do not edit: if this file is changed or\n"
    "# deleted, edge-agent restores it to the policy in force (in enforce mode).\n"
)


class Layout(enum.Enum):
    """How layers map to paths in the folder (see the module docstring)."""

    FLAT = "flat"  # <prefix>-<NN>-<layer>.yaml — k3s, RKE2
    PER_LAYER_DIR = "per-layer-dir"  # <prefix>-<layer>/manifests.yaml — k0s stacks


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _LayerFile:
    layer: str
    rel: str  # path relative to the folder, "/"-separated
    content: bytes
    sha256: str
    objects: tuple[DesiredObject, ...]


def render_layer(layer: str, objects: Sequence[DesiredObject]) -> bytes:
    """The exact bytes of one layer's file: header, then one YAML document per object."""
    body = yaml.safe_dump_all(
        [_plain(obj.manifest) for obj in objects],
        explicit_start=True,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,  # no folding: the bytes must not depend on line lengths
    )
    return _HEADER.format(layer=layer).encode() + body.encode("utf-8")


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists, which ``safe_dump`` represents."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ManifestDirTarget:
    """Enforces the policy onto a folder of manifests an edge distribution applies."""

    name = "manifest-dir"

    def __init__(
        self,
        folder: Path,
        *,
        prefix: str = "edge-agent",
        layout: Layout = Layout.FLAT,
        debounce_s: float = DEBOUNCE_S,
    ) -> None:
        if not _SAFE_NAME.fullmatch(prefix):
            raise ValueError(
                f"manifest file prefix {prefix!r}: expected [A-Za-z0-9._-], no dot first"
            )
        if debounce_s <= 0:
            raise ValueError(f"debounce {debounce_s} s: expected > 0")
        self.folder = Path(folder)
        self.prefix = prefix
        self.layout = layout
        self.debounce_s = debounce_s
        self._index_path = self.folder / f".{prefix}-index.json"
        # rel path → SHA-256 of what the folder should hold; read by the watcher thread.
        self._expected_lock = threading.Lock()
        self._expected: dict[str, str] | None = None  # None: no cycle yet (use the index)

    # -- paths ------------------------------------------------------------------------------

    def path_of(self, layer: str, position: int) -> str:
        """The relative path of a layer's file (``position``: its index in the policy)."""
        if self.layout is Layout.FLAT:
            return f"{self.prefix}-{position:02d}-{layer}.yaml"
        return f"{self.prefix}-{layer}/manifests.yaml"

    # -- the cycle --------------------------------------------------------------------------

    def reconcile(
        self, desired: Sequence[DesiredObject], inventory: Inventory, *, mode: Mode
    ) -> CycleReport:
        self._check_folder(mode)
        enforce = mode is Mode.ENFORCE
        index = self._read_index()

        files, bad_layers = self._plan(desired)
        with self._expected_lock:  # before any write, so the watcher knows our own writes
            self._expected = {f.rel: f.sha256 for f in files}

        results: list[ObjectResult] = [
            ObjectResult(obj.ref, Action.FAILED, detail)
            for detail, objects in bad_layers
            for obj in objects
        ]
        failed = bool(bad_layers)

        # Claim every desired name before writing it (see "Ownership").
        wanted = {f.rel for f in files}
        if enforce:
            intent = {**index, **{f.rel: {"layer": f.layer, "sha256": f.sha256} for f in files}}
            self._write_index(index, intent)
        else:
            intent = index

        applied: list[DesiredObject] = []
        written = dict(intent)
        for f in files:
            action_results, ok = self._enforce_file(f, index.get(f.rel), inventory, enforce)
            results.extend(action_results)
            if ok:
                applied.extend(f.objects)
            elif enforce:
                failed = True
                if f.rel not in index:  # never written: do not claim it any longer
                    written.pop(f.rel, None)
                else:
                    written[f.rel] = index[f.rel]

        stale = sorted(rel for rel in index if rel not in wanted)
        for rel in stale:
            if not enforce:
                log.info("manifest file %s would be removed (audit mode)", self.folder / rel)
                continue
            if self._remove(rel):
                written.pop(rel, None)
            else:
                failed = True

        pruned: list[ObjectRef] = []
        for entry in inventory.diff(desired).to_prune:
            if not enforce:
                results.append(ObjectResult(entry.ref, Action.WOULD_PRUNE, "no longer desired"))
            elif failed:
                results.append(
                    ObjectResult(
                        entry.ref,
                        Action.FAILED,
                        "not pruned: a manifest file of this cycle could not be written or removed",
                    )
                )
            else:
                results.append(ObjectResult(entry.ref, Action.PRUNED))
                pruned.append(entry.ref)

        if enforce:
            self._write_index(intent, written)
        new_inventory = inventory.merge(applied=applied, pruned=pruned)
        return CycleReport(results=tuple(results), inventory=new_inventory)

    def _check_folder(self, mode: Mode) -> None:
        try:
            info = self.folder.stat()
        except OSError as exc:
            raise TargetUnavailableError(
                f"manifest folder {self.folder}: not usable ({exc.strerror or exc})"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise TargetUnavailableError(f"manifest folder {self.folder}: not a folder")
        need = os.R_OK | os.X_OK | (os.W_OK if mode is Mode.ENFORCE else 0)
        if not os.access(self.folder, need):
            raise TargetUnavailableError(
                f"manifest folder {self.folder}: not "
                + ("writable" if mode is Mode.ENFORCE else "readable")
            )

    def _plan(
        self, desired: Sequence[DesiredObject]
    ) -> tuple[list[_LayerFile], list[tuple[str, tuple[DesiredObject, ...]]]]:
        """Group by layer in policy order, render; layers with unusable names set aside."""
        by_layer: dict[str, list[DesiredObject]] = {}
        for obj in desired:
            by_layer.setdefault(obj.layer, []).append(obj)
        files: list[_LayerFile] = []
        bad: list[tuple[str, tuple[DesiredObject, ...]]] = []
        for position, (layer, objects) in enumerate(by_layer.items()):
            if not _SAFE_NAME.fullmatch(layer):
                bad.append((f"layer name {layer[:64]!r} cannot name a file", tuple(objects)))
                continue
            content = render_layer(layer, objects)
            rel = self.path_of(layer, position)
            files.append(_LayerFile(layer, rel, content, _sha256(content), tuple(objects)))
        return files, bad

    def _enforce_file(
        self,
        f: _LayerFile,
        last: Mapping[str, str] | None,
        inventory: Inventory,
        enforce: bool,
    ) -> tuple[list[ObjectResult], bool]:
        """Results for one layer's objects, and whether the file now holds them (or did)."""
        path = self.folder / f.rel

        def each(action: Action, detail: str = "") -> list[ObjectResult]:
            return [ObjectResult(obj.ref, action, detail) for obj in f.objects]

        try:
            on_disk: bytes | None = _read_regular(path)
        except OSError as exc:
            return each(Action.FAILED, f"{path}: not read ({exc.strerror or exc})"), False
        if on_disk == f.content:
            return each(Action.UNCHANGED), True

        if on_disk is None:
            why = "file missing"
        elif last is not None and _sha256(on_disk) == last.get("sha256"):
            why = "policy changed"
        else:
            why = "file changed behind the agent's back"
        if not enforce:
            return each(Action.DRIFTED, why), False
        try:
            self._write(path, f.content)
        except OSError as exc:
            log.warning("manifest file %s not written: %s", path, exc)
            return each(Action.FAILED, f"{path}: not written ({exc.strerror or exc})"), False
        log.info("manifest file %s written (%s)", path, why)
        if on_disk is None:
            return each(Action.CREATED), True
        return [
            ObjectResult(obj.ref, Action.HEALED, why)
            if obj.ref in inventory
            else ObjectResult(obj.ref, Action.CREATED)
            for obj in f.objects
        ], True

    def _write(self, path: Path, content: bytes) -> None:
        if path.parent != self.folder and not path.parent.is_dir():
            path.parent.mkdir(mode=DIR_MODE)
            fsync_dir(self.folder)
        atomic_write(path, content, mode=FILE_MODE)

    def _remove(self, rel: str) -> bool:
        """Remove a file the agent wrote; True when it is gone (or was not a regular file,
        which the agent did not put there: forgotten, not touched)."""
        path = self.folder / rel
        try:
            info = path.lstat()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("manifest file %s not removed: %s", path, exc)
            return False
        if not stat.S_ISREG(info.st_mode):
            log.warning("%s is no longer a regular file; left alone and forgotten", path)
            return True
        try:
            path.unlink()
            fsync_dir(path.parent)
        except OSError as exc:
            log.warning("manifest file %s not removed: %s", path, exc)
            return False
        if path.parent != self.folder:
            with contextlib.suppress(OSError):  # not empty: someone else's files are in it
                path.parent.rmdir()
                fsync_dir(self.folder)
        log.info("manifest file %s removed (layer no longer in the policy)", path)
        return True

    # -- the index --------------------------------------------------------------------------

    def _read_index(self) -> dict[str, dict[str, str]]:
        """rel → {"layer", "sha256"}; empty (and a warning) when missing or unreadable."""
        try:
            raw = json.loads(self._index_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("manifest index %s not read (%s); nothing pruned", self._index_path, exc)
            return {}
        files = raw.get("files") if isinstance(raw, dict) else None
        if (
            not isinstance(raw, dict)
            or raw.get("version") != INDEX_FORMAT_VERSION
            or not isinstance(files, dict)
        ):
            log.warning("manifest index %s has an unknown shape; nothing pruned", self._index_path)
            return {}
        result: dict[str, dict[str, str]] = {}
        for rel, entry in files.items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("layer"), str)
                and isinstance(entry.get("sha256"), str)
                and self._is_own_path(rel)
            ):
                result[rel] = {"layer": entry["layer"], "sha256": entry["sha256"]}
        return result

    def _is_own_path(self, rel: str) -> bool:
        """A path this target could have written: no escape from the folder."""
        parts = rel.split("/")
        return (
            0 < len(parts) <= 2
            and all(_SAFE_NAME.fullmatch(part) for part in parts)
            and parts[0].startswith(f"{self.prefix}-")
        )

    def _write_index(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if dict(old) == dict(new):
            return
        data = json.dumps(
            {"version": INDEX_FORMAT_VERSION, "files": new}, sort_keys=True, indent=1
        ).encode()
        try:
            atomic_write(self._index_path, data + b"\n", mode=FILE_MODE)
        except OSError as exc:
            raise TargetUnavailableError(
                f"manifest folder {self.folder}: index not written ({exc.strerror or exc})"
            ) from None

    # -- watching ---------------------------------------------------------------------------

    def watch(self, on_change: Callable[[], None]) -> Stoppable:
        """Call ``on_change()`` (debounced, on a worker thread) when one of the agent's
        files is changed, deleted or moved away. Raises ``TargetUnavailableError`` when the
        folder cannot be watched. ``stop()`` on the result joins both threads."""
        return _Watch(self, on_change)

    def _expected_now(self) -> dict[str, str]:
        with self._expected_lock:
            if self._expected is not None:
                return dict(self._expected)
        return {rel: entry["sha256"] for rel, entry in self._read_index().items()}

    def _drifted(self, paths: Sequence[str]) -> bool:
        """True when an event on ``paths`` touched an agent file that no longer holds what
        the agent rendered (changed, gone, or its sub-folder moved away)."""
        expected = self._expected_now()
        touched: set[str] = set()
        for path in paths:
            try:
                rel = Path(path).relative_to(self.folder).as_posix()
            except ValueError:
                continue
            touched.update(own for own in expected if own == rel or own.startswith(rel + "/"))
        for rel in touched:
            try:
                content = _read_regular(self.folder / rel)
            except OSError:
                return True
            if content is None or _sha256(content) != expected[rel]:
                return True
        return False


def _read_regular(path: Path) -> bytes | None:
    """The file's bytes, or None when nothing is there. Never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        return handle.read()


class _Events(FileSystemEventHandler):
    def __init__(self, target: ManifestDirTarget, poke: Callable[[], None]) -> None:
        self._target = target
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(os.fsdecode(event.dest_path))
        try:
            if self._target._drifted(paths):
                self._poke()
        except Exception:  # an exception here would end the observer thread
            log.exception("manifest folder event %s not handled", event)


class _Watch:
    """The observer plus a debounce thread; see ``ManifestDirTarget.watch``."""

    def __init__(self, target: ManifestDirTarget, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._delay_s = target.debounce_s
        self._cond = threading.Condition()
        self._due: float | None = None
        self._stopped = False
        self._observer = InotifyObserver(generate_full_events=True)
        try:
            if not target.folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
            self._observer.schedule(
                _Events(target, self._poke),
                str(target.folder),
                recursive=target.layout is Layout.PER_LAYER_DIR,
            )
            self._observer.start()  # watchdog adds the inotify watch here
        except OSError as exc:
            with contextlib.suppress(Exception):
                self._observer.stop()
            raise TargetUnavailableError(
                f"manifest folder {target.folder}: not watched ({exc.strerror or exc})"
            ) from None
        self._worker = threading.Thread(target=self._run, name="manifest-dir-debounce", daemon=True)
        self._worker.start()

    def _poke(self) -> None:
        with self._cond:
            if self._due is None:  # a fixed window from the first event: no starvation
                self._due = time.monotonic() + self._delay_s
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._due is None or time.monotonic() < self._due):
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                self._due = None
            try:
                self._on_change()
            except Exception:
                log.exception("manifest folder change handler failed")

    def stop(self) -> None:
        """Stop and join the observer and the debounce thread. Idempotent."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._observer.stop()
        self._observer.join()
        self._worker.join()
