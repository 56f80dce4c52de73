"""Benchmark: bundle verification throughput and peak memory, against baselines in the same run.

What it measures, per bundle size (an artifact of random bytes in a copy of ``bundles/hello-web``,
built and signed with the real ``mgmt-stub``, checked with the real ``edge-agent``):

* ``sha256sum FILE`` wall time: the baseline that the throughput target is a ratio against;
  ``openssl dgst -sha256 FILE`` as a second, informative reference (hardware SHA-256 if the CPU
  has it, as Python's ``hashlib`` does);
* ``edge-agent --config CFG verify FILE`` wall time (interpreter start-up included) and its peak
  RSS; ``verify_bundle`` alone, timed inside a child Python process (start-up excluded);
* ``edge-agent import FILE`` wall time and peak RSS (a fresh state folder every run), and
  ``cp FILE COPY; sync COPY; sha256sum FILE`` as its informative baseline.

The page cache is warmed by reading the bundle once; each measurement is repeated and the best
(minimum) wall time kept; peak RSS is the maximum over the repeats. The measurements of one round
run back to back, in reverse order every other round, so that caches and drift affect all alike.

This is a measurement, not a test: it exits 0 whether or not a target is met and prints a
verdict for each. ``--write-doc`` rewrites docs/benchmarks.md (generated; do not edit by hand).

    .venv/bin/python scripts/bench_bundle.py --sizes 64,1024 --repeat 3 --write-doc
    .venv/bin/python scripts/bench_bundle.py --quick          # smoke run: 16 MiB, once
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
OTHER_SECTIONS_MARKER = "<!-- other benchmarks below: kept by --write-doc -->"
PROFILE_SOURCE = REPO / "bundles" / "hello-web"
BIN = Path(sys.executable).parent  # the venv's console scripts sit beside its interpreter
GNU_TIME = Path("/usr/bin/time")
CHILD_MODE = "_verify-child"  # hidden: argv[1] of the child that times verify_bundle alone

MIB = 1 << 20
MB = 1_000_000  # memory figures are reported in MB (10^6 bytes), as the target is stated
CHUNK_BYTES = 1 << 20

RATIO_TARGET = 0.8  # verify-only throughput / sha256sum throughput, at least
RSS_LIMIT_MB = 100.0  # peak RSS of edge-agent, below
FLAT_TOLERANCE_MB = 5.0  # "flat": largest size's peak RSS within this of the smallest size's

# Names of the measurements, in the order one round runs them.
SHA256SUM = "sha256sum"
OPENSSL = "openssl"
VERIFY_CMD = "verify-cmd"
VERIFY_ONLY = "verify-only"
IMPORT_CMD = "import-cmd"
COPY_HASH = "cp+sync+sha256sum"


@dataclass(frozen=True, slots=True)
class Sample:
    """One run of one measurement."""

    wall_s: float
    rss_kib: int | None = None  # peak resident set size of the process, if measured


@dataclass(slots=True)
class SizeResult:
    """All samples for one bundle size."""

    size_mib: int
    bundle_bytes: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, name: str, sample: Sample) -> None:
        self.samples.setdefault(name, []).append(sample)

    def best_s(self, name: str) -> float:
        return min(s.wall_s for s in self.samples[name])

    def peak_mb(self, name: str) -> float:
        return max(s.rss_kib or 0 for s in self.samples[name]) * 1024 / MB

    def has(self, name: str) -> bool:
        return name in self.samples


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool | None  # None: informative only, or not applicable
    text: str

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]


# -- running commands --------------------------------------------------------------------------


def run_measured(command: Sequence[str], workdir: Path) -> Sample:
    """Run ``command`` to completion; return its wall time and peak RSS. Abort on failure.

    Peak RSS comes from GNU ``/usr/bin/time -f %M`` when present. Otherwise it comes from
    ``os.wait4`` on the child itself: the kernel's usage of that one process, so unlike
    ``getrusage(RUSAGE_CHILDREN)`` it is not a maximum over every child waited for so far.
    Either way Linux counts the RSS a child had before ``exec``: with ``os.wait4`` that is
    this script's own RSS (about 20 MB), an upper bound that is harmless above it.
    """
    rss_file = workdir / "rss.txt"
    argv = list(command)
    if GNU_TIME.exists():
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(
            f"bench: {shlex.join(command)} exited {proc.returncode}:\n"
            f"{stdout.decode(errors='replace')}{stderr.decode(errors='replace')}"
        )
    if GNU_TIME.exists():
        rss_kib = int(rss_file.read_text().split()[-1])
        rss_file.unlink()
    else:
        rss_kib = usage.ru_maxrss  # KiB on Linux
    return Sample(wall_s, rss_kib)


def run_checked(command: Sequence[str]) -> str:
    """Run a set-up command; abort with its output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: {shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        sys.exit(f"bench: {path} not found; run this script with the project's .venv/bin/python")
    return str(path)


# -- building the inputs -----------------------------------------------------------------------


def make_bundle(folder: Path, keys: Path, size_mib: int) -> Path:
    """A signed bundle whose one artifact is ``size_mib`` MiB of random bytes."""
    profile = folder / "profile"
    shutil.copytree(PROFILE_SOURCE, profile)
    (profile / "artifacts").mkdir()
    with (profile / "artifacts" / "images.tar").open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MIB))
    with (profile / "profile.yaml").open("a", encoding="utf-8") as spec:
        spec.write("artifacts:\n  - {path: artifacts/images.tar, kind: image-archive}\n")
    bundle = folder / f"bench-{size_mib}mib.bundle"
    run_checked(
        [
            tool("mgmt-stub"),
            "bundle",
            "build",
            "--profile",
            str(profile),
            "--target",
            "site-1",
            "--revision",
            "1",
            "--keys",
            str(keys),
            "-o",
            str(bundle),
        ]
    )
    shutil.rmtree(profile)  # the artifact source is not needed once it is in the bundle
    return bundle


def write_config(path: Path, *, keys: Path, state_dir: Path, bundle_bytes: int) -> Path:
    """An agent config for cluster site-1; limits raised only where the bundle needs it."""
    from edge_agent.bundle.verify import Limits

    defaults = Limits()
    limits = {
        "max_bundle_bytes": max(defaults.max_bundle_bytes, bundle_bytes + MIB),
        "max_file_bytes": max(defaults.max_file_bytes, bundle_bytes),
    }
    path.write_text(
        "cluster_id: site-1\n"
        "paths:\n"
        f"  state_dir: {state_dir}\n"
        f"  initial_root: {keys / 'root.json'}\n"
        "limits:\n" + "".join(f"  {key}: {value}\n" for key, value in limits.items()),
        encoding="utf-8",
    )
    return path


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(CHUNK_BYTES):
            pass


# -- measuring ---------------------------------------------------------------------------------


def verify_only(config: Path, bundle: Path, *, profile_out: Path | None = None) -> float:
    """Seconds ``verify_bundle`` takes, timed inside a fresh child Python process."""
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_MODE, str(config), str(bundle)]
    if profile_out is not None:
        command.append(str(profile_out))
    report = json.loads(run_checked(command))
    return float(report["verify_s"])


def measure_size(
    size_mib: int, folder: Path, keys: Path, repeat: int, *, with_openssl: bool
) -> SizeResult:
    bundle = make_bundle(folder, keys, size_mib)
    bundle_bytes = bundle.stat().st_size
    verify_config = write_config(
        folder / "verify.yaml",
        keys=keys,
        state_dir=folder / "verify-state",  # never created: verify has no side effects
        bundle_bytes=bundle_bytes,
    )
    import_state = folder / "import-state"
    import_config = write_config(
        folder / "import.yaml", keys=keys, state_dir=import_state, bundle_bytes=bundle_bytes
    )
    copy = folder / "copy.bundle"
    agent = tool("edge-agent")
    result = SizeResult(size_mib, bundle_bytes)

    def import_fresh() -> Sample:
        shutil.rmtree(import_state, ignore_errors=True)  # every import commits, into a new store
        sample = run_measured(
            [agent, "--config", str(import_config), "import", str(bundle)], folder
        )
        shutil.rmtree(import_state)
        return sample

    def copy_and_hash() -> Sample:
        total = 0.0
        for command in (
            ["cp", str(bundle), str(copy)],
            ["sync", str(copy)],
            ["sha256sum", str(bundle)],
        ):
            total += run_measured(command, folder).wall_s
        copy.unlink()
        return Sample(total)

    steps: list[tuple[str, Callable[[], Sample]]] = [
        (SHA256SUM, lambda: run_measured(["sha256sum", str(bundle)], folder)),
        (
            VERIFY_CMD,
            lambda: run_measured(
                [agent, "--config", str(verify_config), "verify", str(bundle)], folder
            ),
        ),
        (VERIFY_ONLY, lambda: Sample(verify_only(verify_config, bundle))),
        (IMPORT_CMD, import_fresh),
        (COPY_HASH, copy_and_hash),
    ]
    if with_openssl:
        steps.insert(
            1, (OPENSSL, lambda: run_measured(["openssl", "dgst", "-sha256", str(bundle)], folder))
        )

    warm_page_cache(bundle)
    for round_no in range(repeat):
        order = steps if round_no % 2 == 0 else steps[::-1]
        for name, step in order:
            result.add(name, step())
        print(f"  {size_mib} MiB: round {round_no + 1}/{repeat} done", file=sys.stderr)
    if (folder / "verify-state").exists():
        sys.exit(
            "bench: edge-agent verify created a state folder; verify must have no side effects"
        )
    return result


def verify_child(argv: Sequence[str]) -> None:
    """Child mode: load the config and root as ``edge-agent verify`` does, time only the call."""
    import cProfile
    import resource

    from edge_agent.bundle.trust import TrustState, load_initial_root
    from edge_agent.bundle.verify import DiscardSink, verify_bundle
    from edge_agent.clock import SystemClock
    from edge_agent.config import load_config

    config = load_config(Path(argv[0]))
    root = load_initial_root(
        config.initial_root.read_bytes(), max_bytes=config.limits.max_metadata_bytes
    )
    trust = TrustState(root, frozenset(), None, None, None)
    now = SystemClock().now()
    profiler = cProfile.Profile() if len(argv) > 2 else None
    with Path(argv[1]).open("rb") as handle:
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        bundle = verify_bundle(
            handle,
            trust=trust,
            identity=config.identity,
            now=now,
            limits=config.limits,
            sink=DiscardSink(),
        )
        verify_s = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(argv[2])
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"verify_s": verify_s, "bytes": bundle.archive_bytes, "rss_kib": rss_kib}))


def print_profile(config: Path, bundle: Path, folder: Path) -> None:
    """Run verify once under cProfile (not counted) and print where the time goes."""
    import pstats

    stats_file = folder / "verify.prof"
    seconds = verify_only(config, bundle, profile_out=stats_file)
    print(f"\ncProfile of verify_bundle on {bundle.name} ({seconds:.3f} s under the profiler):")
    stats = pstats.Stats(str(stats_file), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(15)


# -- reporting ---------------------------------------------------------------------------------


def ratio(result: SizeResult, baseline: str, measured: str) -> float:
    """Throughput of ``measured`` relative to ``baseline``: > 1 means faster than the baseline."""
    return result.best_s(baseline) / result.best_s(measured)


def table(results: Sequence[SizeResult], repeat: int) -> str:
    head = ["measurement", *(f"{r.size_mib} MiB" for r in results)]
    rows: list[list[str]] = [
        ["bundle file size (bytes)", *(f"{r.bundle_bytes:,}" for r in results)],
        [
            f"`sha256sum FILE`, s (best of {repeat}) — baseline",
            *(f"{r.best_s(SHA256SUM):.3f}" for r in results),
        ],
    ]
    if results[0].has(OPENSSL):
        rows.append(
            [
                "`openssl dgst -sha256 FILE`, s — reference",
                *(f"{r.best_s(OPENSSL):.3f}" for r in results),
            ]
        )
    rows += [
        [
            "`edge-agent verify FILE`, s (whole command)",
            *(f"{r.best_s(VERIFY_CMD):.3f}" for r in results),
        ],
        [
            "`verify_bundle` only, s (in-process)",
            *(f"{r.best_s(VERIFY_ONLY):.3f}" for r in results),
        ],
        [
            "start-up, config and exit, s (whole command - verify only)",
            *(f"{r.best_s(VERIFY_CMD) - r.best_s(VERIFY_ONLY):.3f}" for r in results),
        ],
        [
            "verify-only throughput, MB/s",
            *(f"{r.bundle_bytes / r.best_s(VERIFY_ONLY) / MB:,.0f}" for r in results),
        ],
        [
            f"**throughput ratio, verify only** (target ≥ {RATIO_TARGET})",
            *(f"**{ratio(r, SHA256SUM, VERIFY_ONLY):.2f}**" for r in results),
        ],
        [
            "throughput ratio, whole command",
            *(f"{ratio(r, SHA256SUM, VERIFY_CMD):.2f}" for r in results),
        ],
    ]
    if results[0].has(OPENSSL):
        rows.append(
            [
                "throughput ratio, verify only vs `openssl dgst`",
                *(f"{ratio(r, OPENSSL, VERIFY_ONLY):.2f}" for r in results),
            ]
        )
    rows += [
        [
            f"**peak RSS `edge-agent verify`, MB** (target < {RSS_LIMIT_MB:.0f}, flat)",
            *(f"**{r.peak_mb(VERIFY_CMD):.1f}**" for r in results),
        ],
        ["peak RSS `sha256sum`, MB", *(f"{r.peak_mb(SHA256SUM):.1f}" for r in results)],
        ["`edge-agent import FILE`, s", *(f"{r.best_s(IMPORT_CMD):.3f}" for r in results)],
        ["`cp` + `sync` + `sha256sum`, s", *(f"{r.best_s(COPY_HASH):.3f}" for r in results)],
        [
            "import ratio (cp+sync+sha256sum / import)",
            *(f"{ratio(r, COPY_HASH, IMPORT_CMD):.2f}" for r in results),
        ],
        [
            f"**peak RSS `edge-agent import`, MB** (target < {RSS_LIMIT_MB:.0f}, flat)",
            *(f"**{r.peak_mb(IMPORT_CMD):.1f}**" for r in results),
        ],
    ]
    lines = [_row(head), _row(["---", *("---:" for _ in results)])]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def verdicts(results: Sequence[SizeResult]) -> list[Verdict]:
    out: list[Verdict] = []
    for r in results:
        value = ratio(r, SHA256SUM, VERIFY_ONLY)
        out.append(
            Verdict(
                value >= RATIO_TARGET,
                f"verify-only throughput ratio at {r.size_mib} MiB: {value:.2f} (target ≥ {RATIO_TARGET})",
            )
        )
    largest = results[-1]
    whole = ratio(largest, SHA256SUM, VERIFY_CMD)
    meets = "meets" if whole >= RATIO_TARGET else "does not meet"
    out.append(
        Verdict(
            None,
            f"whole-command ratio at {largest.size_mib} MiB: {whole:.2f}, start-up included "
            f"({meets} {RATIO_TARGET}; not held to the target)",
        )
    )
    for name, label in ((VERIFY_CMD, "edge-agent verify"), (IMPORT_CMD, "edge-agent import")):
        for r in results:
            peak = r.peak_mb(name)
            out.append(
                Verdict(
                    peak < RSS_LIMIT_MB,
                    f"peak RSS of {label} at {r.size_mib} MiB: {peak:.1f} MB (target < {RSS_LIMIT_MB:.0f} MB)",
                )
            )
        if len(results) > 1:
            smallest = results[0]
            diff = largest.peak_mb(name) - smallest.peak_mb(name)
            out.append(
                Verdict(
                    abs(diff) <= FLAT_TOLERANCE_MB,
                    f"peak RSS of {label} is flat: {largest.size_mib} MiB - {smallest.size_mib} MiB "
                    f"= {diff:+.1f} MB (target within ±{FLAT_TOLERANCE_MB:.0f} MB)",
                )
            )
        else:
            out.append(Verdict(None, f"flatness of {label}: needs two sizes, one was measured"))
    return out


def machine(load: str) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    sha_ni = "yes" if " sha_ni" in cpuinfo else "no"
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8").split()
    mem_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / (1 << 20)
    versions = {
        "sha256sum": run_checked(["sha256sum", "--version"]).splitlines()[0],
        "openssl": run_checked(["openssl", "version"]).strip()
        if shutil.which("openssl")
        else "absent",
    }
    bytecode = (
        "off (PYTHONDONTWRITEBYTECODE is set: modules without a .pyc are compiled at each start)"
        if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else "on"
    )
    return [
        f"- CPU: {model}, {os.cpu_count()} cores, SHA extensions (sha_ni): {sha_ni}",
        f"- memory: {mem_gib:.1f} GiB; kernel {platform.release()}",
        f"- Python {platform.python_version()} ({sys.executable})",
        f"- {versions['sha256sum']}; {versions['openssl']}",
        f"- peak RSS from: {'GNU /usr/bin/time -f %M' if GNU_TIME.exists() else 'os.wait4 on each child'}",
        f"- bytecode cache: {bytecode}",
        f"- {load} (other work on the machine competes for its cores)",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def command_line() -> str:
    def shown(path: str) -> str:
        try:
            return str(Path(path).absolute().relative_to(REPO))
        except ValueError:
            return path

    return shlex.join([shown(sys.executable), shown(sys.argv[0]), *sys.argv[1:]])


def document(
    results: Sequence[SizeResult], found: Sequence[Verdict], repeat: int, load: str
) -> str:
    checks = "\n".join(f"- **{v.label}** {v.text}" for v in found)
    return f"""# Benchmarks

Generated by `scripts/bench_bundle.py --write-doc`; do not edit by hand, re-run it instead.
Benchmarks are measurements, not tests: the script exits 0 whether or not a target is met.

## Bundle verification: throughput and peak memory

Targets (issue: "verification throughput as a ratio to `sha256sum` of the same file in the same
run, target ≥ {RATIO_TARGET}; peak RSS for 64 MB and 1 GB bundles, flat, under 100 MB").

Reproduce every number below with:

```sh
{command_line()}
```

Machine:

{chr(10).join(machine(load))}

{table(results, repeat)}

Verdicts:

{checks}

### Method

- Inputs are made with the real tools: `mgmt-stub keys init`, a copy of `bundles/hello-web` with
  one artifact of N MiB of random bytes (`kind: image-archive`), `mgmt-stub bundle build`
  (uncompressed tar), and an agent config for `site-1` (limits raised only if a size needs it).
- The page cache is warm: the bundle is read once before the first measurement, so every
  figure is CPU-bound reading from memory, not from disk.
- Each measurement runs {repeat} time(s); wall times are the best (minimum) of those runs, peak
  RSS the maximum. The measurements of one round run back to back, in reverse order every other
  round, so caching and machine drift affect them alike.
- **Throughput ratio** = time of `sha256sum FILE` ÷ time of verification of the same file
  (equal bytes, so it is the ratio of throughputs): 1.0 means as fast as `sha256sum`, ≥ {RATIO_TARGET}
  means at least {RATIO_TARGET:.0%} of its speed. The figure **held to the target is the
  verify-only ratio**: `verify_bundle` with a `DiscardSink`, timed inside a child Python process
  around the call alone (the config, the trust root and the imports are loaded first). The
  whole-command ratio times `edge-agent --config CFG verify FILE` as a subprocess, interpreter
  start-up and exit included; that start-up cost is the "start-up, config and exit" row.
- `sha256sum` here is GNU coreutils; if it is built without OpenSSL it uses a portable SHA-256
  and is slower than Python's `hashlib`, which uses OpenSSL and the CPU's SHA instructions.
  `openssl dgst -sha256` is therefore shown as a stricter reference; it is not the target.
- **Peak RSS** is the maximum resident set size of the `edge-agent` process (`%M` of GNU
  `time`, or `os.wait4` on that one child). MB = 10^6 bytes; sizes are MiB. "Flat" means the
  largest size's figure is within {FLAT_TOLERANCE_MB:.0f} MB of the smallest's.
- `edge-agent import` verifies, hashes the whole file, stages the artifact in the state folder
  with `fsync`, and commits into a fresh state store each run; its informative baseline is
  `cp FILE COPY`, `sync COPY` (fsync of the copy) and `sha256sum FILE`, timed one after another.
"""


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure bundle verification throughput (vs sha256sum) and peak RSS."
    )
    parser.add_argument("--sizes", help="artifact sizes in MiB, comma-separated (default 64,1024)")
    parser.add_argument("--repeat", type=int, help="runs per measurement, best kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 MiB, once")
    parser.add_argument(
        "--workdir", type=Path, help="parent of the temporary work folder (default: /tmp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write-doc", action="store_true", help=f"rewrite {DOC.relative_to(REPO)}")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of verify on the largest size"
    )
    args = parser.parse_args(argv)
    if args.quick and args.write_doc:
        parser.error("--quick is a smoke run; its figures do not belong in docs/benchmarks.md")
    sizes = args.sizes or ("16" if args.quick else "64,1024")
    try:
        args.sizes = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes must be whole MiB numbers separated by commas, got {sizes!r}")
    if not args.sizes or args.sizes[0] <= 0:
        parser.error("--sizes needs at least one positive size")
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat <= 0:
        parser.error("--repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = (2 * max(args.sizes) + 64) * MIB  # bundle + artifact source, or + staging, or + copy
    free = shutil.disk_usage(parent).free
    if free < needed:
        sys.exit(f"bench: {parent} has {free // MIB} MiB free, needs about {needed // MIB} MiB")
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=parent))
    with_openssl = shutil.which("openssl") is not None
    load_start = os.getloadavg()[0]
    results: list[SizeResult] = []
    try:
        keys = work / "keys"
        run_checked([tool("mgmt-stub"), "keys", "init", "--keys", str(keys)])
        for size in args.sizes:
            print(f"bench: {size} MiB in {work / f'{size}mib'}", file=sys.stderr)
            folder = work / f"{size}mib"
            folder.mkdir()
            results.append(measure_size(size, folder, keys, args.repeat, with_openssl=with_openssl))
            if args.profile and size == args.sizes[-1]:
                bundle = folder / f"bench-{size}mib.bundle"
                print_profile(folder / "verify.yaml", bundle, folder)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if args.keep:
            print(f"bench: work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    found = verdicts(results)
    load = f"load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}"
    print()
    print(table(results, args.repeat))
    print()
    for verdict in found:
        print(f"[{verdict.label}] {verdict.text}")
    print(load)
    if args.write_doc:
        # Sections other scripts own (after their marker) are kept as they are.
        kept = ""
        if DOC.exists():
            previous = DOC.read_text(encoding="utf-8")
            start = previous.find(OTHER_SECTIONS_MARKER)
            kept = previous[start:] if start >= 0 else ""
        body = document(results, found, args.repeat, load)
        DOC.write_text(body + ("\n" + kept if kept else ""), encoding="utf-8")
        print(f"\nwrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_MODE:
        verify_child(sys.argv[2:])
    else:
        sys.exit(main())
