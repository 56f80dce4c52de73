#!/usr/bin/env bash
# Build dist/edge-agent: the agent as one self-contained executable (PyInstaller, one file).
# Idempotent (each run builds afresh in build/pyinstaller); any failure stops it, loudly.
#
# Usage: scripts/build-binary.sh [--compressed] [--dist DIR]
#
#   --compressed  deflate the unpacked files too: a smaller file, a slower start (every start
#                 inflates them again; docs/benchmarks.md has both figures)
#   --dist DIR    write DIR/edge-agent instead of dist/edge-agent
#
# What goes in is in scripts/edge-agent.spec: the `edge-agent` command (edge_agent.cli:main),
# kubernetes as a hidden import (edge_agent imports it lazily, through importlib), --strip;
# left out: the management stub, everything only tests, the stub and the tools use, and the
# unused parts of dependencies (the spec names them and why). Not pydoc: kubernetes imports it.
#
# The executable unpacks itself into $TMPDIR (else /tmp) at every start: that folder must
# allow exec. The systemd unit gives it one of its own (docs/operations.md, "The binary").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
fail() { echo "build-binary: $*" >&2; exit 1; }

compress=0 dist=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --compressed) compress=1; shift ;;
    --dist) [ $# -ge 2 ] && [ -n "$2" ] || fail "--dist needs a folder"; dist=$2; shift 2 ;;
    *) fail "unknown option $1 (see the header of $0)" ;;
  esac
done

for tool in objdump strip ldd; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (Debian: apt-get install binutils libc-bin)"
done
scripts/setup.sh || fail "scripts/setup.sh failed"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
.venv/bin/python -m pip install --disable-pip-version-check -e ".[build]" >"$log" 2>&1 \
  || { cat "$log" >&2; fail "cannot install the build extra (PyInstaller) into .venv"; }

work=build/pyinstaller
rm -rf "$work" "$dist/edge-agent"
mkdir -p "$work" "$dist"
EDGE_AGENT_BINARY_COMPRESS=$compress .venv/bin/pyinstaller --noconfirm --clean \
  --log-level WARN --distpath "$dist" --workpath "$work" scripts/edge-agent.spec \
  || fail "PyInstaller failed (see above)"

binary=$dist/edge-agent
[ -x "$binary" ] || fail "$binary was not produced"
"$binary" --help >/dev/null || fail "$binary --help does not run"
bytes=$(stat -c %s "$binary")
echo "build-binary: $binary $(awk -v b="$bytes" 'BEGIN { printf "%.1f MB (%d bytes)", b / 1e6, b }')"
