"""The management stub under agent load, as a real process on loopback.

Usage: .venv/bin/python scripts/bench_stub.py [--agents 50000] [--duration 20]
       [--levels 25000,50000,...] [--idle-connections 10000] [--waiters 1000] [--quick]
       [--write-doc]

``mgmt-stub serve`` runs as its own process (``tests/stub_process.StubProcess``), pinned to
CPU 0 with a raised RLIMIT_NOFILE; this script is the load generator, pinned to CPU 1. After
setup (a profile, an assignment for label ``fleet=bench``, one bootstrap token) it measures:

1. **enrollment**: ``--agents`` clusters enrolled through ``POST /v1/enroll``, each getting
   its own credential, 32 requests in flight;
2. **bytes on the wire** of one idle agent cycle, counted by a TCP proxy between an httpx
   client (the agent's HTTP library, its default headers) and the stub: an unchanged
   ``GET /v1/agent/desired`` answered 304 plus a ``GET /v1/agent/wait`` that times out;
3. **polling load**: each simulated agent, once per 60 s cycle, sends
   ``GET /v1/agent/desired`` with ``If-None-Match`` (304) and then ``POST /v1/agent/events``
   (a health and a reconcile event) with its own credential. A level of N agents is offered
   open-loop at N/60 cycles per second for ``--duration`` seconds (the same request rate as
   N agents on a 60 s cycle, over a shorter window); latency counts from the moment a cycle
   was due, so a queue in the generator is charged to the stub, never hidden. Levels rise
   until p99 >= 100 ms or the achieved rate falls short; each generator runs the ladder:
   ``httpx.AsyncClient`` (what an agent uses) and a raw asyncio HTTP/1.1 client (to tell the
   stub's limit from httpx's own CPU cost). Both share a keep-alive pool of ``--pool``
   connections; one connection per agent is phase 5's subject, not this one's;
4. **propagation**: ``--waiters`` agents wait on ``/v1/agent/wait`` with their current ETag;
   an operator PUTs a changed profile (a new bundle is built and every enrolled cluster moves
   to it); timed from the PUT to the last waiter's answer and to the last agent holding the
   new bundle (its ``GET /v1/agent/desired`` answered 200);
5. **idle connections**: ``--idle-connections`` agents hold a ``/v1/agent/wait?...
   timeout=300`` each at once; the stub's VmRSS/VmHWM (from /proc) with them held, and its
   latency on other requests before and while they are held.

Benchmarks are measurements, not tests: the exit status is 0 whether or not a target is met,
and 1 only when the run itself broke (a request failed, the stub died). ``--write-doc``
replaces the text between this script's markers in docs/benchmarks.md, or appends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from benchdoc import DOC, replace_section  # noqa: E402
from benchproc import proc_cpu_s, self_cpu_s  # noqa: E402

from tests.stub_process import StubProcess, profile_body  # noqa: E402

BEGIN = "<!-- bench_stub:begin -->"
END = "<!-- bench_stub:end -->"
PROFILE = REPO / "bundles" / "hello-web"
CYCLE_S = 60
TARGET_AGENTS = 50_000
TARGET_P99_MS = 100.0
TARGET_IDLE_BYTES = 1024
TARGET_IDLE_CONNECTIONS = 10_000
TARGET_PROPAGATION_S = 5.0
WAIT_TIMEOUT_S = 300
FULL = {
    "agents": 50_000,
    "duration": 20.0,
    "levels": "5000,10000,15000,20000,25000,30000,40000,50000,75000,100000,150000",
    "poll_levels": "50000,100000,150000,200000,300000,400000",
    "idle_connections": 10_000,
    "waiters": 1_000,
    "wait_probe_s": 2,
}
QUICK = {
    "agents": 300,
    "duration": 2.0,
    "levels": "3000",
    "poll_levels": "6000",
    "idle_connections": 200,
    "waiters": 50,
    "wait_probe_s": 1,
}
Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: pre-built request bytes, a minimal response parser, byte counts


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Http1:
    """One keep-alive HTTP/1.1 connection; answers with a Content-Length body or none."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, local_ip: str | None = None) -> Http1:
        local = (local_ip, 0) if local_ip else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self) -> Reply:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise RuntimeError("chunked responses are not expected from the stub")
        length = 0 if status in (204, 304) else int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return Reply(status, headers, body)

    async def request(self, data: bytes) -> Reply:
        self.send(data)
        return await self.receive()

    def close(self) -> None:
        self.writer.close()


def agent_headers() -> list[tuple[str, str]]:
    """The headers httpx sends by default (Host is added per request): an agent's headers."""
    return [(k, v) for k, v in httpx.Client().headers.items() if k.lower() != "host"]


def build_request(
    method: str, target: str, port: int, headers: list[tuple[str, str]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------------------------
# Measurement helpers


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM etc. of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm"):
            out[key] = int(value.split()[0])
    return out


class CpuMeter:
    """CPU share (1.0 = one core) of the stub and of this process over a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall, self.server, self.me = time.perf_counter(), proc_cpu_s(pid), self_cpu_s()

    def read(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        return (proc_cpu_s(self.pid) - self.server) / wall, (self_cpu_s() - self.me) / wall


def now_z() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Agent:
    cluster_id: str
    credential: str


@dataclass
class Fleet:
    stub: StubProcess
    admin: httpx.AsyncClient
    agents: list[Agent] = field(default_factory=list)
    etag: str = ""
    revision: int = 0
    bundle_bytes: int = 0

    @property
    def port(self) -> int:
        return self.stub.port

    @property
    def pid(self) -> int:
        return self.stub.process.pid

    async def waiting(self) -> int:
        response = await self.admin.get("/v1/admin/stats")
        response.raise_for_status()
        return int(response.json()["waiting_agents"])


async def gather_limited(count: int, limit: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(i)`` for i in range(count), at most ``limit`` at a time."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await job(i)

    await asyncio.gather(*(worker() for _ in range(min(limit, count))))


async def poll_until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


# --------------------------------------------------------------------------------------------
# 1. Setup and enrollment


async def setup(fleet: Fleet) -> None:
    admin = fleet.admin
    (await admin.put("/v1/admin/profiles/bench", json=profile_body(PROFILE))).raise_for_status()
    assignment = {"profile": "bench", "selector": {"labels": {"fleet": "bench"}}}
    (await admin.put("/v1/admin/assignments/bench", json=assignment)).raise_for_status()


async def enroll(fleet: Fleet, n: int, concurrency: int = 32) -> Obj:
    tokens = []
    for start in range(0, n, 100_000):
        uses = min(100_000, n - start)
        response = await fleet.admin.post("/v1/admin/tokens", json={"uses": uses, "ttl_s": 86400})
        response.raise_for_status()
        tokens.extend([response.json()["token"]] * uses)
    agents: list[Agent | None] = [None] * n
    headers = [*agent_headers(), ("Content-Type", "application/json")]
    conns = [await Http1.open(fleet.port) for _ in range(concurrency)]
    pool: asyncio.Queue[Http1] = asyncio.Queue()
    for conn in conns:
        pool.put_nowait(conn)

    async def one(i: int) -> None:
        cluster_id = f"bench-{i:06d}"
        body = json.dumps({"cluster_id": cluster_id, "labels": {"fleet": "bench"}}).encode()
        data = build_request(
            "POST",
            "/v1/enroll",
            fleet.port,
            [*headers, ("Authorization", f"Bearer {tokens[i]}")],
            body,
        )
        conn = await pool.get()
        try:
            reply = await conn.request(data)
        finally:
            pool.put_nowait(conn)
        if reply.status != 201:
            raise RuntimeError(f"enroll {cluster_id}: HTTP {reply.status} {reply.body[:200]!r}")
        agents[i] = Agent(cluster_id, json.loads(reply.body)["credential"])

    meter = CpuMeter(fleet.pid)
    start = time.perf_counter()
    await gather_limited(n, concurrency, one)
    seconds = time.perf_counter() - start
    server_cpu, gen_cpu = meter.read()
    for conn in conns:
        conn.close()
    fleet.agents = [a for a in agents if a is not None]
    first = await httpx_agent(fleet, 0).get("/v1/agent/desired")
    if first.status_code != 200:
        raise RuntimeError(f"first agent's desired state: HTTP {first.status_code}")
    fleet.etag = first.headers["etag"]
    fleet.revision = int(first.headers["x-edge-revision"])
    fleet.bundle_bytes = len(first.content)
    return {
        "agents": n,
        "credential_chars": len(fleet.agents[0].credential),
        "seconds": seconds,
        "rate": n / seconds,
        "server_cpu": server_cpu,
        "gen_cpu": gen_cpu,
        "concurrency": concurrency,
        "rss_kb": proc_status(fleet.pid)["VmRSS"],
    }


def httpx_agent(fleet: Fleet, i: int, base: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base or fleet.stub.url,
        headers={"Authorization": f"Bearer {fleet.agents[i].credential}"},
        timeout=60,
    )


# --------------------------------------------------------------------------------------------
# 2. Bytes on the wire


class CountingProxy:
    """A TCP proxy that counts the bytes each way (client to server = up)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = self.down = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def take(self) -> tuple[int, int]:
        counts = (self.up, self.down)
        self.up = self.down = 0
        return counts

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def wire_bytes(fleet: Fleet, probe_timeout_s: int) -> Obj:
    proxy = CountingProxy(fleet.port)
    port = await proxy.start()
    exchanges: dict[str, tuple[int, int]] = {}
    quoted = urllib.parse.quote(fleet.etag)
    async with httpx_agent(fleet, 0, base=f"http://127.0.0.1:{port}") as client:
        full = await client.get("/v1/agent/desired")
        assert full.status_code == 200, full.status_code
        exchanges["full"] = proxy.take()
        poll = await client.get("/v1/agent/desired", headers={"If-None-Match": fleet.etag})
        assert poll.status_code == 304, poll.status_code
        exchanges["poll"] = proxy.take()
        wait = await client.get(f"/v1/agent/wait?etag={quoted}&actions=0&timeout={probe_timeout_s}")
        assert wait.status_code == 204, wait.text  # timed out with nothing changed
        up, down = proxy.take()
        # The same request with timeout=300 is longer by the extra digits, nothing else.
        exchanges["wait"] = (up + len(str(WAIT_TIMEOUT_S)) - len(str(probe_timeout_s)), down)
        events = await client.post("/v1/agent/events", json=event_batch("wire", 1))
        assert events.status_code == 200, events.text
        exchanges["events"] = proxy.take()
    proxy.close()
    idle = sum(exchanges["poll"]) + sum(exchanges["wait"])
    return {
        "exchanges": exchanges,
        "idle_cycle": idle,
        "full_fetch": sum(exchanges["full"]),
        "bundle_bytes": fleet.bundle_bytes,
        "probe_timeout_s": probe_timeout_s,
    }


def event_batch(tag: str, revision: int) -> Obj:
    at = now_z()
    return {
        "events": [
            {
                "id": f"{tag}-health",
                "type": "health",
                "time": at,
                "data": {
                    "verdict": "healthy",
                    "revision": revision,
                    "drift": 0,
                    "summary": "12 objects in sync",
                },
            },
            {
                "id": f"{tag}-reconcile",
                "type": "reconcile",
                "time": at,
                "data": {"created": 0, "updated": 0, "unchanged": 12, "failed": 0, "ms": 41},
            },
        ]
    }


# --------------------------------------------------------------------------------------------
# 3. Polling load: open-loop cycles at N/60 per second


@dataclass
class LevelResult:
    generator: str
    agents: int
    offered_rps: float
    achieved_rps: float = 0.0
    get_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    server_cpu: float = 0.0
    gen_cpu: float = 0.0
    unfinished: int = 0

    @property
    def all_ms(self) -> list[float]:
        return self.get_ms + self.post_ms

    @property
    def ok(self) -> bool:
        return (
            self.errors == 0
            and self.unfinished == 0
            and percentile(self.all_ms, 99) < TARGET_P99_MS
            and self.achieved_rps >= 0.95 * self.offered_rps
        )

    def summary(self) -> Obj:
        return {
            "generator": self.generator,
            "agents": self.agents,
            "offered_rps": self.offered_rps,
            "achieved_rps": self.achieved_rps,
            "get_p50": percentile(self.get_ms, 50),
            "get_p99": percentile(self.get_ms, 99),
            "post_p50": percentile(self.post_ms, 50),
            "post_p99": percentile(self.post_ms, 99),
            "p50": percentile(self.all_ms, 50),
            "p99": percentile(self.all_ms, 99),
            "requests": len(self.all_ms),
            "errors": self.errors,
            "first_error": self.first_error,
            "unfinished": self.unfinished,
            "server_cpu": self.server_cpu,
            "gen_cpu": self.gen_cpu,
            "ok": self.ok,
        }


Cycle = Callable[[int, float, LevelResult], Awaitable[None]]


async def open_loop(
    fleet: Fleet, result: LevelResult, duration_s: float, cycle: Cycle, grace_s: float = 5.0
) -> None:
    """Start cycle i at t0 + i / rate whatever the stub's state; wait for all of them."""
    rate = result.agents / CYCLE_S
    total = max(1, int(rate * duration_s))
    tasks: list[asyncio.Task[None]] = []
    meter = CpuMeter(fleet.pid)
    clock = time.perf_counter  # loop.time() under uvloop has millisecond steps
    t0 = clock() + 0.02
    i = 0
    while i < total:
        now = clock()
        while i < total and t0 + i / rate <= now:
            tasks.append(asyncio.create_task(cycle(i, t0 + i / rate, result)))
            i += 1
        await asyncio.sleep(0.001)
    _, pending = await asyncio.wait(tasks, timeout=grace_s + duration_s)
    elapsed = clock() - t0
    result.server_cpu, result.gen_cpu = meter.read()
    result.unfinished = len(pending)
    for task in pending:
        task.cancel()
    result.achieved_rps = len(result.all_ms) / max(elapsed, duration_s)


async def run_raw_level(
    fleet: Fleet, level: int, n: int, duration_s: float, pool_size: int, events: bool = True
) -> Obj:
    name = "raw asyncio HTTP/1.1" if events else "raw, 304 polls only (no events)"
    result = LevelResult(name, n, (2 if events else 1) * n / CYCLE_S)
    headers = agent_headers()
    polls = [
        build_request(
            "GET",
            "/v1/agent/desired",
            fleet.port,
            [*headers, ("Authorization", f"Bearer {a.credential}"), ("If-None-Match", fleet.etag)],
        )
        for a in fleet.agents
    ]
    post_headers = [*headers, ("Content-Type", "application/json")]
    pool: asyncio.Queue[Http1] = asyncio.Queue()
    conns = [await Http1.open(fleet.port) for _ in range(pool_size)]
    for conn in conns:
        pool.put_nowait(conn)

    async def cycle(i: int, due: float, out: LevelResult) -> None:
        index = i % len(fleet.agents)
        agent = fleet.agents[index]
        body = json.dumps(event_batch(f"l{level}-c{i}", fleet.revision)).encode()
        post = build_request(
            "POST",
            "/v1/agent/events",
            fleet.port,
            [*post_headers, ("Authorization", f"Bearer {agent.credential}")],
            body,
        )
        conn = await pool.get()
        # A poll-only cycle returns early from the try: the finally gives the connection back.
        try:
            reply = await conn.request(polls[index])
            got = time.perf_counter()
            if reply.status != 304:
                raise RuntimeError(f"poll: HTTP {reply.status}")
            out.get_ms.append(1000 * (got - due))
            if not events:
                return
            reply = await conn.request(post)
            if reply.status != 200:
                raise RuntimeError(f"events: HTTP {reply.status} {reply.body[:200]!r}")
            out.post_ms.append(1000 * (time.perf_counter() - got))
        except (RuntimeError, OSError, asyncio.IncompleteReadError) as exc:
            out.errors += 1
            out.first_error = out.first_error or str(exc)
            conn.close()
            conn = await Http1.open(fleet.port)
            conns.append(conn)
        finally:
            pool.put_nowait(conn)

    await open_loop(fleet, result, duration_s, cycle)
    for conn in conns:
        conn.close()
    return result.summary()


async def run_httpx_level(
    fleet: Fleet, level: int, n: int, duration_s: float, pool_size: int
) -> Obj:
    result = LevelResult("httpx.AsyncClient", n, 2 * n / CYCLE_S)
    limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
    timeout = httpx.Timeout(60, pool=None)
    async with httpx.AsyncClient(base_url=fleet.stub.url, limits=limits, timeout=timeout) as client:

        async def cycle(i: int, due: float, out: LevelResult) -> None:
            agent = fleet.agents[i % len(fleet.agents)]
            auth = {"Authorization": f"Bearer {agent.credential}"}
            try:
                reply = await client.get(
                    "/v1/agent/desired", headers={**auth, "If-None-Match": fleet.etag}
                )
                got = time.perf_counter()
                if reply.status_code != 304:
                    raise RuntimeError(f"poll: HTTP {reply.status_code}")
                out.get_ms.append(1000 * (got - due))
                reply = await client.post(
                    "/v1/agent/events",
                    headers=auth,
                    json=event_batch(f"h{level}-c{i}", fleet.revision),
                )
                if reply.status_code != 200:
                    raise RuntimeError(f"events: HTTP {reply.status_code} {reply.text[:200]}")
                out.post_ms.append(1000 * (time.perf_counter() - got))
            except (RuntimeError, httpx.HTTPError) as exc:
                out.errors += 1
                out.first_error = out.first_error or str(exc)

        await open_loop(fleet, result, duration_s, cycle)
    return result.summary()


async def run_poll_level(
    fleet: Fleet, level: int, n: int, duration_s: float, pool_size: int
) -> Obj:
    return await run_raw_level(fleet, level, n, duration_s, pool_size, events=False)


async def warm_up(fleet: Fleet, concurrency: int) -> Obj:
    """Every agent's first poll after the stub started (its credential not yet cached), as
    fast as ``concurrency`` connections go: the cold start; the ladder then runs warm."""
    headers = agent_headers()
    conns = [await Http1.open(fleet.port) for _ in range(concurrency)]
    pool: asyncio.Queue[Http1] = asyncio.Queue()
    for conn in conns:
        pool.put_nowait(conn)
    times: list[float] = []
    resets = 0

    async def one(i: int) -> None:
        auth = ("Authorization", f"Bearer {fleet.agents[i].credential}")
        data = build_request(
            "GET", "/v1/agent/desired", fleet.port, [*headers, auth, ("If-None-Match", fleet.etag)]
        )
        nonlocal resets
        conn = await pool.get()
        start = time.perf_counter()
        try:
            reply = await conn.request(data)
        except (OSError, asyncio.IncompleteReadError):  # the stub dropped the connection
            resets += 1
            conn.close()
            conn = await Http1.open(fleet.port)
            start = time.perf_counter()
            reply = await conn.request(data)
        finally:
            pool.put_nowait(conn)
        times.append(1000 * (time.perf_counter() - start))
        if reply.status != 304:
            raise RuntimeError(f"first poll of {fleet.agents[i].cluster_id}: HTTP {reply.status}")

    meter = CpuMeter(fleet.pid)
    start = time.perf_counter()
    await gather_limited(len(fleet.agents), concurrency, one)
    seconds = time.perf_counter() - start
    server_cpu, _ = meter.read()
    for conn in conns:
        conn.close()
    await settle(fleet)
    return {
        "agents": len(fleet.agents),
        "seconds": seconds,
        "rate": len(fleet.agents) / seconds,
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "server_cpu": server_cpu,
        "concurrency": concurrency,
        "resets": resets,
    }


async def load_ladder(
    fleet: Fleet, levels: list[int], poll_levels: list[int], duration_s: float, pool_size: int
) -> list[Obj]:
    results = []
    for run, ladder in (
        (run_httpx_level, levels),
        (run_raw_level, levels),
        (run_poll_level, poll_levels),
    ):
        for index, n in enumerate(ladder):
            summary = await run(fleet, index, n, duration_s, pool_size)
            results.append(summary)
            print(
                f"  {summary['generator']}: {n:,} agents, {summary['achieved_rps']:.0f}/"
                f"{summary['offered_rps']:.0f} req/s, p50 {summary['p50']:.1f} ms, "
                f"p99 {summary['p99']:.1f} ms, errors {summary['errors']}, "
                f"stub CPU {100 * summary['server_cpu']:.0f}%, "
                f"generator CPU {100 * summary['gen_cpu']:.0f}%",
                flush=True,
            )
            await settle(fleet)
            if not summary["ok"]:
                break
    return results


# --------------------------------------------------------------------------------------------
# 4. Propagation of a profile change to waiting agents


async def settle(fleet: Fleet, timeout_s: float = 60) -> None:
    """Wait until the stub has worked off a level's backlog: /healthz answers in < 5 ms."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=fleet.stub.url, timeout=60) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await client.get("/healthz")
            if time.perf_counter() - start < 0.005:
                break
            await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # and its 1 s tick has flushed the last-seen times


def changed_profile(nonce: str) -> Obj:
    body = profile_body(PROFILE)
    marker = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-marker\n"
        f"  namespace: hello-web\ndata:\n  nonce: {nonce!r}\n"
    )
    body["layers"][-1]["manifests"]["zz-bench-marker.yaml"] = marker
    return body


async def propagation(fleet: Fleet, waiters: int) -> Obj:
    headers = agent_headers()
    old_etag = fleet.etag
    quoted = urllib.parse.quote(old_etag)
    conns: list[Http1 | None] = [None] * waiters
    answered: list[float] = []
    fetched: list[float] = []
    problems: list[str] = []
    t_put = 0.0
    new_etags: set[str] = set()

    async def connect(i: int) -> None:
        conn = await Http1.open(fleet.port)
        auth = ("Authorization", f"Bearer {fleet.agents[i].credential}")
        conn.send(
            build_request(
                "GET",
                f"/v1/agent/wait?etag={quoted}&actions=0&timeout={WAIT_TIMEOUT_S}",
                fleet.port,
                [*headers, auth],
            )
        )
        conns[i] = conn

    async def waiter(i: int) -> None:
        conn = conns[i]
        assert conn is not None
        reply = await conn.receive()
        answered.append(time.perf_counter() - t_put)
        doc = json.loads(reply.body)
        if reply.status != 200 or not doc["changed"]:
            problems.append(f"wait answered {reply.status} {doc}")
            return
        new_etags.add(doc["etag"])
        auth = ("Authorization", f"Bearer {fleet.agents[i].credential}")
        reply = await conn.request(
            build_request(
                "GET",
                "/v1/agent/desired",
                fleet.port,
                [*headers, auth, ("If-None-Match", old_etag)],
            )
        )
        fetched.append(time.perf_counter() - t_put)
        if reply.status != 200 or reply.headers.get(b"etag", b"").decode() != doc["etag"]:
            problems.append(f"desired answered {reply.status}")

    await gather_limited(waiters, 200, connect)
    all_waiting = await poll_until(lambda: _at_least(fleet, waiters), 60)
    tasks = [asyncio.create_task(waiter(i)) for i in range(waiters)]
    await asyncio.sleep(0.2)
    t_put = time.perf_counter()
    response = await fleet.admin.put("/v1/admin/profiles/bench", json=changed_profile(now_z()))
    put_s = time.perf_counter() - t_put
    response.raise_for_status()
    await asyncio.wait(tasks, timeout=120)
    for conn in conns:
        if conn is not None:
            conn.close()
    first = await httpx_agent(fleet, 0).get("/v1/agent/desired")
    fleet.etag = first.headers["etag"]
    fleet.revision = int(first.headers["x-edge-revision"])
    return {
        "waiters": waiters,
        "fleet": len(fleet.agents),
        "all_waiting": all_waiting,
        "put_s": put_s,
        "answered": len(answered),
        "fetched": len(fetched),
        "wait_p50_s": percentile(answered, 50),
        "wait_last_s": max(answered, default=float("nan")),
        "fetch_p50_s": percentile(fetched, 50),
        "fetch_last_s": max(fetched, default=float("nan")),
        "problems": problems[:3],
        "new_etags": len(new_etags),
        "bundle_bytes": len(first.content),
    }


async def _at_least(fleet: Fleet, n: int) -> bool:
    return await fleet.waiting() >= n


# --------------------------------------------------------------------------------------------
# 5. Idle notification connections


async def probe(fleet: Fleet, count: int) -> Obj:
    """Latency of ``count`` 304 polls and ``count`` /healthz, one at a time, one connection."""
    conn = await Http1.open(fleet.port)
    headers = agent_headers()
    auth = ("Authorization", f"Bearer {fleet.agents[-1].credential}")
    poll = build_request(
        "GET", "/v1/agent/desired", fleet.port, [*headers, auth, ("If-None-Match", fleet.etag)]
    )
    health = build_request("GET", "/healthz", fleet.port, headers)
    polls, healths = [], []
    for _ in range(count):
        start = time.perf_counter()
        assert (await conn.request(poll)).status == 304
        middle = time.perf_counter()
        assert (await conn.request(health)).status == 200
        polls.append(1000 * (middle - start))
        healths.append(1000 * (time.perf_counter() - middle))
    conn.close()
    return {
        "poll_p50": percentile(polls, 50),
        "poll_p99": percentile(polls, 99),
        "health_p50": percentile(healths, 50),
        "health_p99": percentile(healths, 99),
    }


async def idle_connections(fleet: Fleet, n: int) -> Obj:
    headers = agent_headers()
    quoted = urllib.parse.quote(fleet.etag)
    n = min(n, len(fleet.agents))
    before = proc_status(fleet.pid)
    probe_before = await probe(fleet, 200)
    waiting_before = await fleet.waiting()
    conns: list[Http1] = []
    failures: list[str] = []

    async def connect(i: int) -> None:
        # Source addresses 127.0.0.2... spread the connections over more ephemeral ports.
        try:
            conn = await Http1.open(fleet.port, local_ip=f"127.0.0.{2 + i // 20_000}")
        except OSError as exc:
            failures.append(str(exc))
            return
        auth = ("Authorization", f"Bearer {fleet.agents[i].credential}")
        conn.send(
            build_request(
                "GET",
                f"/v1/agent/wait?etag={quoted}&actions=0&timeout={WAIT_TIMEOUT_S}",
                fleet.port,
                [*headers, auth],
            )
        )
        conns.append(conn)

    start = time.perf_counter()
    await gather_limited(n, 256, connect)
    all_waiting = await poll_until(lambda: _at_least(fleet, waiting_before + n), 120)
    open_s = time.perf_counter() - start
    held = await fleet.waiting() - waiting_before
    await asyncio.sleep(1)
    with_held = proc_status(fleet.pid)
    probe_during = await probe(fleet, 200)
    answered_early = sum(1 for c in conns if c.reader._buffer)  # type: ignore[attr-defined]
    for conn in conns:
        conn.close()
    await asyncio.sleep(3)
    lingering = await fleet.waiting() - waiting_before
    return {
        "requested": n,
        "held": held,
        "all_waiting": all_waiting,
        "connect_failures": len(failures),
        "first_failure": failures[0] if failures else "",
        "open_s": open_s,
        "rss_before_kb": before["VmRSS"],
        "rss_held_kb": with_held["VmRSS"],
        "hwm_kb": with_held["VmHWM"],
        "per_conn_kb": (with_held["VmRSS"] - before["VmRSS"]) / max(held, 1),
        "probe_before": probe_before,
        "probe_during": probe_during,
        "answered_early": answered_early,
        "lingering_after_close": lingering,
    }


# --------------------------------------------------------------------------------------------
# The run


def fsync_ms(folder: Path, count: int = 200) -> Obj:
    """Latency of 4 KiB write + fsync on the data folder's file system (the commit's cost)."""
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            times.append(1000 * (time.perf_counter() - start))
    finally:
        os.close(fd)
        path.unlink()
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(args: argparse.Namespace, root: Path) -> Obj:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    nofile = raise_nofile(args.idle_connections + args.waiters + 2 * args.pool + 4096)
    if pinned:  # the stub inherits CPU 0 (and the raised limit); this process moves to CPU 1
        os.sched_setaffinity(0, {cpus[0]})
    stub = StubProcess.start(root)
    if pinned:
        os.sched_setaffinity(0, {cpus[1]})
    out: Obj = {"pinned": pinned, "nofile": nofile, "cpus": cpus[:2], "fsync": fsync_ms(root)}
    admin = httpx.AsyncClient(
        base_url=stub.url, headers={"Authorization": f"Bearer {stub.admin_credential}"}, timeout=300
    )
    fleet = Fleet(stub, admin)
    try:
        out["rss_start_kb"] = proc_status(fleet.pid)["VmRSS"]
        await setup(fleet)
        print(f"enrolling {args.agents:,} agents...", flush=True)
        out["enroll"] = await enroll(fleet, args.agents)
        print(
            f"  {args.agents:,} in {out['enroll']['seconds']:.1f} s "
            f"({out['enroll']['rate']:.0f}/s)",
            flush=True,
        )
        print("bytes on the wire of an idle cycle...", flush=True)
        out["wire"] = await wire_bytes(fleet, args.wait_probe_s)
        print(f"  {out['wire']['idle_cycle']} bytes", flush=True)
        print("first poll of every agent (cold credential cache)...", flush=True)
        out["warm_up"] = await warm_up(fleet, args.pool)
        print(f"  {out['warm_up']['rate']:.0f} polls/s", flush=True)
        print("polling load...", flush=True)
        levels = [int(v) for v in args.levels.split(",")]
        poll_levels = [int(v) for v in args.poll_levels.split(",")]
        out["load"] = await load_ladder(fleet, levels, poll_levels, args.duration, args.pool)
        out["rss_after_load_kb"] = proc_status(fleet.pid)["VmRSS"]
        print(f"propagation to {args.waiters:,} waiting agents...", flush=True)
        out["propagation"] = await propagation(fleet, min(args.waiters, len(fleet.agents)))
        p = out["propagation"]
        print(
            f"  last answer {p['wait_last_s']:.2f} s, last bundle {p['fetch_last_s']:.2f} s",
            flush=True,
        )
        print(f"{args.idle_connections:,} idle connections...", flush=True)
        out["idle"] = await idle_connections(fleet, args.idle_connections)
        print(
            f"  held {out['idle']['held']:,}, RSS {out['idle']['rss_held_kb'] / 1024:.0f} MiB",
            flush=True,
        )
        out["alive"] = stub.process.poll() is None
    finally:
        await admin.aclose()
        stub.stop()
    return out


# --------------------------------------------------------------------------------------------
# Report


def fmt_ms(v: float) -> str:
    return "—" if v != v else f"{v:.1f}"  # NaN: nothing of that kind was sent


def largest_held(load: list[Obj], generator: str) -> int:
    return max((r["agents"] for r in load if r["generator"] == generator and r["ok"]), default=0)


def verdicts(out: Obj) -> list[tuple[str, str]]:
    v = []
    for gen in ("httpx.AsyncClient", "raw asyncio HTTP/1.1"):
        held = largest_held(out["load"], gen)
        v.append(
            (
                "PASS" if held >= TARGET_AGENTS else "FAIL",
                f"agents held at a 60 s cycle with p99 < {TARGET_P99_MS:.0f} ms, {gen} "
                f"generator: {held:,} = {held / TARGET_AGENTS:.2f}x the target of "
                f"{TARGET_AGENTS:,}",
            )
        )
    polls = [r for r in out["load"] if r["generator"].startswith("raw, 304")]
    if polls:
        held = largest_held(out["load"], polls[0]["generator"])
        v.append(
            (
                "info",
                f"the same with 304 polls only (no event POSTs), raw generator: {held:,} agents "
                f"= {held / TARGET_AGENTS:.2f}x the target",
            )
        )
    w = out["wire"]
    v.append(
        (
            "PASS" if w["idle_cycle"] <= TARGET_IDLE_BYTES else "FAIL",
            f"bytes on the wire per idle cycle: {w['idle_cycle']} B (target <= "
            f"{TARGET_IDLE_BYTES} B); {w['full_fetch'] / w['idle_cycle']:.1f}x less than "
            f"one full fetch of the bundle ({w['full_fetch']:,} B)",
        )
    )
    i = out["idle"]
    v.append(
        (
            "PASS" if i["held"] >= TARGET_IDLE_CONNECTIONS else "FAIL",
            f"idle notification connections held: {i['held']:,} = "
            f"{i['held'] / TARGET_IDLE_CONNECTIONS:.2f}x the target of "
            f"{TARGET_IDLE_CONNECTIONS:,}; stub RSS {i['rss_held_kb'] / 1024:.0f} MiB, "
            f"304 poll p99 {i['probe_during']['poll_p99']:.1f} ms while held",
        )
    )
    p = out["propagation"]
    ok = p["fetched"] == p["waiters"] and p["fetch_last_s"] < TARGET_PROPAGATION_S
    v.append(
        (
            "PASS" if ok and p["waiters"] >= 1000 else "FAIL",
            f"profile change to {p['waiters']:,} waiting agents (of {p['fleet']:,} enrolled): "
            f"last answer {p['wait_last_s']:.2f} s, last new bundle fetched "
            f"{p['fetch_last_s']:.2f} s after the PUT (target < {TARGET_PROPAGATION_S:.0f} s "
            f"for 1,000)",
        )
    )
    return v


def report(out: Obj, command: str, facts: str) -> str:
    e, w, i, p = out["enroll"], out["wire"], out["idle"], out["propagation"]
    ex = w["exchanges"]
    load_rows = [
        "| generator | agents (60 s cycle) | offered req/s | achieved req/s | 304 poll p50 / p99 ms "
        "| events POST p50 / p99 ms | all p99 ms | errors | stub CPU | generator CPU | p99 < 100 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in out["load"]:
        load_rows.append(
            f"| {r['generator']} | {r['agents']:,} | {r['offered_rps']:.0f} | "
            f"{r['achieved_rps']:.0f} | {fmt_ms(r['get_p50'])} / {fmt_ms(r['get_p99'])} | "
            f"{fmt_ms(r['post_p50'])} / {fmt_ms(r['post_p99'])} | **{fmt_ms(r['p99'])}** | "
            f"{r['errors'] + r['unfinished']} | {100 * r['server_cpu']:.0f}% | "
            f"{100 * r['gen_cpu']:.0f}% | {'yes' if r['ok'] else 'no'} |"
        )
    wire_rows = [
        "| exchange | request B | response B | total B |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {
        "poll": "`GET /v1/agent/desired` + `If-None-Match`, unchanged: 304",
        "wait": f"`GET /v1/agent/wait?etag=…&actions=0&timeout={WAIT_TIMEOUT_S}`, times out",
        "events": "`POST /v1/agent/events` (health + reconcile event), for reference",
        "full": f"`GET /v1/agent/desired`, full bundle ({w['bundle_bytes']:,} B): 200 — baseline",
    }
    for key in ("poll", "wait", "events", "full"):
        up, down = ex[key]
        wire_rows.append(f"| {names[key]} | {up:,} | {down:,} | {up + down:,} |")
    wire_rows.append(
        f"| **idle cycle = 304 poll + wait** | {ex['poll'][0] + ex['wait'][0]:,} | "
        f"{ex['poll'][1] + ex['wait'][1]:,} | **{w['idle_cycle']:,}** |"
    )
    pb, pd = i["probe_before"], i["probe_during"]
    verdict_lines = "\n".join(f"- **{s}** {t}" for s, t in verdicts(out))
    pinned = (
        f"the stub pinned to CPU {out['cpus'][0]}, the load generator to CPU {out['cpus'][1]}"
        if out["pinned"]
        else "not pinned (fewer than 2 CPUs)"
    )
    return f"""{BEGIN}

## Management stub under agent load: polling, bytes per idle cycle, held connections, propagation

`mgmt-stub serve` (FastAPI on uvicorn with uvloop and httptools, SQLite with
`synchronous=FULL`) as a real process on 127.0.0.1, driven by `scripts/bench_stub.py` in
another process; {pinned}. Every agent is enrolled through the real API and uses its own
credential. Reproduce every figure below with:

```sh
{command}
```

Machine: {facts}.

Verdicts:

{verdict_lines}

### Enrollment

{e["agents"]:,} agents through `POST /v1/enroll` (one SQLite transaction with fsync each),
{e["concurrency"]} requests in flight from the raw client: **{e["seconds"]:.1f} s, {e["rate"]:.0f}
enrollments/s**; stub CPU {100 * e["server_cpu"]:.0f}% of one core, generator
{100 * e["gen_cpu"]:.0f}%. Stub RSS with {e["agents"]:,} clusters enrolled:
{e["rss_kb"] / 1024:.0f} MiB (at start {out["rss_start_kb"] / 1024:.0f} MiB).

### First poll of every agent after the stub started

Each of the {out["warm_up"]["agents"]:,} agents polls once (`GET /v1/agent/desired`, 304) over
{out["warm_up"]["concurrency"]} connections as fast as they go: the stub has not seen these
credentials since it started, so each one is read from SQLite once (a stub restart under a
full fleet looks like this). **{out["warm_up"]["rate"]:.0f} polls/s** ({out["warm_up"]["seconds"]:.1f}
s), latency p50 / p99 {fmt_ms(out["warm_up"]["p50"])} / {fmt_ms(out["warm_up"]["p99"])} ms
(closed loop: {out["warm_up"]["concurrency"]} in flight), stub CPU
{100 * out["warm_up"]["server_cpu"]:.0f}%. The load levels below run after this, with every
credential cached, as in a fleet's steady state.

### Polling load at a 60 s cycle

Each agent's cycle is a `GET /v1/agent/desired` with `If-None-Match` (answered 304) and a
`POST /v1/agent/events` with a health and a reconcile event, so N agents are 2N/60 requests/s.
Each level offers that rate open-loop for {out["duration"]:.0f} s (not 60 s: the same request
rate over a shorter window), cycles spread evenly, agents taken in turn (a level above
{len_agents(out):,} agents reuses credentials within the window). Latency runs from the moment a
cycle was due to the end of its answer, so time spent queued in the generator counts. A level
passes when p99 over both requests < {TARGET_P99_MS:.0f} ms, at least 95% of the offered rate
is achieved and nothing fails; the ladder stops at the first level that does not. Both
generators share a keep-alive pool of {out["pool"]} connections (a real fleet holds one
connection per agent: see the idle connections below).

{chr(10).join(load_rows)}

- "stub CPU" is the server process's user + system time over the level's wall time (100% =
  one core, its whole share when pinned); "generator CPU" is this script's.
- **httpx.AsyncClient** is the HTTP client an agent uses. One process of it is a load
  generator whose own CPU cost is in the figures: where its CPU is near 100% it is the limit,
  not the stub. **raw asyncio HTTP/1.1** sends the same request headers from pre-built bytes
  and parses only the status line and headers (a lighter generator); its ladder is the
  figure for the stub's capacity. **raw, 304 polls only** is the raw ladder without the
  event POSTs (N/60 requests/s): the read path alone, for comparison.
- Event batches are committed with `synchronous=FULL`, those arriving within 5 ms of each
  other in one transaction (`mgmt_stub/groupcommit.py`: one fsync for the group, each POST
  answered after it); the data folder's file system took {out["fsync"]["p50"]:.2f} ms (p50) /
  {out["fsync"]["p99"]:.2f} ms (p99) per 4 KiB write + fsync in this run, measured before the
  stub started. Ordinary polls and event batches are answered by `mgmt_stub/fastpath.py`
  beneath FastAPI's routing and validation (anything unusual goes to the routes).

### Bytes on the wire per idle cycle

Counted exactly by a TCP proxy between an `httpx.AsyncClient` (default headers, as an agent
sends them: `Host`, `Accept`, `Accept-Encoding`, `Connection`, `User-Agent`, plus
`Authorization: Bearer` with its {e["credential_chars"]}-character credential and `If-None-Match`
with the quoted SHA-256 ETag) and the stub, on a kept-alive connection. HTTP/1.1 bytes only:
TLS records and TCP/IP headers (about 52 B per segment on Linux, 4 segments per cycle plus
ACKs) come on top. The wait was measured with `timeout={w["probe_timeout_s"]}` and is counted
as with `timeout={WAIT_TIMEOUT_S}` (+{len(str(WAIT_TIMEOUT_S)) - len(str(w["probe_timeout_s"]))}
request bytes; the answer is the same). The `Host` header here is `127.0.0.1:PORT`; a real
host name changes the request by its difference in length.

{chr(10).join(wire_rows)}

An idle cycle is **{w["idle_cycle"]:,} B**, {w["full_fetch"] / w["idle_cycle"]:.1f}x less than
fetching the bundle again.

### Idle notification connections

{i["requested"]:,} agents each hold `GET /v1/agent/wait?etag=<current>&actions=0&timeout=300`
on their own connection at once (stub started with RLIMIT_NOFILE {out["nofile"]:,}). Opened
with 256 connects in flight; all registered as waiting (`/v1/admin/stats`) after
**{i["open_s"]:.1f} s**; held: **{i["held"]:,}**; connect failures: {i["connect_failures"]};
answered before their timeout: {i["answered_early"]}.

| stub | before | with the connections held |
| --- | ---: | ---: |
| VmRSS MiB | {i["rss_before_kb"] / 1024:.0f} | **{i["rss_held_kb"] / 1024:.0f}** |
| VmRSS per held connection KiB | | {i["per_conn_kb"]:.1f} |
| VmHWM (peak RSS so far) MiB | | {i["hwm_kb"] / 1024:.0f} |
| 304 poll p50 / p99 ms (200 in a row, one connection) | {fmt_ms(pb["poll_p50"])} / {fmt_ms(pb["poll_p99"])} | {fmt_ms(pd["poll_p50"])} / **{fmt_ms(pd["poll_p99"])}** |
| `/healthz` p50 / p99 ms | {fmt_ms(pb["health_p50"])} / {fmt_ms(pb["health_p99"])} | {fmt_ms(pd["health_p50"])} / {fmt_ms(pd["health_p99"])} |

Handlers still waiting 3 s after their clients closed all {i["held"]:,} connections:
**{i["lingering_after_close"]:,}** (a closed connection's wait is only ended by its timeout
when this is not 0).

### Propagation of a profile change

{p["waiters"]:,} agents wait on `/v1/agent/wait` with their current ETag; an operator's
`PUT /v1/admin/profiles/bench` adds a ConfigMap, so the stub writes a new profile version,
builds and signs a bundle and moves all {p["fleet"]:,} enrolled clusters of the assignment to
it in one transaction. Each waiter, on its answer, fetches the new bundle on the same
connection (`GET /v1/agent/desired` with the old ETag: 200, {p["bundle_bytes"]:,} B).
Times from sending the PUT:

| measurement | s |
| --- | ---: |
| PUT answered (version stored, bundle built, {p["fleet"]:,} clusters moved) | {p["put_s"]:.2f} |
| waiters answered `changed: true`, median / last | {p["wait_p50_s"]:.2f} / **{p["wait_last_s"]:.2f}** |
| new bundle fetched (200), median / last | {p["fetch_p50_s"]:.2f} / **{p["fetch_last_s"]:.2f}** |

Answered {p["answered"]:,} of {p["waiters"]:,}, fetched {p["fetched"]:,}; distinct new
ETags seen: {p["new_etags"]}.

{END}
"""


def len_agents(out: Obj) -> int:
    return int(out["enroll"]["agents"])


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    parts = ", ".join(
        f"{name} {version(name)}" for name in ("fastapi", "uvicorn", "uvloop", "httptools", "httpx")
    )
    return (
        f"{model}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {parts}"
    )


def write_doc(text: str) -> None:
    replace_section(BEGIN, END, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute")
    parser.add_argument("--agents", type=int, help=f"agents to enroll (default {FULL['agents']})")
    parser.add_argument(
        "--duration", type=float, help=f"seconds per load level (default {FULL['duration']:.0f})"
    )
    parser.add_argument(
        "--levels", help=f"agent counts to offer, comma-separated (default {FULL['levels']})"
    )
    parser.add_argument(
        "--poll-levels",
        help=f"agent counts for the 304-only ladder (default {FULL['poll_levels']})",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        help=f"waits held at once (default {FULL['idle_connections']})",
    )
    parser.add_argument(
        "--waiters", type=int, help=f"waiting agents for propagation (default {FULL['waiters']})"
    )
    parser.add_argument("--pool", type=int, default=64, help="keep-alive connections for load")
    parser.add_argument(
        "--write-doc", action="store_true", help=f"update its section in {DOC.relative_to(REPO)}"
    )
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    given = []
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
        elif key != "wait_probe_s":
            given.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    if args.agents < 1 or args.waiters < 1 or args.idle_connections < 1:
        parser.error("--agents, --waiters and --idle-connections must be at least 1")
    command = " ".join(
        [".venv/bin/python scripts/bench_stub.py", *(["--quick"] if args.quick else []), *given]
        + (["--pool", str(args.pool)] if args.pool != 64 else [])
        + ["--write-doc"]
    )
    root = Path(tempfile.mkdtemp(prefix="bench-stub-"))
    started = time.perf_counter()
    try:
        try:
            import uvloop

            out = uvloop.run(run(args, root))
        except ImportError:
            out = asyncio.run(run(args, root))
    except Exception as exc:
        log = root / "stub.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        print(f"bench_stub: the run broke: {exc!r}\n{tail}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    out["duration"], out["pool"] = args.duration, args.pool
    facts = machine()
    text = report(out, command, facts)
    print()
    for status, line in verdicts(out):
        print(f"{status} {line}")
    print(f"run took {time.perf_counter() - started:.0f} s; machine: {facts}")
    broken = (
        not out["alive"]
        or any(r["errors"] for r in out["load"])
        or out["propagation"]["problems"]
        or out["idle"]["connect_failures"]
    )
    if broken:
        print("bench_stub: requests failed during the run (see above)", file=sys.stderr)
    if args.write_doc:
        write_doc(text)
        print(f"wrote {DOC.relative_to(REPO)}")
    elif os.environ.get("BENCH_STUB_PRINT_SECTION"):
        print(text)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
