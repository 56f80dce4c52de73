"""On-site control over when verified revisions apply: the hold, maintenance windows, promotion.

The shell around ``gate``: it reads the hold and the policy in force from the store, the site
time from the clock and the config's time zone, and asks ``gate.decide``.

- ``admit`` is asked by the importer for every newly verified revision: apply now, or keep it
  pending (it is committed as ``policy/pending``: verified, stored, counted by the trust
  state, not enforced).
- ``promote_if_due`` applies the pending revision once the gate opens (a window begins, the
  hold is released); the enforcer asks before every cycle and every few seconds.
- ``hold`` / ``release`` are ``edge-agent hold --reason`` / ``release``. A hold stops new
  revisions from applying (even urgent ones); drift healing of the revision in force goes on.
  A hold takes effect at once: a commit or promotion racing it sees it in its transaction
  (a commit then fails with a transient conflict and is retried as pending).

Every change queues a health event (the hold and the pending revision are in it), so
management learns of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edge_agent.clock import Clock
from edge_agent.config import AgentConfig
from edge_agent.findings import import_data
from edge_agent.gate import Decision, decide, windows_of
from edge_agent.state import StateStore
from edge_agent.telemetry import note_health, stamp

log = logging.getLogger(__name__)


def admit(
    settings: Mapping[str, Any], store: StateStore, config: AgentConfig, clock: Clock
) -> Decision:
    """May a newly verified revision with ``settings`` apply now, on this site?

    The maintenance windows are those of the policy in force: before the first policy there
    are none, so it applies at once, unless the site is held."""
    current = store.current_policy()
    return decide(
        hold=store.hold(),
        windows=windows_of(current),
        urgent=bool(settings.get("urgent")),
        now=config.site_time(clock.now()),
    )


def pending_decision(store: StateStore, config: AgentConfig, clock: Clock) -> Decision | None:
    """What the gate says of the pending revision now (None: nothing is pending)."""
    pending = store.pending_policy()
    if pending is None:
        return None
    return admit(pending["settings"], store, config, clock)


def promote_if_due(store: StateStore, config: AgentConfig, clock: Clock) -> int | None:
    """Apply the pending revision if the gate is open now; the revision applied, or None."""
    pending = store.pending_policy()
    if pending is None:
        return None
    decision = admit(pending["settings"], store, config, clock)
    if not decision.apply:
        return None
    revision = int(pending["revision"])
    record = {
        "result": "applied",
        "location": "pending",
        "revision": revision,
        "bundle_id": pending["bundle_id"],
        "file_sha256": pending["source"]["file_sha256"],
    }
    event = stamp("import", import_data(record, "pending"), clock)
    if store.promote_pending(revision, now=clock.now(), events=[event]):
        log.info("pending revision %d applied (%s)", revision, decision.reason)
        note_health(store, clock)
        return revision
    return None


def hold(store: StateStore, reason: str, clock: Clock) -> None:
    store.set_hold(reason, now=clock.now())
    log.info("hold set: %s", reason)
    note_health(store, clock)


def release(
    store: StateStore, config: AgentConfig, clock: Clock
) -> tuple[Mapping[str, Any] | None, int | None, Decision | None]:
    """Release the hold: (the hold released, the revision applied now, what still waits)."""
    released = store.clear_hold()
    applied = promote_if_due(store, config, clock)
    waiting = None if applied is not None else pending_decision(store, config, clock)
    note_health(store, clock)
    return released, applied, waiting
