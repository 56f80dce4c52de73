"""Strict manifest parsing throughput and peak memory (the cost behind the manifest limits).

Usage: .venv/bin/python scripts/bench_manifests.py [--mib 1,4,8] [--write-doc]
Each size runs in a fresh child process so its peak RSS is its own. ``--write-doc`` replaces
the manifest section at the end of docs/benchmarks.md (after the marker bench_bundle keeps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from edge_agent.bundle.manifests import YamlLimits, load_manifests
template = open(sys.argv[1]).read()
target = int(float(sys.argv[2]) * (1 << 20))
parts, size, i = [], 0, 0
while size < target:
    doc = template.replace("hello-web", f"hello-{i}")
    parts.append(doc); size += len(doc) + 4; i += 1
data = "---\n".join(parts).encode()
start = time.perf_counter()
objects = load_manifests(data, path="bench.yaml", limits=YamlLimits(max_documents=10**7, max_nodes=10**9))
took = time.perf_counter() - start
print(json.dumps({"bytes": len(data), "objects": len(objects), "seconds": took,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", default="1,4,8", help="manifest sizes in MiB, comma-separated")
    parser.add_argument("--write-doc", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    template = (
        Path(__file__).resolve().parents[1]
        / "bundles"
        / "hello-web"
        / "layers"
        / "app"
        / "app.yaml"
    )
    rows = [
        "| manifest MiB | objects | seconds | MB/s | peak RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for mib in args.mib.split(","):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(template), mib],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        rate = r["bytes"] / 1e6 / r["seconds"]
        rows.append(
            f"| {mib} | {r['objects']} | {r['seconds']:.2f} | {rate:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    table = "\n".join(rows)
    print(table)
    if args.write_doc:
        write_doc(table, args.mib)


MARKER = "<!-- other benchmarks below: kept by --write-doc -->"


def write_doc(table: str, sizes: str) -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    head = text.split(MARKER)[0].rstrip() + "\n\n"
    section = f"""{MARKER}

## Strict manifest parsing: throughput and peak memory

Why the default `max_total_manifest_bytes` is 8 MiB: manifests are parsed by libyaml's event
parser under PyYAML's Python composer (the strict checks hook into the composer), which holds
every object in memory. No baseline exists in the same run; the figures are absolute, from the
`bundles/hello-web` app manifest repeated with distinct names, one fresh process per size.

```sh
.venv/bin/python scripts/bench_manifests.py --mib {sizes} --write-doc
```

{table}
"""
    later = "<!-- bench_reconcile:begin -->"  # sections of other scripts after this one stay
    kept = "\n" + text[text.index(later) :] if later in text else ""
    doc.write_text(head + section + kept, encoding="utf-8")


if __name__ == "__main__":
    main()
