#!/usr/bin/env bash
# Create ./.venv and install edge-agent with its test tools. Idempotent; safe to re-run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11 or newer is required ($python is $("$python" -V 2>&1))" >&2; exit 2; }
[ -x "$here/.venv/bin/python" ] || "$python" -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[test,stub]"
