"""Trust state and root rotation, after The Update Framework's root update rules.

``TrustState`` is everything verification needs from the site's past: the trusted root,
the keys that earlier roots trusted and later ones dropped (revoked), the trusted-time
high-water mark, and the revision in force with its content digest.

``advance_root`` accepts root version N+1 only when a threshold of version N's root keys
and a threshold of its own root keys signed it. ``effective_time`` is the freeze
protection: a clock set back never makes time earlier than the newest issued-at already
accepted, nor earlier than ``TIME_FLOOR`` (devices that boot at 1970).

Pure: bytes and values in, values out; no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace

from edge_agent.bundle.envelope import (
    ROOT_PAYLOAD_TYPE,
    Envelope,
    Role,
    parse_envelope,
    verify_envelope,
)
from edge_agent.bundle.model import Root, parse_root
from edge_agent.clock import UTC
from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code

#: No real bundle is ever issued before this; a clock earlier than it is treated as unset.
TIME_FLOOR = dt.datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    root: Root
    envelope: bytes  # the exact signed bytes it was accepted from


@dataclass(frozen=True, slots=True)
class TrustState:
    root: TrustedRoot
    revoked_keyids: frozenset[str]
    time_high_water: dt.datetime | None
    revision: int | None  # revision in force, None before the first policy
    digest: str | None  # content digest of the revision in force


def load_initial_root(envelope_bytes: bytes, *, max_bytes: int) -> TrustedRoot:
    """Trust a provisioned root: it must be well formed and signed by its own root role."""
    envelope = parse_envelope(envelope_bytes, what="initial root", max_bytes=max_bytes)
    if envelope.payload_type != ROOT_PAYLOAD_TYPE:
        raise BundleError(Code.WRONG_TYPE, "initial root: envelope is not a root document")
    # A trust anchor names its own keys, so it is parsed before its self-signature is checked.
    root = parse_root(envelope.payload, max_bytes=max_bytes)
    verify_envelope(
        envelope,
        what="initial root",
        expected_type=ROOT_PAYLOAD_TYPE,
        keys=root.keys,
        role=root.root_role,
    )
    return TrustedRoot(root, envelope_bytes)


def initial_trust(root: TrustedRoot) -> TrustState:
    """The trust state of a freshly provisioned site: this root, nothing else yet."""
    return TrustState(root, frozenset(), None, None, None)


def advance_root(
    state: TrustState, envelope_bytes: bytes, *, claimed_version: int, max_bytes: int
) -> TrustState:
    """Accept root ``claimed_version`` if it is exactly the next one, or raise.

    ``claimed_version`` comes from the archive member name (``roots/N.json``) so that
    versions the site already trusts are skipped without being parsed; once the signatures
    check out, the payload's own version must equal it.
    """
    current = state.root.root
    if claimed_version <= current.version:
        return state
    if claimed_version != current.version + 1:
        raise BundleError(
            Code.ROOT_CHAIN_BROKEN,
            f"root version {claimed_version} does not follow trusted version {current.version}",
        )
    what = f"root version {claimed_version}"
    envelope = parse_envelope(envelope_bytes, what=what, max_bytes=max_bytes)
    # Signatures by the current root's keys are checked before the new payload is parsed.
    _chain_signatures(
        envelope,
        what=f"{what} (signatures by version {current.version} root keys)",
        keys=current.keys,
        role=current.root_role,
        revoked=state.revoked_keyids,
    )
    new = parse_root(envelope.payload, max_bytes=max_bytes)
    if new.version != claimed_version:
        raise BundleError(
            Code.ROOT_CHAIN_BROKEN,
            f"{what}: member is named version {claimed_version} but holds version {new.version}",
        )
    _chain_signatures(
        envelope,
        what=f"{what} (signatures by its own root keys)",
        keys=new.keys,
        role=new.root_role,
        revoked=frozenset(),
    )
    revoked = (state.revoked_keyids | frozenset(current.keys)) - frozenset(new.keys)
    return replace(state, root=TrustedRoot(new, envelope_bytes), revoked_keyids=revoked)


def effective_time(now: dt.datetime, state: TrustState) -> dt.datetime:
    """The time expiry is judged at: never before the high-water mark or the floor."""
    candidates = [now, TIME_FLOOR]
    if state.time_high_water is not None:
        candidates.append(state.time_high_water)
    return max(candidates)


def clock_is_plausible(now: dt.datetime) -> bool:
    """A clock before the floor has not been set (RTC-less boards boot at 1970)."""
    return now >= TIME_FLOOR


def _chain_signatures(
    envelope: Envelope,
    *,
    what: str,
    keys: Mapping[str, bytes],
    role: Role,
    revoked: frozenset[str],
) -> None:
    """A root update whose signatures fail the rotation rule breaks the chain of trust."""
    try:
        verify_envelope(
            envelope,
            what=what,
            expected_type=ROOT_PAYLOAD_TYPE,
            keys=keys,
            role=role,
            revoked=revoked,
        )
    except BundleError as exc:
        if exc.code is Code.WRONG_TYPE:
            raise
        raise BundleError(Code.ROOT_CHAIN_BROKEN, f"{exc.detail} [{exc.code.value}]") from None
