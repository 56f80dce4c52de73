"""Bundle verification: the one gate every policy passes, offline bundle or online sync.

``verify_bundle`` reads a bundle archive once, front to back, and returns a
``VerifiedBundle`` only when every check passed:

1. ``roots/N.json`` members (optional, ascending) advance the trusted root one version at
   a time (``trust.advance_root``); the final root must not be expired.
2. ``bundle.json``: the envelope's signatures are checked against the final root's policy
   role over the exact payload bytes, and only then is the payload parsed; then expiry
   (against freeze-protected time), target, and revision (rollback, conflicting replay).
3. ``payload/<path>`` members: each must be listed, appear once, have the listed length and
   SHA-256; manifests are parsed strictly, artifacts are streamed to the caller's sink
   while being hashed. Files listed but absent are refused at the end.

The caller commits nothing until this returns; on any ``BundleError`` it discards whatever
the sink staged. Apart from reading the given stream and handing artifact chunks to the
sink, this module does no I/O and reads no clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Protocol

from edge_agent.bundle.archive import ArchiveReader
from edge_agent.bundle.envelope import BUNDLE_PAYLOAD_TYPE, parse_envelope, verify_envelope
from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.bundle.model import BundleMetadata, FileEntry, parse_metadata
from edge_agent.bundle.trust import (
    TrustedRoot,
    TrustState,
    advance_root,
    clock_is_plausible,
    effective_time,
)
from edge_agent.clock import format_time
from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code

METADATA_MEMBER = "bundle.json"
PAYLOAD_PREFIX = "payload/"
_ROOT_MEMBER = re.compile(r"roots/([1-9][0-9]{0,15})\.json")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits for one bundle. Defaults suit a site with a few GB of images."""

    max_bundle_bytes: int = 4 << 30  # whole archive, raw and inflated
    max_file_bytes: int = 2 << 30  # one payload file (artifact)
    max_manifest_bytes: int = 4 << 20  # one manifest file, parsed in memory
    max_total_manifest_bytes: int = 8 << 20  # all manifests together (~1.5 MB/s, ~15x memory)
    max_metadata_bytes: int = 1 << 20  # bundle.json or one roots/N.json
    max_members: int = 10_000
    max_future_skew_s: int = 86_400  # how far issued_at may lie ahead of a set clock
    yaml: YamlLimits = field(default_factory=YamlLimits)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this agent is, for target matching."""

    cluster_id: str
    labels: Mapping[str, str]


class ArtifactSink(Protocol):
    """Where artifact bytes go while they are verified (a staging folder, or nowhere)."""

    def store(self, path: str, chunks: Iterable[bytes]) -> None:
        """Consume every chunk; raise to abort. The data is trusted only if verify returns."""
        ...


class DiscardSink:
    """Consumes artifacts without keeping them: for ``verify`` with no side effects."""

    def store(self, path: str, chunks: Iterable[bytes]) -> None:
        for _ in chunks:
            pass


@dataclass(frozen=True, slots=True)
class Manifest:
    path: str
    sha256: str
    text: str
    objects: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    manifests: tuple[Manifest, ...]

    @property
    def object_count(self) -> int:
        return sum(len(m.objects) for m in self.manifests)


@dataclass(frozen=True, slots=True)
class Artifact:
    path: str
    kind: str
    sha256: str
    length: int


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle that passed every check. Only this type may be committed or applied."""

    metadata: BundleMetadata
    metadata_envelope: bytes
    digest: str  # SHA-256 of the signed metadata payload: the content identity
    layers: tuple[Layer, ...]
    artifacts: tuple[Artifact, ...]
    new_roots: tuple[TrustedRoot, ...]
    trust: TrustState  # the trust state to commit with this bundle
    based_on: TrustState  # the trust state it was verified against (commit checks it is unchanged)
    already_in_force: bool  # same revision and content as the policy in force
    archive_bytes: int


def verify_bundle(
    stream: BinaryIO,
    *,
    trust: TrustState,
    identity: Identity,
    now: dt.datetime,
    limits: Limits,
    sink: ArtifactSink,
) -> VerifiedBundle:
    """Verify one bundle archive; see the module docstring. Raises ``BundleError``."""
    reader = ArchiveReader(
        stream, max_bytes=limits.max_bundle_bytes, max_members=limits.max_members
    )
    members = reader.members()
    state = trust
    new_roots: list[TrustedRoot] = []
    last_root_version = 0

    member = next(members, None)
    while member is not None and member.name.startswith("roots/"):
        match = _ROOT_MEMBER.fullmatch(member.name)
        if match is None:
            raise BundleError(
                Code.FILE_UNLISTED, f"member {member.name[:80]!r} is not a root document name"
            )
        version = int(match.group(1))
        if version <= last_root_version:
            code = Code.FILE_DUPLICATE if version == last_root_version else Code.ROOT_CHAIN_BROKEN
            raise BundleError(
                code, f"root version {version} comes after version {last_root_version}"
            )
        last_root_version = version
        data = _read_small(reader, member.name, member.size, limits.max_metadata_bytes)
        advanced = advance_root(
            state, data, claimed_version=version, max_bytes=limits.max_metadata_bytes
        )
        if advanced is not state:
            new_roots.append(advanced.root)
            state = advanced
        member = next(members, None)

    if member is None or member.name != METADATA_MEMBER:
        found = "the end of the archive" if member is None else repr(member.name[:80])
        raise BundleError(
            Code.ARCHIVE_LAYOUT,
            f"expected {METADATA_MEMBER} after the root documents, found {found}",
        )
    envelope_bytes = _read_small(reader, member.name, member.size, limits.max_metadata_bytes)
    metadata, digest = _check_metadata(envelope_bytes, state, identity, now, limits)
    already = trust.revision == metadata.revision and trust.digest == digest

    layers, artifacts = _check_payload(reader, members, metadata, limits, sink)

    issued = metadata.issued_at
    high_water = issued if state.time_high_water is None else max(state.time_high_water, issued)
    final_trust = replace(
        state, time_high_water=high_water, revision=metadata.revision, digest=digest
    )
    return VerifiedBundle(
        metadata=metadata,
        metadata_envelope=envelope_bytes,
        digest=digest,
        layers=layers,
        artifacts=artifacts,
        new_roots=tuple(new_roots),
        trust=final_trust,
        based_on=trust,
        already_in_force=already,
        archive_bytes=reader.bytes_read,
    )


def _check_metadata(
    envelope_bytes: bytes, state: TrustState, identity: Identity, now: dt.datetime, limits: Limits
) -> tuple[BundleMetadata, str]:
    root = state.root.root
    envelope = parse_envelope(
        envelope_bytes, what="bundle metadata", max_bytes=limits.max_metadata_bytes
    )
    verify_envelope(
        envelope,
        what="bundle metadata",
        expected_type=BUNDLE_PAYLOAD_TYPE,
        keys=root.keys,
        role=root.policy_role,
        revoked=state.revoked_keyids,
    )
    metadata = parse_metadata(envelope.payload, max_bytes=limits.max_metadata_bytes)
    digest = hashlib.sha256(envelope.payload).hexdigest()

    trusted_now = effective_time(now, state)
    if trusted_now > root.expires_at:
        raise BundleError(
            Code.ROOT_EXPIRED,
            f"trusted root version {root.version} expired at {format_time(root.expires_at)} "
            f"(trusted time is {format_time(trusted_now)})",
        )
    if trusted_now > metadata.expires_at:
        raise BundleError(
            Code.BUNDLE_EXPIRED,
            f"bundle {metadata.bundle_id} expired at {format_time(metadata.expires_at)} "
            f"(trusted time is {format_time(trusted_now)})",
        )
    if clock_is_plausible(now):
        reference = max(now, state.time_high_water or now)
        if metadata.issued_at > reference + dt.timedelta(seconds=limits.max_future_skew_s):
            raise BundleError(
                Code.NOT_YET_VALID,
                f"bundle {metadata.bundle_id} is issued at {format_time(metadata.issued_at)}, "
                f"more than {limits.max_future_skew_s} s after this site's time {format_time(reference)}",
            )
    if not metadata.target.matches(identity.cluster_id, identity.labels):
        raise BundleError(
            Code.WRONG_TARGET,
            f"bundle {metadata.bundle_id} targets {metadata.target.describe()}, "
            f"not cluster {identity.cluster_id}",
        )
    if state.revision is not None:
        if metadata.revision < state.revision:
            raise BundleError(
                Code.ROLLBACK,
                f"bundle revision {metadata.revision} is older than revision {state.revision} in force",
            )
        if metadata.revision == state.revision and digest != state.digest:
            raise BundleError(
                Code.REVISION_CONFLICT,
                f"revision {metadata.revision} is already in force with different content",
            )
    manifest_paths = metadata.manifest_paths()
    for path, entry in metadata.files.items():
        limit = limits.max_manifest_bytes if path in manifest_paths else limits.max_file_bytes
        if entry.length > limit:
            raise BundleError(
                Code.TOO_LARGE, f"file {path!r} is {entry.length} bytes, limit is {limit}"
            )
    return metadata, digest


def _check_payload(
    reader: ArchiveReader,
    members: Iterator[Any],
    metadata: BundleMetadata,
    limits: Limits,
    sink: ArtifactSink,
) -> tuple[tuple[Layer, ...], tuple[Artifact, ...]]:
    manifest_paths = metadata.manifest_paths()
    artifact_kinds = {a.path: a.kind for a in metadata.artifacts}
    parsed: dict[str, Manifest] = {}
    staged: dict[str, Artifact] = {}
    manifest_total = 0
    for member in members:
        if member.name == METADATA_MEMBER:
            raise BundleError(Code.FILE_DUPLICATE, f"{METADATA_MEMBER} appears twice")
        if not member.name.startswith(PAYLOAD_PREFIX):
            code = Code.ARCHIVE_LAYOUT if member.name.startswith("roots/") else Code.FILE_UNLISTED
            raise BundleError(
                code, f"member {member.name[:80]!r} is not allowed after {METADATA_MEMBER}"
            )
        path = member.name[len(PAYLOAD_PREFIX) :]
        entry = metadata.files.get(path)
        if entry is None:
            raise BundleError(
                Code.FILE_UNLISTED, f"payload file {path[:80]!r} is not listed in the metadata"
            )
        if path in parsed or path in staged:
            raise BundleError(Code.FILE_DUPLICATE, f"payload file {path!r} appears twice")
        if member.size != entry.length:
            raise BundleError(
                Code.LENGTH_MISMATCH,
                f"payload file {path!r} is {member.size} bytes, listed as {entry.length}",
            )
        if path in manifest_paths:
            manifest_total += member.size
            if manifest_total > limits.max_total_manifest_bytes:
                raise BundleError(
                    Code.TOO_LARGE,
                    f"manifests exceed {limits.max_total_manifest_bytes} bytes in total",
                )
            data = b"".join(reader.read_data())
            _check_digest(path, entry, hashlib.sha256(data).hexdigest())
            objects = load_manifests(data, path=path, limits=limits.yaml)
            parsed[path] = Manifest(path, entry.sha256, data.decode("utf-8"), objects)
        else:
            hasher = hashlib.sha256()
            sink.store(path, _hashing(reader.read_data(), hasher))
            _check_digest(path, entry, hasher.hexdigest())
            staged[path] = Artifact(path, artifact_kinds[path], entry.sha256, entry.length)

    missing = sorted(set(metadata.files) - set(parsed) - set(staged))
    if missing:
        raise BundleError(
            Code.FILE_MISSING, f"payload file {missing[0]!r} is listed but not in the archive"
        )
    layers = tuple(
        Layer(spec.name, tuple(parsed[p] for p in spec.manifests)) for spec in metadata.layers
    )
    artifacts = tuple(staged[a.path] for a in metadata.artifacts)
    return layers, artifacts


def _hashing(chunks: Iterable[bytes], hasher: Any) -> Iterator[bytes]:
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk


def _check_digest(path: str, entry: FileEntry, actual: str) -> None:
    if actual != entry.sha256:
        raise BundleError(
            Code.HASH_MISMATCH,
            f"payload file {path!r} has SHA-256 {actual[:16]}…, listed as {entry.sha256[:16]}…",
        )


def _read_small(reader: ArchiveReader, name: str, size: int, limit: int) -> bytes:
    if size > limit:
        raise BundleError(Code.TOO_LARGE, f"member {name!r} is {size} bytes, limit is {limit}")
    return b"".join(reader.read_data())
