"""The appliance figures: `edge-agent status` start-up time, the daemon's idle RSS and CPU.

Usage: .venv/bin/python scripts/bench_daemon.py [--runs 15] [--idle-s 60] [--quick] [--write-doc]

1. **status start-up**: a provisioned site with a policy in force (a real signed bundle
   imported), then ``edge-agent status`` run ``--runs`` times as a new process; the median
   and the worst wall time. Baseline in the same run: ``python -c pass`` with the same
   interpreter (what any Python command costs before our code), so the figure is also given
   as a ratio to it.
2. **daemon at rest**: ``edge-agent run`` on that site (manifest-folder target, a drop
   folder, no management server), left alone for ``--idle-s`` seconds after it said READY
   (a fake notify socket, as systemd would give): its RSS (VmRSS, and the peak VmHWM) and the
   CPU time it used, read from /proc.

Targets (issue 6): status < 300 ms; idle RSS < 80 MB. The binary figures come with the
PyInstaller build (not yet). Benchmarks are measurements, not tests: a missed target is
reported; the exit status is 1 only when something did not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchdoc import replace_section  # noqa: E402
from benchproc import proc_cpu_s  # noqa: E402

from mgmt_stub.builder import build_bundle  # noqa: E402
from mgmt_stub.keys import KeyDirectory  # noqa: E402

BEGIN = "<!-- bench_daemon:begin -->"
END = "<!-- bench_daemon:end -->"
BIN = Path(sys.executable).parent
TARGET_STATUS_S = 0.300
TARGET_RSS_MB = 80.0


def make_site(work: Path) -> Path:
    keys = KeyDirectory(work / "keys")
    keys.init(now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), expires_days=365)
    site = work / "site"
    for folder in (site, work / "drop", work / "manifests"):
        folder.mkdir(parents=True)
    shutil.copy(keys.path / "roots" / "1.json", site / "root.json")
    config = site / "config.yaml"
    config.write_text(
        "cluster_id: bench-1\nlabels: {region: eu}\n"
        f"paths: {{state_dir: {site / 'state'}, initial_root: {site / 'root.json'}}}\n"
        f"drop_folders: ['{work / 'drop'}']\n"
        f"target: {{kind: manifest-dir, folder: {work / 'manifests'}}}\n"
    )
    bundle = work / "r1.bundle"
    build_bundle(
        REPO / "bundles" / "hello-web",
        keys=keys,
        target={"cluster_id": "bench-1"},
        revision=1,
        output=bundle,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
    )
    run = [str(BIN / "edge-agent"), "--config", str(config)]
    subprocess.run([*run, "import", str(bundle)], check=True, capture_output=True)
    subprocess.run([*run, "enforce", "--once"], check=True, capture_output=True)
    return config


def timed(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if result.returncode not in (0, 1):
            raise SystemExit(f"{command[-1]} exited {result.returncode}: {result.stderr[-500:]!r}")
    return times


def vm(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def idle_daemon(config: Path, idle_s: float, work: Path) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of `edge-agent run` over ``idle_s`` at rest."""
    notify = work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    process = subprocess.Popen(
        [str(BIN / "edge-agent"), "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": str(notify)},
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        time.sleep(min(5.0, idle_s / 4))  # the first cycle and the first scan settle
        cpu_before = proc_cpu_s(process.pid)
        time.sleep(idle_s)
        cpu = proc_cpu_s(process.pid) - cpu_before
        memory = vm(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        sock.close()
    return memory["VmRSS"] / 1024, memory["VmHWM"] / 1024, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="5 runs, 3 s at rest (a smoke run)")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    runs, idle_s = (5, 3.0) if args.quick else (args.runs, args.idle_s)
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        work = Path(tmp)
        config = make_site(work)
        status = timed([str(BIN / "edge-agent"), "--config", str(config), "status"], runs)
        baseline = timed([sys.executable, "-c", "pass"], runs)
        rss, peak, cpu = idle_daemon(config, idle_s, work)
    status_ms, worst_ms = statistics.median(status) * 1000, max(status) * 1000
    base_ms = statistics.median(baseline) * 1000
    rows = [
        ("`edge-agent status` (venv), median of " + str(runs), f"{status_ms:.0f} ms"),
        ("`edge-agent status` (venv), worst", f"{worst_ms:.0f} ms"),
        ("baseline: `python -c pass`, median", f"{base_ms:.0f} ms"),
        ("status / baseline", f"{status_ms / base_ms:.1f}x"),
        (f"`edge-agent run` at rest: RSS after {idle_s:.0f} s", f"{rss:.1f} MiB"),
        ("`edge-agent run` at rest: peak RSS", f"{peak:.1f} MiB"),
        (f"`edge-agent run` at rest: CPU over {idle_s:.0f} s", f"{cpu:.2f} s ({cpu / idle_s:.1%})"),
    ]
    verdicts = [
        f"**{'PASS' if status_ms < TARGET_STATUS_S * 1000 else 'FAIL'}** status start-up "
        f"{status_ms:.0f} ms (median; target < {TARGET_STATUS_S * 1000:.0f} ms)",
        f"**{'PASS' if peak < TARGET_RSS_MB else 'FAIL'}** daemon peak RSS {peak:.1f} MiB "
        f"(target < {TARGET_RSS_MB:.0f} MB)",
    ]
    table = "| measurement | value |\n| --- | ---: |\n" + "\n".join(
        f"| {a} | {b} |" for a, b in rows
    )
    print(table)
    for line in verdicts:
        print(line.replace("**", ""))
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}"
    )
    if args.write_doc and not args.quick:
        replace_section(
            BEGIN,
            END,
            f"""{BEGIN}

## The appliance: status start-up, the daemon at rest

`edge-agent status` as a new process on a site with a policy in force, and `edge-agent run`
(manifest-folder target, a drop folder, no management server) left alone after READY.
The binary's figures come with the PyInstaller build (issue 6, not yet built). Reproduce with:

```sh
.venv/bin/python scripts/bench_daemon.py --write-doc
```

Machine: {machine}.

Verdicts:

{chr(10).join("- " + v for v in verdicts)}

{table}

Notes:
- The baseline is the interpreter's own start (`python -c pass`, same interpreter, same
  run): what any Python command costs before a line of ours runs.
- RSS is VmRSS from /proc after {idle_s:.0f} s at rest, peak is VmHWM over the whole run
  (start-up, the first cycle and the first drop-folder scan included); CPU is user+system
  time over the {idle_s:.0f} s at rest.

{END}
""",
        )
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
