"""The sync engine: talk to the management server when the link allows, never depend on it.

One cycle (``SyncEngine.cycle``), in order, each step a request or none:

1. **permit**: the link's retry state (``sync.retry``) says send, probe (one request after an
   outage, not a burst) or wait. Waiting sends nothing.
2. **enrol** if no credential is held for the configured server and cluster id and a bootstrap
   token file is configured. A credential held for another server or cluster id is never sent.
3. **desired state** with the last ETag: 304 and 204 change nothing; a new bundle is streamed
   to a private file and given to ``importer.verify_and_commit``, the function every offline
   bundle goes through. The server's word alone never changes the policy: a bundle that is
   tampered with or signed by an unknown key is rejected, recorded and reported, and the
   policy in force stays. Its ETag is remembered after any final verdict, so the same
   rejected bytes are not downloaded again; a transient failure (disk full) is retried.
4. **actions**: each pending action runs at most once (``StateStore.action_begin`` journals it
   before it runs); its result is queued in the same transaction that finishes it.
5. **outbox**: queued events are delivered oldest first in batches and acknowledged only
   after the server's answer (at least once; the server deduplicates by id: exactly once in
   effect). An event the server refuses alone (422) is removed and counted, never retried
   forever nor dropped silently; but a server refusing every request keeps every event.
6. **credential rotation** once the credential is ``ROTATE_AFTER`` old (or on the
   ``rotate-credential`` action): the new credential is stored before it is first used, and
   the server keeps the old one valid until then, so a lost answer never locks the agent out.
   A credential never expires while the site is offline.

Link state never changes workloads: nothing here removes, prunes or re-applies anything. An
unreachable server, an error, a 204 (nothing assigned) or a re-enrolment leave the policy in
force and the cluster as they are; only a verified newer revision changes them.

Besides the periodic cycle (the policy's ``sync_interval_s``), a waiter thread holds one long
poll (``GET /v1/agent/wait``) while the link is healthy, and runs a cycle as soon as the server
says the desired state or the actions changed; and events queued meanwhile (a reconcile, an
import by USB, a health change) are delivered within ``FLUSH_GAP_S`` while the link is healthy
(``flush``), not only at the next cycle. While the link is failing neither sends anything: the
cycle's recovery probe finds out when the server is back.

Clock skew: the engine measures the server's clock against ours from each answer's ``Date``
(``clock_skew_s`` in the sync state and ``status``). Nothing depends on the two agreeing:
bundles are checked against trusted time and tolerate ``limits.max_future_skew_s``;
``Retry-After`` dates are read against the server's own ``Date``; the credential never
expires; event times are the agent's clock and the server orders health reports by them
but never later than its own time.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import platform
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_agent.backoff import Backoff
from edge_agent.clock import Clock, format_time, parse_time
from edge_agent.config import AgentConfig, SyncConfig
from edge_agent.errors import BundleError, BundleErrorCode, EdgeAgentError, StateError
from edge_agent.importer import BundleInput, rejection_context, verify_and_commit
from edge_agent.outbox import Event
from edge_agent.state import INTERRUPTED, StateStore
from edge_agent.status import assess
from edge_agent.sync.client import (
    MAX_EVENTS_BODY_BYTES,
    Action,
    Bundle,
    NoneAssigned,
    SyncClient,
    Unchanged,
)
from edge_agent.sync.errors import Refused, RetryLater, ServerError, SyncError
from edge_agent.sync.retry import Link, RetryPolicy, Verdict, on_failure, on_success, permit
from edge_agent.telemetry import note_health, stamp
from edge_agent.usb import agent_public_key

log = logging.getLogger(__name__)

ROTATE_AFTER = dt.timedelta(days=30)
"""A credential older than this is rotated at the next successful sync."""
BATCH_MAX_EVENTS = 1000
"""Events per delivery request (the server takes 2,000)."""
BATCH_MAX_BYTES = 1_500_000
"""Event JSON per delivery request; with the framing it stays below the server's 2 MiB."""
assert BATCH_MAX_BYTES + 2 * BATCH_MAX_EVENTS + 64 < MAX_EVENTS_BODY_BYTES
DEFAULT_INTERVAL_S = 60.0
"""Between cycles before a policy brings its own ``sync_interval_s``."""
WAKE_GAP_S = 2.0
"""At least this long between cycles the waiter starts: a change the cycle cannot settle
(a bundle that keeps failing to commit) must not become a tight loop."""
FLUSH_GAP_S = 5.0
"""Events queued between cycles are delivered at most this long after the last delivery
while the link is healthy: prompt enough for a staged rollout waiting on a health report,
and a burst of events still goes out in one request."""
POISON_LIMIT = 3
"""Events refused alone, with none accepted, that make a delivery stop and keep everything:
a server that refuses every request must not empty the outbox one event at a time."""
MAX_TOKEN_BYTES = 4096
TRANSIENT_RETRY_S = 300
"""A bundle that failed to commit for a transient reason is fetched again after this long."""
_TRANSIENT = "transient"
_TIME_CODES = frozenset(
    c.value
    for c in (
        BundleErrorCode.NOT_YET_VALID,
        BundleErrorCode.BUNDLE_EXPIRED,
        BundleErrorCode.ROOT_EXPIRED,
    )
)


class ActionRunner(Protocol):
    """Runs one action; returns (``succeeded``|``failed``, detail, extra result data)."""

    def __call__(self, action: Action) -> tuple[str, str, Mapping[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one cycle did; ``next_in_s`` is when the next one should run."""

    result: str  # synced, waiting, not-enrolled, unreachable, refused, state-error
    detail: str
    next_in_s: float
    revision: int | None = None
    delivered: int = 0
    actions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "detail": self.detail,
            "next_in_s": round(self.next_in_s, 3),
            "revision": self.revision,
            "delivered": self.delivered,
            "actions": self.actions,
        }


def read_token_file(path: Path) -> str:
    """A bootstrap token from its file; ValueError naming the file, never its content."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_TOKEN_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"cannot read token file {path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}"
        ) from None
    return check_token(text, f"token file {path}")


def check_token(text: str, source: str) -> str:
    token = text.strip()
    if not token or len(text) > MAX_TOKEN_BYTES:
        raise ValueError(f"{source} is empty or too long")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ValueError(f"{source} does not hold one token (one line, no spaces)")
    return token


@dataclass
class _Sorting:
    """One batch's delivery: how many events the server took, which it refused alone."""

    accepted: int = 0
    refused: list[tuple[int, Refused]] = field(default_factory=list)


class SyncEngine:
    """See the module docstring. ``cycle`` from one thread at a time; ``run`` wires it all."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        clock: Clock,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        actions: ActionRunner | None = None,
    ) -> None:
        if config.sync is None:
            raise ValueError("the configuration has no sync section")
        self._config = config
        self._sync: SyncConfig = config.sync
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._policy = RetryPolicy(
            backoff=Backoff(
                base_s=self._sync.retry_base_s,
                cap_s=self._sync.retry_max_s,
                floor_s=min(1.0, self._sync.retry_base_s),
            ),
            max_retry_after_s=max(3600.0, self._sync.retry_max_s),
            refused_wait_s=max(self._sync.retry_max_s, min(3600.0, 12 * self._sync.retry_max_s)),
        )
        self._run_action: ActionRunner = actions or self._builtin_action
        self._link = Link()
        self._link_lock = threading.Lock()
        self._cycle_lock = threading.Lock()
        self._healthy = threading.Event()
        self._stop = threading.Event()
        self._client: SyncClient | None = None
        self._client_credential: str | None = None
        self._downloads = store.downloads_folder()
        self._force_pull = False
        self._recheck = True  # ask for actions on the first cycle whatever the server says
        self.cycles = 0  # completed cycles (any outcome), for the waiter and for tests

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def recover_interrupted(self) -> int:
        """Record actions the agent died in the middle of as interrupted (never run again);
        their failure is reported like any action result. Call once before the first cycle."""
        found = self._store.interrupted_actions()
        now = self._clock.now()
        for entry in found:
            detail = "interrupted: the agent stopped while it ran; it is not run again"
            self._store.action_finish(
                entry["id"],
                INTERRUPTED,
                detail,
                now=now,
                events=[self._result_event(entry["id"], entry["type"], "failed", detail, {})],
            )
            log.warning("action %s (%s) was interrupted; not run again", entry["id"], entry["type"])
        return len(found)

    def run(self, stop: threading.Event) -> None:
        """Cycles on the APScheduler scheduler plus the waiter, until ``stop`` is set."""
        from edge_agent.scheduler import CycleScheduler

        self._stop = stop
        self.recover_interrupted()
        scheduler = CycleScheduler(
            lambda: self.cycle().next_in_s, interval_s=DEFAULT_INTERVAL_S, jitter_s=0.0
        )
        waiter = threading.Thread(
            target=self._wait_loop,
            args=(stop, scheduler.trigger_now),
            name="sync-wait",
            daemon=True,
        )
        scheduler.start()
        waiter.start()
        last_flush = self._monotonic()
        try:
            while not stop.wait(1.0):
                if not self._healthy.is_set() or self._monotonic() - last_flush < FLUSH_GAP_S:
                    continue
                try:
                    queued = self._store.outbox_count()
                except StateError as exc:
                    log.warning("sync: cannot read the outbox: %s", exc)
                    continue
                if queued:
                    last_flush = self._monotonic()
                    self.flush()
        finally:
            self._healthy.set()  # let the waiter see the stop
            scheduler.shutdown()  # lets a running cycle finish: its requests have timeouts
            # The waiter may be inside a long poll for up to wait_s more: it writes nothing
            # that matters (the server releases a wait whose connection closes), so it is
            # not waited for; it is a daemon thread and ends with the process.
            waiter.join(0.5)
            self.close()

    # -- one cycle ---------------------------------------------------------------------------
    def cycle(self) -> Outcome:
        with self._cycle_lock:
            try:
                return self._cycle()
            finally:
                self.cycles += 1

    def _cycle(self) -> Outcome:
        with self._link_lock:
            allowed, self._link = permit(self._link, self._monotonic())
        if allowed.verdict is Verdict.WAIT:
            wait_s = allowed.wait_s if allowed.wait_s is not None else self._policy.backoff.floor_s
            return Outcome("waiting", "the link is backing off", wait_s)
        probing = allowed.verdict is Verdict.PROBE
        now = self._clock.now()
        try:
            self._store.update_sync_state(
                {"server": self._sync.server, "last_attempt_at": format_time(now)}
            )
            client = self._client_for_credential()
            if client is None:
                client = self._enroll()
            if client is None:
                self._release_probe()
                return Outcome(
                    "not-enrolled",
                    "no credential and no sync.enroll_token_file to enroll with",
                    self._interval_s(),
                )
            revision, newest_action = self._pull(client)
            self._succeeded(client, probing)
            actions = self._actions(client, newest_action)
            delivered = self._deliver(client)
            self._rotate_when_due(client)
        except SyncError as exc:
            return self._failed(exc)
        except StateError as exc:
            self._release_probe()
            log.error("sync: the state store failed: %s", exc)
            return Outcome(
                "state-error", str(exc), self._policy.backoff.delay_s(1, self._rng.random())
            )
        except Exception as exc:  # a bug: still a failed attempt on the backoff, never a stuck link
            log.exception("sync: the cycle failed unexpectedly")
            return self._failed(ServerError(f"internal error: {type(exc).__name__}", status=0))
        self._succeeded(client, probing=False)
        return Outcome(
            "synced",
            f"revision {revision} in force" if revision else "no policy in force",
            self._interval_s(),
            revision=revision,
            delivered=delivered,
            actions=actions,
        )

    def flush(self) -> int:
        """Deliver the queued events now, between cycles, if the link is healthy; how many."""
        with self._cycle_lock:
            if not self._healthy.is_set():
                return 0
            try:
                client = self._client_for_credential()
                return 0 if client is None else self._deliver(client)
            except SyncError as exc:
                self._failed(exc)
            except StateError as exc:
                log.error("sync: the state store failed: %s", exc)
            return 0

    # -- steps -------------------------------------------------------------------------------
    def _held_secret(self) -> str | None:
        """The credential held for this server and cluster id (never another's), or None."""
        held = self._store.sync_credential()
        if (
            held is None
            or held.get("server") != self._sync.server
            or held.get("cluster_id") != self._config.cluster_id
            or not isinstance(held.get("credential"), str)
        ):
            return None
        return str(held["credential"])

    def _client_for_credential(self) -> SyncClient | None:
        """A client carrying the credential held for this server and cluster id, or None."""
        secret = self._held_secret()
        if secret is None:
            return None
        if self._client is None:
            self._client = SyncClient.from_config(self._sync, credential=secret, clock=self._clock)
        if self._client_credential != secret:
            self._client.use_credential(secret)
            self._client_credential = secret
        return self._client

    def _enroll(self) -> SyncClient | None:
        path = self._sync.enroll_token_file
        if path is None:
            return None
        try:
            token = read_token_file(path)
        except ValueError as exc:
            log.warning("sync: not enrolled: %s", exc)
            return None
        if self._client is None:
            self._client = SyncClient.from_config(self._sync, clock=self._clock)
        credential = self._client.enroll(
            token,
            self._config.cluster_id,
            self._config.labels,
            agent_key=base64.b64encode(agent_public_key(self._store)).decode("ascii"),
        )
        now = self._clock.now()
        self._store.set_sync_credential(
            credential.to_state(self._sync.server, self._config.cluster_id, now)
        )
        # A new enrolment starts the conversation afresh: the server may not know our ETag or
        # our health. The policy in force and the cluster are left exactly as they are.
        self._store.update_sync_state(
            {"etag": None, "actions_seq": None, "enrolled_at": format_time(now)}
        )
        self._store.clear_health_mark()
        log.info("sync: enrolled %s with %s", self._config.cluster_id, self._sync.server)
        return self._client_for_credential()

    def _pull(self, client: SyncClient) -> tuple[int | None, int | None]:
        """Fetch the desired state; verify and commit a new one. The revision in force and
        the server's newest action sequence (None: unknown)."""
        state = self._store.sync_state()
        rejected = state.get("rejected")
        if isinstance(rejected, dict) and (
            rejected.get("context") != self._rejection_context(str(rejected.get("code")))
            or self._retry_due(rejected.get("retry_at"))
        ):
            # Rejected under other circumstances (trust root, identity, the site clock): the
            # same bytes may pass now. Fetch and verify them again.
            self._store.update_sync_state({"etag": None, "rejected": None})
            state = self._store.sync_state()
        etag = None if self._force_pull else state.get("etag")
        answer = client.desired(
            etag, folder=self._downloads, max_bytes=self._config.limits.max_bundle_bytes
        )
        self._force_pull = False
        self._note_skew(client)
        if isinstance(answer, Unchanged | NoneAssigned):
            if isinstance(answer, NoneAssigned) and state.get("etag"):
                log.info("sync: nothing is assigned to this cluster now; the policy in force stays")
            changes: dict[str, Any] = {
                "etag": answer.etag if isinstance(answer, Unchanged) else None,
                "assigned": isinstance(answer, Unchanged),
            }
            if isinstance(answer, Unchanged) and not state.get("rejected"):
                # "Still the bundle you verified": the policy in force is confirmed. A 204, or
                # a 304 for a bundle this agent rejected, confirms nothing (staleness goes on).
                changes["last_confirmed_at"] = format_time(self._clock.now())
            if isinstance(answer, NoneAssigned):
                changes["rejected"] = None
            self._store.update_sync_state(changes)
        else:
            self._import(answer)
        policy = self._store.current_policy()
        return (int(policy["revision"]) if policy else None), answer.actions

    def _import(self, bundle: Bundle) -> None:
        try:
            with open(bundle.path, "rb") as handle:
                verify_and_commit(
                    BundleInput(
                        handle,
                        kind="sync",
                        location=self._sync.server,
                        max_bytes=self._config.limits.max_bundle_bytes,
                    ),
                    store=self._store,
                    config=self._config,
                    clock=self._clock,
                )
        except BundleError as exc:
            if exc.retryable:
                return  # a read error: fetch it again next time
            log.warning("sync: revision %d from the server rejected: %s", bundle.revision, exc)
            # Kept, so the same bytes are not downloaded again while they would be rejected
            # again; the context says when that may no longer hold.
            self._keep_rejected(bundle, exc.code.value)
            return
        except StateError as exc:
            if not exc.transient:
                raise
            # Disk full, a hold set meanwhile, a concurrent import: verify it again, but
            # not at once (the long poll would ask every few seconds): in a few minutes.
            self._keep_rejected(bundle, _TRANSIENT)
            return
        except OSError as exc:
            log.warning("sync: downloaded bundle unreadable: %s", exc)
            return
        finally:
            bundle.path.unlink(missing_ok=True)
        self._store.update_sync_state(
            {
                "etag": bundle.etag,
                "assigned": True,
                "rejected": None,
                "last_confirmed_at": format_time(self._clock.now()),
            }
        )

    def _keep_rejected(self, bundle: Bundle, code: str) -> None:
        rejected: dict[str, Any] = {"code": code, "context": self._rejection_context(code)}
        if code == _TRANSIENT:  # tried again five minutes later, whatever else changes
            retry_at = self._clock.now() + dt.timedelta(seconds=TRANSIENT_RETRY_S)
            rejected["retry_at"] = format_time(retry_at)
        self._store.update_sync_state({"etag": bundle.etag, "assigned": True, "rejected": rejected})

    def _retry_due(self, retry_at: Any) -> bool:
        if not isinstance(retry_at, str):
            return False
        try:
            return self._clock.now() >= parse_time(retry_at)
        except ValueError:
            return True  # unreadable: try again rather than never

    def _rejection_context(self, code: str) -> str:
        """What a rejection with ``code`` depended on besides the bytes: the trust root and
        identity always; for a verdict on time, also the site's hour (tried hourly again,
        so a clock put right by NTP lets the bundle in). A transient failure is tried again
        at its ``retry_at`` (``_keep_rejected``), or sooner when this context changes."""
        context = rejection_context(self._store.trust(), self._config)
        if code in _TIME_CODES:
            context += "/" + self._clock.now().strftime("%Y-%m-%dT%H")
        return context

    def _actions(self, client: SyncClient, newest_on_server: int | None) -> int:
        newest = int(self._store.sync_state().get("actions_seq") or 0)
        if newest_on_server is not None and newest_on_server <= newest and not self._recheck:
            return 0  # nothing new: an idle cycle is one conditional GET
        self._recheck = False
        pending = client.actions()
        ran = 0
        if newest_on_server is not None:
            newest = max(newest, newest_on_server)  # done before (re-enrolled): not pending
        for action in pending:
            newest = max(newest, action.seq)
            if self._stop.is_set():
                break
            if not self._store.action_begin(action.id, action.type, now=self._clock.now()):
                continue  # begun before: never twice (its result is queued or was delivered)
            try:
                outcome, detail, extra = self._run_action(action)
            except EdgeAgentError as exc:
                outcome, detail, extra = "failed", str(exc), {}
            except Exception as exc:  # an action must never take the agent down
                log.exception("action %s (%s) failed", action.id, action.type)
                outcome, detail, extra = "failed", f"internal error: {type(exc).__name__}", {}
            self._store.action_finish(
                action.id,
                outcome,
                detail,
                now=self._clock.now(),
                events=[self._result_event(action.id, action.type, outcome, detail, extra)],
            )
            log.info("action %s (%s): %s %s", action.id, action.type, outcome, detail)
            ran += 1
        self._store.update_sync_state({"actions_seq": newest})
        return ran

    def _deliver(self, client: SyncClient) -> int:
        delivered = 0
        while not self._stop.is_set():
            batch = self._store.outbox_batch(BATCH_MAX_EVENTS, BATCH_MAX_BYTES)
            if not batch:
                break
            run = _Sorting()
            self._post(client, batch, run)
            for seq, exc in run.refused:
                kind = self._store.refuse(seq)
                log.error("sync: the server refuses a %s event; removed, counted: %s", kind, exc)
            delivered += run.accepted
        if delivered:
            log.info("sync: delivered %d events", delivered)
            self._store.write_snapshot()
        return delivered

    def _post(self, client: SyncClient, batch: Sequence[tuple[int, str]], run: _Sorting) -> None:
        """Deliver ``batch`` and acknowledge what the server took.

        A batch the server refuses (422, 413) is split in halves until each refused event
        stands alone (poison: removed and counted by the caller). But when ``POISON_LIMIT``
        events were refused alone and none was accepted, it is the requests the server (or
        a proxy before it) refuses, not these events: the ``Refused`` is raised and nothing
        is removed; the link backs off."""
        try:
            client.post_encoded_events([text for _, text in batch])
        except Refused as exc:
            if exc.status not in (413, 422):
                raise
            if len(batch) == 1:
                run.refused.append((batch[0][0], exc))
                if run.accepted == 0 and len(run.refused) >= POISON_LIMIT:
                    raise
                return
            half = len(batch) // 2
            self._post(client, batch[:half], run)
            self._post(client, batch[half:], run)
            return
        self._store.ack(seq for seq, _ in batch)
        run.accepted += len(batch)

    def _rotate_when_due(self, client: SyncClient) -> None:
        """Rotation is housekeeping: its failure never fails the cycle; it is tried again a
        day later (an old credential keeps working meanwhile)."""
        retry_at = self._store.sync_state().get("rotation_retry_at")
        if isinstance(retry_at, str) and format_time(self._clock.now()) < retry_at:
            return
        try:
            self._rotate_if_due(client)
        except SyncError as exc:
            later = self._clock.now() + dt.timedelta(days=1)
            self._store.update_sync_state({"rotation_retry_at": format_time(later)})
            log.warning("sync: credential rotation failed (tried again in a day): %s", exc)

    def _rotate_if_due(self, client: SyncClient, *, force: bool = False) -> bool:
        held = self._store.sync_credential()
        if held is None:
            return False
        now = self._clock.now()
        issued = held.get("issued_at")
        if not isinstance(issued, str):
            # Enrolled by an agent that did not record it: count from now.
            self._store.set_sync_credential({**held, "issued_at": format_time(now)})
            return False
        try:
            age = now - dt.datetime.strptime(issued, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            age = ROTATE_AFTER
        if not force and age < ROTATE_AFTER:
            return False
        new = client.rotate_credential()
        # Stored before first use: the server keeps the old one valid until the new one is used.
        self._store.set_sync_credential(
            new.to_state(self._sync.server, self._config.cluster_id, now)
        )
        client.use_credential(new.credential)
        self._client_credential = new.credential
        self._store.update_sync_state({"rotation_retry_at": None})
        log.info("sync: credential rotated (now %s)", new.credential_id)
        return True

    # -- link bookkeeping --------------------------------------------------------------------
    def _succeeded(self, client: SyncClient, probing: bool) -> None:
        now = format_time(self._clock.now())
        with self._link_lock:
            recovered = self._link.failures
            self._link = on_success(self._link)
        state = self._store.sync_state()
        changes: dict[str, Any] = {
            "last_success_at": now,
            "offline_since": None,
            "last_error": None,
            "failures": None,
            "credential_id": (self._store.sync_credential() or {}).get("credential_id"),
        }
        flipped = bool(state.get("offline_since") or not state.get("online_since"))
        if flipped:
            changes["online_since"] = now
        self._store.update_sync_state(changes)
        if flipped:
            self._store.write_snapshot()  # status.json readers see the link come back
        if recovered or probing:
            log.info(
                "sync: link to %s restored after %d failed attempts", self._sync.server, recovered
            )
        self._healthy.set()

    def _failed(self, exc: SyncError) -> Outcome:
        permanent = isinstance(exc, Refused)
        retry_after = exc.retry_after_s if isinstance(exc, RetryLater) else None
        now_s = self._monotonic()
        with self._link_lock:
            self._link = on_failure(
                self._link,
                self._policy,
                now_s=now_s,
                random_fraction=self._rng.random(),
                retry_after_s=retry_after,
                permanent=permanent,
            )
            link = self._link
        self._healthy.clear()
        wait_s = max(0.0, link.not_before_s - now_s)
        now = self._clock.now()
        try:
            state = self._store.sync_state()
            changes: dict[str, Any] = {
                "last_error": str(exc),
                "failures": link.failures,
                "next_attempt_at": format_time(now + dt.timedelta(seconds=wait_s)),
            }
            flipped = bool(state.get("last_success_at") and not state.get("offline_since"))
            if flipped:
                changes["offline_since"] = format_time(now)
            self._store.update_sync_state(changes)
            if flipped:
                self._store.write_snapshot()  # status.json readers see the link go down
        except StateError as state_exc:
            log.warning("sync: link state not recorded: %s", state_exc)
        level = logging.WARNING if link.failures <= 1 or permanent else logging.INFO
        log.log(level, "sync: %s; next attempt in %.0f s", exc, wait_s)
        result = "refused" if permanent else "unreachable"
        return Outcome(result, str(exc), wait_s)

    def _release_probe(self) -> None:
        with self._link_lock:
            if self._link.probe_in_flight:
                self._link = Link(self._link.failures, self._link.not_before_s, False)

    def note_failure(self, exc: SyncError) -> None:
        """A request outside the cycle (the waiter's) failed: the link is failing."""
        self._failed(exc)

    def _note_skew(self, client: SyncClient) -> None:
        if client.server_time is None:
            return
        server, ours = client.server_time
        skew = round((server - ours).total_seconds())
        self._store.update_sync_state({"clock_skew_s": skew})
        if abs(skew) > 300:
            log.warning(
                "the site clock is %d s %s the server's",
                abs(skew),
                "behind" if skew > 0 else "ahead of",
            )

    def _interval_s(self) -> float:
        policy = self._store.current_policy()
        if policy is None:
            return DEFAULT_INTERVAL_S
        interval = float(policy["settings"]["sync_interval_s"])
        return interval + self._rng.random() * interval / 10

    # -- the waiter --------------------------------------------------------------------------
    def _wait_loop(self, stop: threading.Event, trigger: Callable[[], None]) -> None:
        waiter: SyncClient | None = None
        secret: str | None = None
        last_wake = -WAKE_GAP_S
        # A wait answered much sooner than asked (a proxy that does not hold requests, a
        # server without long poll) must not be asked again at once: at least this long
        # between waits that brought nothing.
        min_idle_gap_s = max(1.0, min(self._sync.wait_s / 2, 15.0))
        while not stop.is_set():
            try:
                if not self._healthy.wait(1.0) or stop.is_set():
                    continue  # failing link: the cycle's probe finds out when it is back
                current = self._held_secret()
                if current is None:
                    stop.wait(1.0)
                    continue
                if waiter is None:
                    waiter = SyncClient.from_config(
                        self._sync, credential=current, clock=self._clock
                    )
                if current != secret:
                    waiter.use_credential(current)
                    secret = current
                state = self._store.sync_state()
                started = self._monotonic()
                try:
                    changed = waiter.wait(state.get("etag"), int(state.get("actions_seq") or 0))
                except RetryLater as exc:  # too many waits held: only the waiter pauses
                    stop.wait(exc.retry_after_s or 30.0)
                    continue
                except Refused as exc:
                    # A server without long poll (404), or a 401 in the moment after a
                    # rotation: polling still works, so the link is not failing; pause the
                    # waiter only, and read the credential again.
                    log.info("sync: long poll refused (%s); polling only for a while", exc)
                    stop.wait(self._policy.refused_wait_s / 12)
                    continue
                except SyncError as exc:
                    if not stop.is_set():
                        self.note_failure(exc)
                        trigger()  # the cycle reschedules itself on the link's backoff
                    continue
                if changed is None:
                    early = min_idle_gap_s - (self._monotonic() - started)
                    if early > 0:
                        stop.wait(early)
                    continue
                if not stop.is_set():
                    gap = self._monotonic() - last_wake
                    if gap < WAKE_GAP_S:
                        stop.wait(WAKE_GAP_S - gap)
                    last_wake = self._monotonic()
                    done = self.cycles
                    trigger()
                    deadline = self._monotonic() + 10 * self._sync.timeout_s
                    while (
                        self.cycles == done and not stop.is_set() and self._monotonic() < deadline
                    ):
                        stop.wait(0.05)
            except Exception:  # the waiter is an optimisation: it must never die, nor spin
                log.exception("sync: the long-poll waiter failed; trying again in a minute")
                stop.wait(60.0)
        if waiter is not None:
            waiter.close()

    # -- actions -----------------------------------------------------------------------------
    def _result_event(
        self, action_id: str, action_type: str, outcome: str, detail: str, extra: Mapping[str, Any]
    ) -> Event:
        data = {
            "action_id": action_id,
            "type": action_type,
            "outcome": outcome if outcome in ("succeeded", "failed") else "failed",
            "detail": detail[:1000],
            **dict(extra),
        }
        return stamp("action-result", data, self._clock)

    def _builtin_action(self, action: Action) -> tuple[str, str, Mapping[str, Any]]:
        if action.type == "resync":
            self._force_pull = True
            self._store.clear_health_mark()
            note_health(self._store, self._clock)
            return "succeeded", "desired state fetched again and health re-sent", {}
        if action.type == "reconcile-now":
            count = self._store.request_reconcile()
            return "succeeded", f"reconcile requested (request {count})", {}
        if action.type == "rotate-credential":
            client = self._client_for_credential()
            if client is None:
                return "failed", "no credential to rotate", {}
            self._rotate_if_due(client, force=True)
            return "succeeded", "credential rotated", {}
        if action.type == "collect-diagnostics":
            return "succeeded", "diagnostics attached", {"diagnostics": self._diagnostics()}
        return "failed", f"unsupported action type {action.type[:40]!r}", {}

    def _diagnostics(self) -> dict[str, Any]:
        now = self._clock.now()
        view = self._store.view()
        verdict, reason = assess(view, now)
        cycle = view.get("last_cycle") or {}
        policy = view.get("policy") or {}
        return {
            "verdict": verdict.name.lower(),
            "reason": reason[:300],
            "revision": policy.get("revision"),
            "last_cycle": (cycle.get("line") or "")[:300],
            "outbox": {k: view["outbox"][k] for k in ("count", "bytes", "oldest_time")},
            "python": platform.python_version(),
            "platform": platform.platform()[:100],
            "time": format_time(now),
        }
