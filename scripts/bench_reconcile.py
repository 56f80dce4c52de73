"""Reconcile cycle cost against the fake API server: first apply and a no-op cycle.

Usage: .venv/bin/python scripts/bench_reconcile.py [--sizes 100,1000,5000] [--write-doc]

For each size N the script generates N desired objects (one Namespace per 100 objects, the
rest ConfigMaps, Services and Deployments in turn, spread over those namespaces) and runs
three processes, so that each one's figures are its own:

- the **fake** (``tests/fake_apiserver.FakeApiServer`` on port 0), started as
  ``bench_reconcile.py --serve-fake``; it prints its URL, then answers commands on stdin
  (``counts``: the requests received since the last ``clear`` by method and class, as one
  JSON line; ``clear``); EOF stops it. A pipe, not a control endpoint on the fake's port, so
  that the counts contain only the agent's requests;
- the **agent**, ``bench_reconcile.py --agent URL N``: builds the objects, runs one enforce
  cycle on an empty cluster with a fresh ``KubeTarget`` and ``Inventory()``, prints its
  figures, waits for a line on stdin, runs a second cycle with the same target and the
  inventory the first returned (nothing changed: a no-op), prints, exits. Its peak RSS and
  CPU time come from ``os.wait4`` on that child;
- this **driver**, which clears and reads the fake's counts around each cycle.

Wall time includes the fake's own work (it runs on the same machine and serves each request
in Python); "agent CPU" is the agent process alone. The no-op target is one LIST per kind
and nothing else: no discovery GET (cached by the target), no write. ``--write-doc`` replaces
the text between this script's markers at the end of docs/benchmarks.md, or appends it there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from benchdoc import DOC, replace_section

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- bench_reconcile:begin -->"
END = "<!-- bench_reconcile:end -->"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
OBJECTS_PER_NAMESPACE = 100
KINDS = ("Namespace", "ConfigMap", "Service", "Deployment")

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# The objects


def generate(n: int) -> list[Obj]:
    """``n`` objects: one Namespace per 100, then ConfigMap, Service, Deployment in turn."""
    namespaces = max(1, -(-n // OBJECTS_PER_NAMESPACE))
    objects: list[Obj] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{i}"}}
        for i in range(namespaces)
    ]
    for i in range(n - namespaces):
        ns, name = f"bench-{i % namespaces}", f"obj-{i}"
        labels = {"app": name}
        kind = ("ConfigMap", "Service", "Deployment")[i % 3]
        meta = {"name": name, "namespace": ns, "labels": labels}
        if kind == "ConfigMap":
            obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": meta}
            obj["data"] = {"index": str(i), "greeting": "hello from the edge"}
        elif kind == "Service":
            obj = {"apiVersion": "v1", "kind": kind, "metadata": meta}
            obj["spec"] = {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}
        else:
            container = {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}
            obj = {"apiVersion": "apps/v1", "kind": kind, "metadata": meta}
            obj["spec"] = {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            }
        objects.append(obj)
    return objects


# --------------------------------------------------------------------------------------------
# Child: the fake API server


def classify(method: str, query: dict[str, list[str]]) -> str:
    """LIST (a GET with a label selector, as the agent lists), GET (discovery or one object)."""
    if method == "GET":
        return "LIST" if "labelSelector" in query else "GET"
    return method


def serve_fake() -> None:
    sys.path.insert(0, str(REPO))
    from tests.fake_apiserver import FakeApiServer

    fake = FakeApiServer().start()
    print(fake.url, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "counts":
            with fake._lock:  # the fake appends under this lock
                log = list(fake.request_log)
            counts = Counter(classify(r.method, r.query) for r in log)
            lists = Counter(r.path for r in log if classify(r.method, r.query) == "LIST")
            print(json.dumps({"counts": counts, "list_paths": lists}), flush=True)
        elif command == "clear":
            fake.clear_request_log()
            print("ok", flush=True)
    fake.stop()


# --------------------------------------------------------------------------------------------
# Child: the agent


def run_agent(url: str, n: int) -> None:
    from kubernetes.client import ApiClient, Configuration

    from edge_agent.bundle.model import Mode
    from edge_agent.reconcile.inventory import Inventory
    from edge_agent.reconcile.kube_target import KubeTarget
    from edge_agent.reconcile.objects import desired_objects
    from edge_agent.reconcile.target import Action

    objects = generate(n)
    layers = [{"name": "bench", "manifests": [{"path": "bench.yaml", "objects": objects}]}]
    desired = desired_objects(layers)
    configuration = Configuration()
    configuration.host = url
    target = KubeTarget(ApiClient(configuration))
    inventory = Inventory()
    for cycle in ("first", "noop"):
        if cycle == "noop":
            sys.stdin.readline()  # the driver has read and cleared the fake's counts
        start = time.perf_counter()
        report = target.reconcile(desired, inventory, mode=Mode.ENFORCE)
        seconds = time.perf_counter() - start
        inventory = report.inventory
        actions = Counter(r.action.value for r in report.results)
        print(
            json.dumps(
                {
                    "cycle": cycle,
                    "seconds": seconds,
                    "actions": actions,
                    "failed": [
                        f"{r.ref}: {r.detail}" for r in report.results if r.action is Action.FAILED
                    ][:3],
                    "inventory": len(inventory),
                }
            ),
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# The driver


def ask(proc: subprocess.Popen[str], command: str) -> str:
    stdin: IO[str] | None = proc.stdin
    assert stdin is not None and proc.stdout is not None
    stdin.write(command + "\n")
    stdin.flush()
    return proc.stdout.readline().strip()


def read_json(proc: subprocess.Popen[str]) -> Obj:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"child {proc.args} exited early (code {proc.poll()})")
    result: Obj = json.loads(line)
    return result


def measure(n: int) -> Obj:
    """One size: a fresh fake and a fresh agent process; the figures of both cycles."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    me = [sys.executable, str(Path(__file__).resolve())]
    popen: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    fake = subprocess.Popen([*me, "--serve-fake"], env=env, **popen)
    try:
        assert fake.stdout is not None
        url = fake.stdout.readline().strip()
        agent = subprocess.Popen([*me, "--agent", url, str(n)], env=env, **popen)
        assert agent.stdin is not None
        first = read_json(agent)
        first["requests"] = json.loads(ask(fake, "counts"))
        ask(fake, "clear")
        agent.stdin.write("go\n")
        agent.stdin.flush()
        noop = read_json(agent)
        noop["requests"] = json.loads(ask(fake, "counts"))
        agent.stdin.close()
        _, status, usage = os.wait4(agent.pid, 0)
        agent.returncode = os.waitstatus_to_exitcode(status)
        if agent.returncode != 0:
            raise SystemExit(f"agent for {n} objects exited with {agent.returncode}")
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        fake.wait(timeout=30)
    return {
        "n": n,
        "first": first,
        "noop": noop,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "agent_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def requests_text(requests: Obj) -> str:
    counts = requests["counts"]
    return " ".join(f"{m} {counts[m]}" for m in sorted(counts)) or "none"


def writes(requests: Obj) -> int:
    return sum(requests["counts"].get(m, 0) for m in WRITE_METHODS)


def noop_verdict(result: Obj) -> tuple[bool, str]:
    """PASS: exactly one LIST per kind (each path once) and no other request at all."""
    requests = result["noop"]["requests"]
    counts, paths = requests["counts"], requests["list_paths"]
    total = sum(counts.values())
    ok = (
        counts.get("LIST", 0) == len(KINDS)
        and len(paths) == len(KINDS)
        and all(v == 1 for v in paths.values())
        and total == len(KINDS)
        and result["noop"]["actions"] == {"unchanged": result["n"]}
    )
    text = (
        f"{result['n']} objects: no-op cycle made {total} requests "
        f"({requests_text(requests)}; {writes(requests)} writes) for {len(KINDS)} kinds, "
        f"actions {result['noop']['actions']}"
    )
    return ok, text


def first_verdict(result: Obj) -> tuple[bool, str]:
    """PASS: every object created with one apply each, one LIST per kind, no FAILED result."""
    first = result["first"]
    counts = first["requests"]["counts"]
    n = result["n"]
    ok = (
        first["actions"] == {"created": n}
        and counts.get("PATCH", 0) == n
        and counts.get("LIST", 0) == len(KINDS)
        and writes(first["requests"]) == n
    )
    text = (
        f"{n} objects: first cycle {requests_text(first['requests'])}, "
        f"actions {first['actions']}" + (f", e.g. {first['failed'][0]}" if first["failed"] else "")
    )
    return ok, text


def table(results: list[Obj]) -> str:
    rows = [
        "| objects | cycle | wall s | ms/object | requests | writes | agent CPU s (both) "
        "| agent peak RSS MiB |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        for cycle, label in (("first", "first apply"), ("noop", "no-op")):
            c = r[cycle]
            rows.append(
                f"| {r['n']} | {label} | {c['seconds']:.2f} | {1000 * c['seconds'] / r['n']:.2f} "
                f"| {requests_text(c['requests'])} | {writes(c['requests'])} "
                f"| {r['agent_cpu_s']:.1f} | {r['peak_rss_mib']:.0f} |"
            )
    return "\n".join(rows)


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        client = version("kubernetes")
    except Exception:
        client = "unknown"
    return (
        f"{model}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, kubernetes client {client}"
    )


def section(command: str, results: list[Obj], verdicts: list[str], facts: str) -> str:
    verdict_lines = "\n".join(f"- {v}" for v in verdicts)
    return f"""{BEGIN}

## Reconcile cycle against the fake API server: first apply and no-op

What one enforce cycle of `KubeTarget` costs for N objects (one Namespace per 100, the rest
ConfigMaps, Services and Deployments in turn), against `tests/fake_apiserver.py` over real
HTTP on 127.0.0.1. The fake runs in its own process; the agent runs in a fresh process per
size, so its peak RSS (`os.wait4` on that child) is its own. The first cycle starts from an
empty cluster and an empty inventory; the no-op cycle reuses the target (discovery cached)
and the inventory the first returned, with nothing changed in between.

```sh
{command}
```

Machine: {facts}.

{table(results)}

Verdicts:

{verdict_lines}

Notes:
- There is no external baseline for a reconcile cycle, so the figures are absolute and
  "ms/object" is the per-object cost (wall time / N), not a ratio against anything.
- Wall time includes the fake's own work: it is Python too, serves each request in a thread
  and models server-side apply with field ownership, so against a real API server the split
  differs. "agent CPU s" is user + system time of the agent process for both cycles, its
  start-up and imports included.
- Requests are counted by the fake: LIST is a GET with a label selector (the agent's one
  list per kind), GET is discovery or a single object, PATCH is a server-side apply.
- The no-op target (one LIST per kind, zero writes) is checked as: exactly one LIST per
  kind's collection, no other request, every object UNCHANGED.

{END}
"""


def write_doc(text: str) -> None:
    replace_section(BEGIN, END, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="object counts, comma-separated")
    parser.add_argument(
        "--write-doc", action="store_true", help=f"update its section in {DOC.relative_to(REPO)}"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n < len(KINDS) for n in sizes):
        parser.error(f"each size must be at least {len(KINDS)}")
    results, verdicts, all_ok = [], [], True
    for n in sizes:
        start = time.perf_counter()
        result = measure(n)
        results.append(result)
        print(f"{n} objects measured in {time.perf_counter() - start:.1f} s", flush=True)
        for label, check in (("first apply", first_verdict), ("no-op", noop_verdict)):
            ok, text = check(result)
            all_ok &= ok
            verdicts.append(f"**{'PASS' if ok else 'FAIL'}** ({label}) {text}")
    facts = machine()
    print(table(results))
    print()
    for verdict in verdicts:
        print(verdict.replace("**", ""))
    print(f"machine: {facts}")
    if args.write_doc:
        command = f".venv/bin/python scripts/bench_reconcile.py --sizes {args.sizes} --write-doc"
        write_doc(section(command, results, verdicts, facts))
        print(f"wrote {DOC.relative_to(REPO)}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-fake":
        serve_fake()
    elif len(sys.argv) > 1 and sys.argv[1] == "--agent":
        run_agent(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
