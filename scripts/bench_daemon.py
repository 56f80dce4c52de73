"""The appliance figures: `edge-agent status` start-up, the daemon at rest, the one-file binary.

Usage: .venv/bin/python scripts/bench_daemon.py [--runs 15] [--idle-s 60] [--quick]
       [--binary FILE ...] [--write-doc]

1. **status start-up**: a provisioned site with a policy in force (a real signed bundle
   imported), then ``edge-agent status`` run ``--runs`` times as a new process; the median
   and the worst wall time. Baseline in the same run: ``python -c pass`` with the same
   interpreter (what any Python command costs before our code), so the figure is also given
   as a ratio to it.
2. **daemon at rest**: ``edge-agent run`` on that site (manifest-folder target, a drop
   folder, no management server), left alone for ``--idle-s`` seconds after it said READY
   (a fake notify socket, as systemd would give): its RSS (VmRSS, and the peak VmHWM) and the
   CPU time it used, read from /proc.
3. **the one-file binary** (each ``--binary``, default dist/edge-agent when it is built:
   scripts/build-binary.sh): its size; ``status`` from it, the same way; the cost of being
   one file, ``--help`` from the binary minus ``--help`` from the venv (both import the CLI
   and print; the difference is the bootloader unpacking the bundle and starting a second
   process); and, for the first binary, the daemon at rest as in 2, summed over its two
   processes (the bootloader and the agent, its child).

Targets (issue 6): status < 300 ms (venv and binary); idle RSS < 80 MB; binary < 60 MB.
Benchmarks are measurements, not tests: a missed target is reported; the exit status is 1
only when something did not run.
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
TARGET_BINARY_MB = 60.0
DEFAULT_BINARY = REPO / "dist" / "edge-agent"


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


def timed(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Wall times of each command, ``runs`` rounds, the commands in turn within a round (so
    drift in the machine's load touches them alike)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, check=False)
            times[name].append(time.perf_counter() - started)
            if result.returncode not in (0, 1):
                raise SystemExit(f"{command} exited {result.returncode}: {result.stderr[-500:]!r}")
    return times


def phases(command: list[str], runs: int) -> tuple[float, float, float] | None:
    """Median (unpack, agent, clean-up) seconds of a one-file start, from the bootloader's
    own system calls (strace: its start to the fork of the agent, the agent's exec to its
    exit, then to the bootloader's exit); None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    unpack, agent, cleanup = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-strace-") as tmp:
        trace = Path(tmp) / "trace"
        for _ in range(runs):
            calls = ["-e", "trace=execve,clone,exit_group"]
            subprocess.run(
                [strace, "-f", "-ttt", "--seccomp-bpf", *calls, "-o", str(trace), *command],
                capture_output=True,
                check=False,
            )
            events = []  # (pid, time, call) of each call made (not its "resumed" line)
            for line in trace.read_text().splitlines():
                pid, at, call = line.split(None, 2)
                if call.startswith(("execve(", "clone(", "exit_group(")):
                    events.append((pid, float(at), call))
            parent, started = events[0][0], events[0][1]
            forked = next(at for _, at, call in events if call.startswith("clone("))
            exits = {pid: at for pid, at, call in events if call.startswith("exit_group(")}
            child = next(pid for pid in exits if pid != parent)
            unpack.append(forked - started)
            agent.append(exits[child] - forked)
            cleanup.append(exits[parent] - exits[child])
    return statistics.median(unpack), statistics.median(agent), statistics.median(cleanup)


def unpacked(binary: Path) -> tuple[int, float, str, float] | None:
    """(files, MB, largest file, its MB) that a start of the one-file ``binary`` unpacks,
    from its archive's table of contents (PyInstaller's reader); None without PyInstaller."""
    try:
        from PyInstaller.archive.readers import CArchiveReader
    except ImportError:
        return None
    toc = CArchiveReader(str(binary)).toc  # name -> (offset, length, length unpacked, ...)
    files = {name: entry[2] for name, entry in toc.items() if entry[4] in ("b", "x")}
    largest = max(files, key=files.__getitem__)
    return len(files), sum(files.values()) / 1e6, largest, files[largest] / 1e6


def vm(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def idle_daemon(command: list[str], idle_s: float, work: Path) -> tuple[float, float, float, int]:
    """(RSS MiB, peak RSS MiB, CPU seconds, processes) of `edge-agent run` (``command``) over
    ``idle_s`` at rest, summed over the process and its children (the one-file binary's
    bootloader and agent)."""
    notify = work / "notify.sock"
    notify.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": str(notify)},
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        time.sleep(min(5.0, idle_s / 4))  # the first cycle and the first scan settle
        pids = [process.pid, *children(process.pid)]
        cpu_before = sum(proc_cpu_s(pid) for pid in pids)
        time.sleep(idle_s)
        cpu = sum(proc_cpu_s(pid) for pid in pids) - cpu_before
        memory = [vm(pid) for pid in pids]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        sock.close()
    rss = sum(m["VmRSS"] for m in memory) / 1024
    peak = sum(m["VmHWM"] for m in memory) / 1024
    return rss, peak, cpu, len(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="5 runs, 3 s at rest (a smoke run)")
    parser.add_argument(
        "--binary",
        type=Path,
        action="append",
        help="a one-file edge-agent to measure (repeatable; default dist/edge-agent if built)",
    )
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    runs, idle_s = (5, 3.0) if args.quick else (args.runs, args.idle_s)
    binaries = args.binary or ([DEFAULT_BINARY] if DEFAULT_BINARY.exists() else [])
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary}: not an executable file (scripts/build-binary.sh)")
    venv = str(BIN / "edge-agent")
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        work = Path(tmp)
        config = make_site(work)
        commands = {
            "status": [venv, "--config", str(config), "status"],
            "baseline": [sys.executable, "-c", "pass"],
        }
        if binaries:
            commands["help"] = [venv, "--help"]
        for index, binary in enumerate(binaries):
            commands[f"{index}:status"] = [str(binary.resolve()), "--config", str(config), "status"]
            commands[f"{index}:help"] = [str(binary.resolve()), "--help"]
        times = timed(commands, runs)
        status, baseline, venv_help = times["status"], times["baseline"], times.get("help", [])
        rss, peak, cpu, _ = idle_daemon([venv, "--config", str(config), "run"], idle_s, work)
        measured = []
        for index, binary in enumerate(binaries):
            command = [str(binary.resolve()), "--config", str(config)]
            at_rest = idle_daemon([*command, "run"], idle_s, work) if index == 0 else None
            split = phases([*command, "status"], runs)
            measured.append(
                (binary, times[f"{index}:status"], times[f"{index}:help"], at_rest, split)
            )
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
        f"{status_ms:.0f} ms (venv, median; target < {TARGET_STATUS_S * 1000:.0f} ms)",
        f"**{'PASS' if peak < TARGET_RSS_MB else 'FAIL'}** daemon peak RSS {peak:.1f} MiB "
        f"(venv; target < {TARGET_RSS_MB:.0f} MB)",
    ]
    if venv_help:
        rows.append(
            ("`edge-agent --help` (venv), median", f"{statistics.median(venv_help) * 1000:.0f} ms")
        )
    for binary, binary_status, binary_help, at_rest, split in measured:
        name = f"`{os.path.relpath(binary, REPO)}`"
        size_mb = binary.stat().st_size / 1e6
        median_ms = statistics.median(binary_status) * 1000
        unpack_ms = (statistics.median(binary_help) - statistics.median(venv_help)) * 1000
        rows += [
            (f"{name}: size", f"{size_mb:.1f} MB"),
            (f"{name}: `status`, median of {runs}", f"{median_ms:.0f} ms"),
            (f"{name}: `status`, worst", f"{max(binary_status) * 1000:.0f} ms"),
            (f"{name}: `status` / venv `status`", f"{median_ms / status_ms:.2f}x"),
            (f"{name}: `--help`, median", f"{statistics.median(binary_help) * 1000:.0f} ms"),
            (f"{name}: one-file cost (`--help`, binary - venv)", f"{unpack_ms:+.0f} ms"),
        ]
        contents = unpacked(binary)
        if contents is not None:
            files, total_mb, largest, largest_mb = contents
            rows.append(
                (
                    f"{name}: unpacked at each start",
                    f"{files} files, {total_mb:.1f} MB (largest: {Path(largest).name}, "
                    f"{largest_mb:.1f} MB)",
                )
            )
        if split is not None:
            unpack, agent, cleanup = (f"{x * 1000:.0f} ms" for x in split)
            rows.append(
                (
                    f"{name}: `status` in phases: unpack / agent / clean-up",
                    f"{unpack} / {agent} / {cleanup}",
                )
            )
        verdicts += [
            f"**{'PASS' if size_mb < TARGET_BINARY_MB else 'FAIL'}** {name} size {size_mb:.1f} MB "
            f"(target < {TARGET_BINARY_MB:.0f} MB)",
            f"**{'PASS' if median_ms < TARGET_STATUS_S * 1000 else 'FAIL'}** status start-up "
            f"from {name} {median_ms:.0f} ms (median; target < {TARGET_STATUS_S * 1000:.0f} ms)",
        ]
        if at_rest is not None:
            b_rss, b_peak, b_cpu, processes = at_rest
            rows += [
                (
                    f"{name} `run` at rest: RSS after {idle_s:.0f} s, {processes} processes",
                    f"{b_rss:.1f} MiB",
                ),
                (f"{name} `run` at rest: peak RSS, {processes} processes", f"{b_peak:.1f} MiB"),
                (
                    f"{name} `run` at rest: CPU over {idle_s:.0f} s",
                    f"{b_cpu:.2f} s ({b_cpu / idle_s:.1%})",
                ),
            ]
            verdicts.append(
                f"**{'PASS' if b_peak < TARGET_RSS_MB else 'FAIL'}** daemon peak RSS from {name} "
                f"{b_peak:.1f} MiB (bootloader + agent; target < {TARGET_RSS_MB:.0f} MB)"
            )
    table = "| measurement | value |\n| --- | ---: |\n" + "\n".join(
        f"| {a} | {b} |" for a, b in rows
    )
    print(table)
    for line in verdicts:
        print(line.replace("**", ""))
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}; load average (1 min) at start / end: "
        f"{load_start:.2f} / {os.getloadavg()[0]:.2f} (other work on the machine competes for "
        "its cores: the worst times show it)"
    )
    if not measured:
        print("no binary measured (scripts/build-binary.sh builds dist/edge-agent)")
    if args.write_doc and not args.quick:
        builds = " ".join(f"--binary {os.path.relpath(b[0], REPO)}" for b in measured)
        replace_section(
            BEGIN,
            END,
            f"""{BEGIN}

## The appliance: status start-up, the daemon at rest, the one-file binary

`edge-agent status` as a new process on a site with a policy in force, and `edge-agent run`
(manifest-folder target, a drop folder, no management server) left alone after READY; both
from the venv and from the one-file binary (`scripts/build-binary.sh`: stored, the default,
and `--compressed`). Reproduce with:

```sh
scripts/build-binary.sh
scripts/build-binary.sh --compressed --dist build/compressed
.venv/bin/python scripts/bench_daemon.py {builds} --write-doc
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
  time over the {idle_s:.0f} s at rest. From the binary they are summed over its two
  processes, the bootloader (systemd's main PID, which waits) and the agent, its child; the
  sum of the two peaks bounds the peak of the pair from above.
- MB = 10^6 bytes (the binary's size); MiB = 2^20 bytes.
- The one-file cost: a one-file start unpacks the shared libraries, extension modules and
  data ("unpacked at each start") into a fresh folder, starts the agent as a second process
  and removes the folder at exit (the Python modules are read in place from the archive). `--help` imports the CLI
  from both; what the binary takes longer is that cost. Stored (the default), unpacking is a
  copy; deflated (`--compressed`), every start inflates all of it again. The phases are read
  from the bootloader's system calls (strace: its start to the fork of the agent, the
  agent's run, its exit to the bootloader's), median of {runs} more runs under strace.

{END}
""",
        )
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
