"""Every hostile bundle of ``tests/adversarial.py`` is refused with exactly its code.

For each case: ``verify_bundle`` raises ``BundleError`` with the expected code (and the
expected detail where the code is broad), its message is one short line without key
material, and the sink got nothing it could mistake for verified data. Controls prove
the corpus is meaningful: the untampered base bundle verifies, and so does every case's
``twin`` (the same scenario with only the hostile detail undone).

Also here: root rotation end to end at verify level (v1 -> v4, one bundle per rotation
and all in one bundle, the last rotation revoking a compromised policy key).
"""

from __future__ import annotations

import errno
import io
import re

import pytest

from edge_agent.bundle.trust import TrustState
from edge_agent.bundle.verify import Limits, VerifiedBundle, verify_bundle
from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code
from mgmt_stub.keys import SigningKey
from tests.adversarial import CASES, Case, Scenario, base_scenario
from tests.factory import (
    ARTIFACT_BYTES,
    ARTIFACT_PATH,
    GOOD_FILES,
    IDENTITY,
    REFERENCE_TIME,
    Authority,
    RecordingSink,
    bundle_archive,
    good_bundle,
)

#: Codes decided from the roots and bundle.json alone, before any payload byte is read:
#: when a case fails with one of them, the sink must not have been called at all.
DECIDED_BEFORE_PAYLOAD = frozenset(
    {
        Code.SIGNATURE_MISSING,
        Code.SIGNATURE_INVALID,
        Code.THRESHOLD_NOT_MET,
        Code.KEY_UNKNOWN,
        Code.KEY_REVOKED,
        Code.DUPLICATE_SIGNATURE,
        Code.WRONG_TYPE,
        Code.ROOT_INVALID,
        Code.ROOT_CHAIN_BROKEN,
        Code.ROOT_EXPIRED,
        Code.BUNDLE_EXPIRED,
        Code.NOT_YET_VALID,
        Code.ROLLBACK,
        Code.REVISION_CONFLICT,
        Code.WRONG_TARGET,
        Code.UNSUPPORTED_FORMAT,
        Code.METADATA_MALFORMED,
    }
)
MAX_MESSAGE_CHARS = 300
#: A run this long of base64/hex characters would be a signature, a key or a whole digest.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=]{40,}")


def verify(scenario: Scenario, sink: RecordingSink | None = None) -> VerifiedBundle:
    return verify_bundle(
        io.BytesIO(scenario.archive),
        trust=scenario.trust,
        identity=scenario.identity,
        now=scenario.now,
        limits=scenario.limits,
        sink=sink if sink is not None else RecordingSink(),
    )


def assert_clean_message(error: BundleError, scenario: Scenario) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    assert len(message) < MAX_MESSAGE_CHARS, f"message has {len(message)} characters"
    assert not _LONG_TOKEN.search(message), f"message holds a long token: {message!r}"
    for material in scenario.key_material:
        assert material[:24] not in message, "message holds key material"


def test_corpus_is_complete() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) >= 40
    # READ_FAILED is about the stream, not the bytes: see test_read_error_is_retryable.
    assert {case.code for case in CASES} == set(Code) - {Code.READ_FAILED}


def test_base_bundle_verifies() -> None:
    sink = RecordingSink()
    verified = verify(base_scenario(), sink)

    assert [layer.name for layer in verified.layers] == ["base", "app"]
    assert [a.path for a in verified.artifacts] == [ARTIFACT_PATH]
    assert sink.stored == {ARTIFACT_PATH: ARTIFACT_BYTES}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_hostile_bundle_is_refused(case: Case) -> None:
    scenario = case.build()
    sink = RecordingSink()

    with pytest.raises(BundleError) as caught:
        verify(scenario, sink)

    error = caught.value
    assert error.code is case.code, f"{case.name}: got {error}"
    if case.detail is not None:
        assert case.detail in error.detail
    assert not error.retryable or case.code is Code.ARCHIVE_TRUNCATED
    assert_clean_message(error, scenario)
    if case.code in DECIDED_BEFORE_PAYLOAD:
        assert sink.calls == [], "the sink was fed before the metadata was accepted"
    # Manifests never reach the sink; each artifact reaches it at most once.
    assert all(path.startswith("artifacts/") for path in sink.calls)
    assert len(sink.calls) == len(set(sink.calls))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES if c.twin])
def test_twin_without_the_hostile_detail_verifies(case: Case) -> None:
    assert case.twin is not None
    verify(case.twin())


class _FailingStream(io.BytesIO):
    """A stream whose reads fail with EIO once ``fail_at`` bytes were read (a yanked USB stick)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self._fail_at = fail_at

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)


def test_read_error_is_retryable() -> None:
    scenario = base_scenario()
    with pytest.raises(BundleError) as caught:
        verify_bundle(
            _FailingStream(scenario.archive, fail_at=1024),
            trust=scenario.trust,
            identity=scenario.identity,
            now=scenario.now,
            limits=scenario.limits,
            sink=RecordingSink(),
        )
    assert caught.value.code is Code.READ_FAILED
    assert caught.value.retryable


def test_artifact_named_yaml_gets_the_file_limit() -> None:
    # Regression: the limit was chosen by suffix, so a .yaml artifact got the manifest limit.
    authority = Authority()
    values = "artifacts/values.yaml"
    files = {**GOOD_FILES, values: b"x" * 1000}
    bundle = good_bundle(
        authority, files=files, artifacts=[(ARTIFACT_PATH, "file"), (values, "file")]
    )
    scenario = Scenario(
        archive=bundle.archive,
        trust=authority.trust_state(),
        limits=Limits(max_manifest_bytes=500, max_file_bytes=2000),
    )
    assert verify(scenario).artifacts[1].length == 1000


# --------------------------------------------------------------------------------------
# Root rotation, end to end
# --------------------------------------------------------------------------------------


def _rotate_three_times() -> tuple[Authority, SigningKey]:
    """v1 -> v2 -> v3 -> v4 with a new root key each time; v4 revokes the policy key."""
    authority = Authority("rotation")
    compromised = authority.policy_key
    authority.rotate()
    authority.rotate()
    authority.rotate(drop_policy=[compromised], add_policy=1)
    return authority, compromised


def _verify_bundle(archive: bytes, trust: TrustState) -> VerifiedBundle:
    return verify_bundle(
        io.BytesIO(archive),
        trust=trust,
        identity=IDENTITY,
        now=REFERENCE_TIME,
        limits=Limits(),
        sink=RecordingSink(),
    )


@pytest.mark.parametrize("whole_chain", [True, False], ids=["whole-chain", "newest-root-only"])
def test_rotations_carried_one_per_bundle(whole_chain: bool) -> None:
    authority, compromised = _rotate_three_times()
    trust = authority.trust_state()
    for version in (2, 3, 4):
        # The builder carries the whole chain and the site skips what it trusts already;
        # a bundle carrying only the one new root must work as well.
        first = 2 if whole_chain else version
        chain = [
            (f"roots/{r.version}.json", r.envelope) for r in authority.roots[first - 1 : version]
        ]
        signer = authority.roots[version - 1].policy_keys[0]
        bundle = good_bundle(authority, revision=version, signers=[signer], with_roots=False)
        verified = _verify_bundle(bundle_archive(bundle.envelope, roots=chain), trust)
        assert verified.trust.root.root.version == version
        assert [r.root.version for r in verified.new_roots] == [version]
        trust = verified.trust

    assert compromised.keyid in trust.revoked_keyids
    stale = good_bundle(authority, revision=5, signers=[compromised], with_roots=False)
    with pytest.raises(BundleError) as caught:
        _verify_bundle(stale.archive, trust)
    assert caught.value.code is Code.KEY_REVOKED

    fresh = good_bundle(authority, revision=5, with_roots=False)
    assert _verify_bundle(fresh.archive, trust).metadata.revision == 5


def test_rotations_carried_all_in_one_bundle() -> None:
    authority, compromised = _rotate_three_times()

    verified = _verify_bundle(good_bundle(authority).archive, authority.trust_state())
    assert [r.root.version for r in verified.new_roots] == [2, 3, 4]
    assert compromised.keyid not in verified.trust.root.root.keys
    assert compromised.keyid in verified.trust.revoked_keyids

    with pytest.raises(BundleError) as caught:
        _verify_bundle(
            good_bundle(authority, signers=[compromised]).archive, authority.trust_state()
        )
    assert caught.value.code is Code.KEY_REVOKED
