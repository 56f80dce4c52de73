"""The agent's sync engine against the management stub on loopback: a backlog, an idle cycle.

Usage: .venv/bin/python scripts/bench_sync.py [--events 100000] [--quick] [--write-doc]
       [--profile]

The stub (``mgmt-stub serve --access-log``, ``tests/stub_process.StubProcess``) runs as its own
process, pinned to one CPU; this process is the agent (the real ``SyncEngine`` of
``tests/sync_site``, its clocks injected), pinned to another. The agent reaches the stub
through ``tests/faultproxy.FaultProxy``, which counts the HTTP bytes each way and the TCP
connections; the stub's access log counts the requests. It measures:

1. **a backlog delivered after an outage**: the site enrols and syncs once, the link goes
   down (one failed cycle: the engine backs off), ``--events`` realistic events are queued in
   the state store in chunks of 1,000 (timed: the baseline), the link comes back and one
   ``engine.cycle()`` delivers the whole outbox (timed). Checked afterwards: the outbox is
   empty and the stub's database holds every event;
2. **bytes per idle sync cycle**: a cycle with nothing new (one conditional
   ``GET /v1/agent/desired`` answered 304) and a long poll that times out
   (``GET /v1/agent/wait`` answered 204 after ``wait_s``, here 2 s: the bytes do not depend
   on it but for its digits).

Benchmarks are measurements, not tests: a missed target is reported, the exit status is 1
only when a correctness check fails (an event lost, a cycle that did not sync, a request
that was not the one expected). ``--write-doc`` replaces this script's section of
docs/benchmarks.md (between its markers), or appends it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import logging
import math
import os
import platform
import pstats
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchdoc import DOC, replace_section  # noqa: E402
from benchproc import proc_cpu_s, self_cpu_s  # noqa: E402

from edge_agent import findings  # noqa: E402
from edge_agent.outbox import Event, new_event  # noqa: E402
from edge_agent.state import StateStore  # noqa: E402
from edge_agent.sync.client import SyncClient  # noqa: E402
from edge_agent.sync.engine import BATCH_MAX_BYTES, BATCH_MAX_EVENTS, SyncEngine  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.stub_process import StubProcess  # noqa: E402
from tests.sync_site import SyncSite, make_sync_site  # noqa: E402

BEGIN = "<!-- bench_sync:begin -->"
END = "<!-- bench_sync:end -->"
PROFILE = REPO / "bundles" / "hello-web"
CLUSTER_ID = "bench-sync-1"
FULL_EVENTS = 100_000
QUICK_EVENTS = 2_000
CHUNK_EVENTS = 1000
"""Events per ``StateStore.enqueue`` call: events arrive in cycles, not all at once."""
TARGET_DELIVERY_S = 60.0
TARGET_IDLE_BYTES = 1024
WAIT_S = 2
"""Long poll asked of the stub in the idle measurement (the agent's default is 55 s)."""
IDLE_CYCLES = 3
"""Idle cycles measured one after another (after one unmeasured); figures are per cycle."""
WAITS = 2
"""Long polls measured one after another; figures are per wait."""
SYNC_SETTINGS = f"retry_base_s: 0.5, retry_max_s: 2, timeout_s: 30, wait_s: {WAIT_S}"
MIX = (("health", 4), ("reconcile", 3), ("drift", 2), ("import", 1))
"""Event types in the backlog, by weight: what a site queues while its link is down."""
Obj = dict[str, Any]


class RunBroken(Exception):
    """A correctness check failed: the figures of this run are not to be trusted."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise RunBroken(message)


# --------------------------------------------------------------------------------------------
# What the stub saw: its access log and its database


REQUEST_LINE = re.compile(r'"([A-Z]+) ([^ ?"]+)[^ "]* HTTP/[0-9.]+" (\d{3})')


AGENT_PATHS = ("/v1/agent/", "/v1/enroll")


class AccessLog:
    """The requests the stub logged (``--access-log``) after a mark, by (method, path, status)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, offset: int) -> Counter[tuple[str, str, int]]:
        """Read until two reads 0.2 s apart agree (a line is written as its answer ends)."""
        previous: Counter[tuple[str, str, int]] | None = None
        deadline = time.monotonic() + 5
        while True:
            with self.path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
            counts = Counter(
                (m[1], m[2], int(m[3]))
                for m in REQUEST_LINE.finditer(text)
                if m[2].startswith(AGENT_PATHS)
            )
            if counts == previous or time.monotonic() > deadline:
                return counts
            previous = counts
            time.sleep(0.2)


def server_count(stub: StubProcess, cluster_id: str) -> int:
    """Events the stub recorded for ``cluster_id``, read from its database (read-only)."""
    uri = f"file:{stub.data / 'stub.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM events WHERE cluster_id=?", (cluster_id,)
        ).fetchone()
    return int(count)


def requests_text(counts: Mapping[tuple[str, str, int], int]) -> str:
    return ", ".join(
        f"{n} x {method} {path.removeprefix('/v1/agent/')} {status}"
        for (method, path, status), n in sorted(counts.items())
    )


@dataclass(frozen=True, slots=True)
class Wire:
    """What went over the proxy in one window: HTTP bytes each way, connections accepted."""

    up: int
    down: int
    connections: int

    @classmethod
    def read(cls, proxy: FaultProxy) -> Wire:
        return cls(proxy.bytes_up, proxy.bytes_down, proxy.connections)

    def __sub__(self, other: Wire) -> Wire:
        return Wire(
            self.up - other.up, self.down - other.down, self.connections - other.connections
        )

    @property
    def total(self) -> int:
        return self.up + self.down


def settle(proxy: FaultProxy, engine: SyncEngine) -> Wire:
    """Close the engine's connection and wait until the proxy has closed every one: the
    counters are final (a chunk is counted just after it is forwarded)."""
    engine.close()
    proxy.wait_idle(timeout_s=10)
    return Wire.read(proxy)


# --------------------------------------------------------------------------------------------
# Realistic events: the data ``edge_agent.findings`` makes from this site's own outcomes


def event_makers(store: StateStore, now: dt.datetime) -> dict[str, Callable[[int], Obj]]:
    """One function per event type: i -> the data of the i-th event of that type, derived
    from the site's real import record, reconcile cycle and status view (varied by i)."""
    cycle = store.last_cycle()
    imports = store.imports()
    check(cycle is not None and bool(imports), "the site has no reconcile cycle or import yet")
    assert cycle is not None
    health = findings.health_data(store.view(), now)
    objects = list(cycle.get("objects") or [])
    fields = ("spec.replicas", "spec.template.spec.containers[0].image", "data.index.html")

    def reconcile(i: int) -> Obj:
        counts = {**cycle["counts"], "unchanged": len(objects) - i % 3, "healed": i % 3}
        line = f"revision {cycle['revision']} · {len(objects)} objects · {i % 3} healed"
        summary = {**cycle, "counts": counts, "line": line, "objects": []}
        return findings.cycle_events(None, summary)[0][1]

    def drift(i: int) -> Obj:
        drifted = [
            {
                "ref": o["ref"],
                "action": "drifted" if (i + k) % 2 else "healed",
                "detail": f"{fields[(i + k) % len(fields)]} differs from the desired state",
            }
            for k, o in enumerate(objects[: 1 + i % len(objects)])
        ]
        summary = {**cycle, "objects": drifted, "counts": {**cycle["counts"], "drifted": 1}}
        return next(data for kind, data in findings.cycle_events(cycle, summary) if kind == "drift")

    def health_event(i: int) -> Obj:
        return {**health, "drift": i % 4, "verdict": "degraded" if i % 4 else health["verdict"]}

    def import_event(i: int) -> Obj:
        record = dict(imports[i % len(imports)])
        return findings.import_data(record, "sync")

    return {"health": health_event, "reconcile": reconcile, "drift": drift, "import": import_event}


def make_events(
    n: int, makers: Mapping[str, Callable[[int], Obj]], now: dt.datetime
) -> list[Event]:
    """``n`` events of the MIX, one a second up to ``now`` (a day offline is 86,400 s)."""
    rng = random.Random(20_261_124)
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    return [
        new_event(kind, makers[kind](i), now - dt.timedelta(seconds=n - i), rng)
        for i, kind in ((i, kinds[i % len(kinds)]) for i in range(n))
    ]


# --------------------------------------------------------------------------------------------
# The run


def progress(text: str) -> None:
    print(f"  {text}", flush=True)


def pin(cpus: list[int], index: int) -> None:
    os.sched_setaffinity(0, {cpus[index]})


def run(args: argparse.Namespace, root: Path) -> Obj:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = len(cpus) >= 2
    if pinned:  # the stub inherits the first CPU; this process moves to the second
        pin(cpus, 0)
    stub = StubProcess.start(root / "stub", extra=("--access-log",))
    if pinned:
        pin(cpus, 1)
    out: Obj = {"pinned": pinned, "cpus": cpus[:2], "events": args.events}
    try:
        with FaultProxy(stub.port) as proxy:
            out.update(measure(args, root, stub, proxy))
    finally:
        stub.stop()
    return out


def measure(args: argparse.Namespace, root: Path, stub: StubProcess, proxy: FaultProxy) -> Obj:
    out: Obj = {}
    log = AccessLog(stub.root / "stub.log")
    stub.put_profile("web", PROFILE)
    site = make_sync_site(
        root / "site", stub, CLUSTER_ID, server=proxy.url, extra_sync=SYNC_SETTINGS
    )
    site.assign("web")
    with site.open_store() as store:
        engine = site.engine(store)
        try:
            progress("enrol, first sync, enforce, deliver its events")
            out["first"] = first_sync(site, store, engine, proxy, log)
            progress(f"{IDLE_CYCLES} idle cycles")
            out["idle"] = idle_cycles(site, store, engine, proxy, log)
            progress(f"{WAITS} long polls of {WAIT_S} s")
            out["wait"] = long_polls(store, proxy, log)
            out["backlog"] = backlog(args, site, store, engine, proxy, log)
        finally:
            engine.close()
    return out


def first_sync(
    site: SyncSite, store: StateStore, engine: SyncEngine, proxy: FaultProxy, log: AccessLog
) -> Obj:
    """Enrol, fetch and commit the bundle, enforce it once, deliver what that queued."""
    before, mark = Wire.read(proxy), log.mark()
    first = engine.cycle()
    check(first.result == "synced" and first.revision is not None, f"first cycle: {first}")
    summary = site.enforce(store)
    check(summary is not None and not summary.get("error"), f"first enforce: {summary}")
    second = engine.cycle()
    check(second.result == "synced" and second.delivered > 0, f"second cycle: {second}")
    check(store.outbox_stats()["count"] == 0, "the outbox is not empty after the first sync")
    wire = settle(proxy, engine) - before
    return {"wire": wire, "requests": log.since(mark), "revision": first.revision}


def idle_cycles(
    site: SyncSite, store: StateStore, engine: SyncEngine, proxy: FaultProxy, log: AccessLog
) -> Obj:
    """IDLE_CYCLES cycles with nothing new, after one unmeasured (so that a kept-alive
    connection, if the client keeps one, is already open)."""
    warm = engine.cycle()
    check(warm.result == "synced" and warm.delivered == 0, f"idle cycle: {warm}")
    before, mark = Wire.read(proxy), log.mark()
    for _ in range(IDLE_CYCLES):
        outcome = engine.cycle()
        check(outcome.result == "synced" and outcome.delivered == 0, f"idle cycle: {outcome}")
    wire = settle(proxy, engine) - before
    requests = log.since(mark)
    expected = {("GET", "/v1/agent/desired", 304): IDLE_CYCLES}
    check(requests == expected, f"idle cycles sent {requests_text(requests)}, not only 304 polls")
    return {"wire": wire, "requests": requests}


def long_polls(store: StateStore, proxy: FaultProxy, log: AccessLog) -> Obj:
    """WAITS long polls in a row on one client, as the engine's waiter sends them."""
    held = store.sync_credential()
    check(held is not None, "no credential after enrolment")
    assert held is not None
    state = store.sync_state()
    etag, actions = state.get("etag"), int(state.get("actions_seq") or 0)
    before, mark = Wire.read(proxy), log.mark()
    started = time.perf_counter()
    with SyncClient(proxy.url, credential=str(held["credential"]), wait_s=WAIT_S) as client:
        for _ in range(WAITS):
            answer = client.wait(etag, actions)
            check(answer is None, f"the long poll saw a change nobody made: {answer}")
    seconds = (time.perf_counter() - started) / WAITS
    proxy.wait_idle(timeout_s=10)
    wire = Wire.read(proxy) - before
    requests = log.since(mark)
    check(
        requests == {("GET", "/v1/agent/wait", 204): WAITS},
        f"long polls sent {requests_text(requests)}, not {WAITS} timed-out waits",
    )
    return {"wire": wire, "requests": requests, "seconds": seconds}


def backlog(
    args: argparse.Namespace,
    site: SyncSite,
    store: StateStore,
    engine: SyncEngine,
    proxy: FaultProxy,
    log: AccessLog,
) -> Obj:
    """The link goes down, events pile up, the link comes back: one cycle delivers them."""
    n = args.events
    out: Obj = {}
    recorded_before = server_count(site.stub, CLUSTER_ID)
    proxy.down()
    offline = engine.cycle()
    check(offline.result == "unreachable", f"cycle with the link down: {offline}")
    progress(f"link down: {offline.detail}")

    started = time.perf_counter()
    events = make_events(n, event_makers(store, site.clock.now()), site.clock.now())
    out["build_s"] = time.perf_counter() - started

    started = time.perf_counter()
    for start in range(0, n, CHUNK_EVENTS):
        store.enqueue(events[start : start + CHUNK_EVENTS])
    out["enqueue_s"] = time.perf_counter() - started
    stats = store.outbox_stats()
    check(
        stats["count"] == n and not stats["dropped"] and not stats["coalesced"],
        f"queued {stats['count']} of {n} events (dropped {stats['dropped']}, "
        f"coalesced {stats['coalesced']})",
    )
    progress(f"queued {n:,} events in {out['enqueue_s']:.2f} s (built in {out['build_s']:.2f} s)")
    out["event_json_bytes"] = int(stats["bytes"])
    out["types"] = dict(Counter(e.type for e in events))
    del events

    proxy.pass_()
    site.ticker.advance(offline.next_in_s + 1)
    progress("link up: one cycle delivers the outbox")
    before, mark = Wire.read(proxy), log.mark()
    stub_cpu, own_cpu = proc_cpu_s(site.stub.process.pid), self_cpu_s()
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    outcome = engine.cycle()
    if profiler is not None:
        profiler.disable()
    out["deliver_s"] = time.perf_counter() - started
    out["stub_cpu_s"] = proc_cpu_s(site.stub.process.pid) - stub_cpu
    out["agent_cpu_s"] = self_cpu_s() - own_cpu
    out["wire"] = settle(proxy, engine) - before
    out["requests"] = log.since(mark)
    progress(
        f"cycle: {outcome.result}, {outcome.delivered:,} delivered in {out['deliver_s']:.2f} s"
    )
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        out["profile"] = text.getvalue()

    check(outcome.result == "synced", f"cycle after the link came back: {outcome}")
    check(outcome.delivered == n, f"the cycle delivered {outcome.delivered} of {n} events")
    left = store.outbox_stats()["count"]
    check(left == 0, f"{left} events are still queued after delivery")
    recorded = server_count(site.stub, CLUSTER_ID) - recorded_before
    check(recorded == n, f"the stub recorded {recorded} of the {n} events delivered")
    out["recorded"] = recorded
    return out


# --------------------------------------------------------------------------------------------
# Figures, verdicts, the document


def figures(out: Obj) -> Obj:
    b, idle, wait = out["backlog"], out["idle"]["wire"], out["wait"]["wire"]
    n = out["events"]
    posts = b["requests"].get(("POST", "/v1/agent/events", 200), 0)
    cycle_up, cycle_down = idle.up / IDLE_CYCLES, idle.down / IDLE_CYCLES
    wait_up, wait_down = wait.up / WAITS, wait.down / WAITS
    return {
        "n": n,
        "deliver_s": b["deliver_s"],
        "enqueue_s": b["enqueue_s"],
        "ratio": b["deliver_s"] / b["enqueue_s"],
        "rate": n / b["deliver_s"],
        "enqueue_rate": n / b["enqueue_s"],
        "avg_event_bytes": b["event_json_bytes"] / n,
        "event_json_bytes": b["event_json_bytes"],
        "up": b["wire"].up,
        "down": b["wire"].down,
        "connections": b["wire"].connections,
        "posts": posts,
        "requests": sum(b["requests"].values()),
        "min_posts": math.ceil(n / BATCH_MAX_EVENTS),
        "overhead": b["wire"].up / b["event_json_bytes"] - 1,
        "stub_cpu_s": b["stub_cpu_s"],
        "agent_cpu_s": b["agent_cpu_s"],
        "cycle_up": cycle_up,
        "cycle_down": cycle_down,
        "cycle": cycle_up + cycle_down,
        "cycle_connections": idle.connections / IDLE_CYCLES,
        "wait_up": wait_up,
        "wait_down": wait_down,
        "wait": wait_up + wait_down,
        "wait_connections": wait.connections / WAITS,
        "idle": cycle_up + cycle_down + wait_up + wait_down,
        "wait_s": out["wait"]["seconds"],
        "default_wait_extra": len("55") - len(str(WAIT_S)),
    }


def verdicts(f: Obj) -> list[tuple[str, str]]:
    target_n = f["n"] >= FULL_EVENTS
    deliver_ok = f["deliver_s"] < TARGET_DELIVERY_S
    idle_ok = f["idle"] <= TARGET_IDLE_BYTES
    deliver = (
        f"{f['n']:,} queued events delivered after reconnect in {f['deliver_s']:.1f} s "
        f"(target < {TARGET_DELIVERY_S:.0f} s for {FULL_EVENTS:,})"
    )
    idle = (
        f"bytes per idle sync cycle: {f['idle']:,.0f} B with the long poll, {f['cycle']:,.0f} B "
        f"the cycle alone (target <= {TARGET_IDLE_BYTES:,} B)"
    )
    if not target_n:
        deliver_status = "info (not the target's size)"
    else:
        deliver_status = "PASS" if deliver_ok else "FAIL"
    return [(deliver_status, deliver), ("PASS" if idle_ok else "FAIL", idle)]


def table(f: Obj) -> str:
    rows = [
        ("measurement", "value"),
        ("events queued (health/reconcile/drift/import)", f"{f['n']:,}"),
        ("average event size (compact JSON)", f"{f['avg_event_bytes']:.0f} B"),
        ("**baseline**: enqueue into the state store", f"{f['enqueue_s']:.2f} s"),
        ("enqueue rate", f"{f['enqueue_rate']:,.0f} events/s"),
        ("**delivery after reconnect** (one `engine.cycle()`)", f"**{f['deliver_s']:.2f} s**"),
        ("delivery rate", f"{f['rate']:,.0f} events/s"),
        ("delivery time / enqueue time", f"{f['ratio']:.2f}x"),
        ("bytes agent to stub", f"{f['up']:,} B ({f['up'] / f['n']:.0f} B/event)"),
        ("bytes stub to agent", f"{f['down']:,} B"),
        ("framing over the event JSON, upstream", f"{100 * f['overhead']:.1f}%"),
        ("HTTP requests", f"{f['requests']} ({f['posts']} POST batches; {f['min_posts']} at least)"),
        ("TCP connections opened", f"{f['connections']}"),
        ("agent CPU / stub CPU during delivery", f"{f['agent_cpu_s']:.1f} s / {f['stub_cpu_s']:.1f} s"),
        ("**idle cycle**: 304 poll, request + response", f"{f['cycle_up']:.0f} + {f['cycle_down']:.0f} = **{f['cycle']:.0f} B**"),
        ("long poll timing out (204), request + response", f"{f['wait_up']:.0f} + {f['wait_down']:.0f} = {f['wait']:.0f} B"),
        ("**idle cycle + long poll**", f"**{f['idle']:.0f} B**"),
        ("TCP connections opened per idle cycle / per long poll", f"{f['cycle_connections']:.0f} / {f['wait_connections']:.0f}"),
    ]  # fmt: skip
    lines = [f"| {rows[0][0]} | {rows[0][1]} |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in rows[1:]]
    return "\n".join(lines)


def plain(text: str) -> str:
    return text.replace("**", "").replace("`", "")


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    parts = ", ".join(f"{name} {version(name)}" for name in ("httpx", "diskcache", "uvicorn"))
    return (
        f"{model}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {parts}"
    )


def section(out: Obj, f: Obj, command: str, facts: str) -> str:
    verdict_lines = "\n".join(f"- **{status}** {text}" for status, text in verdicts(f))
    b = out["backlog"]
    types = ", ".join(f"{kind} {count:,}" for kind, count in b["types"].items())
    pinning = (
        f"the stub pinned to CPU {out['cpus'][0]}, the agent (and the proxy thread) to CPU "
        f"{out['cpus'][1]}"
        if out["pinned"]
        else "not pinned (fewer than 2 CPUs or no `sched_setaffinity`)"
    )
    return f"""{BEGIN}

## Sync engine against the stub: a backlog after an outage, bytes per idle cycle

The agent's real `SyncEngine` (in-process, clocks injected: backoff is moved, never slept)
against `mgmt-stub serve` as a real process on 127.0.0.1, through `tests/faultproxy.py`, a
TCP proxy that counts the HTTP bytes each way and the connections; requests are counted by
the stub's access log; {pinning}. Reproduce with:

```sh
{command}
```

Machine: {facts}.

Verdicts:

{verdict_lines}

{table(f)}

Notes:
- **Scenario**: the site enrols, fetches and commits `bundles/hello-web`, enforces it and
  delivers what that queued; the proxy goes down and one cycle fails (the engine backs
  off); {f["n"]:,} events ({types}) are queued with `StateStore.enqueue`, {CHUNK_EVENTS:,}
  per call, one a second of event time; the proxy comes back, the backoff clock is moved
  past the wait, and one `engine.cycle()` (the recovery probe) delivers the whole outbox
  in batches of up to {BATCH_MAX_EVENTS:,} events / {BATCH_MAX_BYTES:,} B. Checked after it:
  the outbox is empty and the stub's database holds all {b["recorded"]:,} events.
- The event data is what `edge_agent/findings.py` makes from this site's own import record,
  reconcile cycle and status view, varied per event (counts, drifted objects, verdict).
- **Baseline**: the enqueue time alone (the events are built before it, in
  {b["build_s"]:.2f} s, not counted). Each enqueue and each acknowledgement is a diskcache
  (SQLite, `synchronous=FULL`, WAL) transaction; the stub commits each batch with
  `synchronous=FULL` too.
- Delivery time is the whole cycle: the recovery probe's conditional `GET /v1/agent/desired`,
  then read batch, POST, acknowledge, until the outbox is empty. "agent CPU" is this
  process (engine, state store and the proxy thread); "stub CPU" the server process.
- **Bytes** are HTTP/1.1 bytes as forwarded by the proxy; TCP/IP headers (and TLS, on a
  real link) come on top. The idle cycle was measured {IDLE_CYCLES} times in a row after one
  unmeasured cycle, the long poll {WAITS} times on one client; figures are per cycle. The
  long poll asked `timeout={WAIT_S}` ({f["wait_s"]:.1f} s each); the agent's default
  `wait_s: 55` makes the request {f["default_wait_extra"]} B longer, nothing else.
{reconnect_note(f)}
{END}
"""


def reconnect_note(f: Obj) -> str:
    """A measured fact worth a line of its own: idle requests that reconnect each time."""
    if f["cycle_connections"] < 1 and f["wait_connections"] < 1:
        return ""
    return (
        f"- **Connections**: each idle cycle opened {f['cycle_connections']:.0f} and each long "
        f"poll {f['wait_connections']:.0f} new TCP connection(s): the agent's client does not\n"
        "  keep the connection after a 304 or a 204 (it closes the streamed response without\n"
        "  reading its empty body). Not in the byte counts above: TCP handshakes, and on an\n"
        "  HTTPS link a TLS handshake per connection.\n"
    )


def report_stdout(out: Obj, f: Obj, facts: str) -> None:
    b = out["backlog"]
    print()
    print(plain(table(f)))
    print()
    print(f"requests during delivery: {requests_text(b['requests'])}")
    print(f"requests per idle cycle x{IDLE_CYCLES}: {requests_text(out['idle']['requests'])}")
    print(f"long polls x{WAITS}: {requests_text(out['wait']['requests'])}")
    print(f"first sync (enrol, bundle, deliver): {requests_text(out['first']['requests'])}")
    print(f"  {out['first']['wire'].up:,} B up, {out['first']['wire'].down:,} B down")
    print(f"server recorded {b['recorded']:,} of {f['n']:,} events; outbox empty")
    note = reconnect_note(f)
    if note:
        print(plain(" ".join(note.removeprefix("- ").split())))
    if not out["pinned"]:
        print("not pinned to CPUs (fewer than 2 CPUs or no sched_setaffinity)")
    print()
    for status, text in verdicts(f):
        print(f"{status} {text}")
    print(f"machine: {facts}")
    if "profile" in b:
        print()
        print(b["profile"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events", type=int, help=f"events queued while offline (default {FULL_EVENTS:,})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: {QUICK_EVENTS:,} events by default"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the delivery cycle and print the top"
    )
    parser.add_argument(
        "--write-doc", action="store_true", help=f"update its section in {DOC.relative_to(REPO)}"
    )
    args = parser.parse_args()
    # The engine logs the outage it is put through on purpose; its errors still show.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    given = args.events is not None
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else FULL_EVENTS
    if args.events < 1:
        parser.error("--events must be at least 1")
    command = " ".join(
        [".venv/bin/python scripts/bench_sync.py"]
        + (["--quick"] if args.quick else [])
        + ([f"--events {args.events}"] if given else [])
        + ["--write-doc"]
    )
    root = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    print(f"bench_sync: {args.events:,} events; working in {root}", flush=True)
    started = time.perf_counter()
    try:
        out = run(args, root)
    except (RunBroken, TimeoutError) as exc:
        log = root / "stub" / "stub.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        print(f"bench_sync: a correctness check failed: {exc}\n{tail}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    f = figures(out)
    facts = machine()
    report_stdout(out, f, facts)
    print(f"run took {time.perf_counter() - started:.0f} s")
    if args.write_doc:
        replace_section(BEGIN, END, section(out, f, command, facts))
        print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
