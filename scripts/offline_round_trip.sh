#!/usr/bin/env bash
# The offline loop, end to end, on an embedded default (no cluster, no server to provide):
# the management side signs bundles; the site's daemon (`edge-agent run`, as systemd runs it)
# takes them from a "USB stick" plugged into a drop folder, enforces them into a manifest
# folder (as k3s would auto-apply it), heals a file changed behind its back, refuses a tampered
# and a replayed bundle, and leaves a signed status report on the stick. At headquarters the
# report is ingested by a management stub on loopback, whose signed receipt rides back on the
# stick and marks the carried events delivered.
# Usage: scripts/offline_round_trip.sh [WORKDIR]   (default: ./demo-run, recreated)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$here/demo-run}
bin=${EDGE_AGENT_BIN:-$here/.venv/bin}
py=$bin/python
[ -x "$py" ] || py=python3
rm -rf "$work" && mkdir -p "$work/media" "$work/site" "$work/stick/edge-bundles" "$work/k3s-manifests"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# until CONDITION (a Python expression over `d`, the status JSON) holds, 60 s at most
until_status() {
  local deadline=$((SECONDS + 60)) doc
  while [ "$SECONDS" -lt "$deadline" ]; do
    doc=$("$bin/edge-agent" status --json 2>&1 || true)
    if "$py" -c "import json, sys; d = json.loads(sys.argv[1]); sys.exit(0 if ($1) else 1)" \
      "$doc" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for: $1; status said: ${doc:0:2000}" >&2
  tail -20 "$work/daemon.log" >&2; exit 1
}
plug_in() { mv "$work/stick" "$work/media/usb1"; }
pull_out() {
  mv "$work/media/usb1" "$work/stick"
  for _ in $(seq 100); do grep -q "usb1/edge-bundles gone" "$work/daemon.log" && return 0; sleep 0.1; done
  echo "the daemon did not notice the stick was pulled" >&2; exit 1
}

step "management: create signing keys and trust root v1"
"$bin/mgmt-stub" keys init --keys "$work/keys"

step "site: provision the agent with the trust root and a config"
cp "$work/keys/root.json" "$work/site/root.json"
cat > "$work/site/config.yaml" <<CFG
cluster_id: site-berlin-01
labels: {region: eu, tier: edge}
paths:
  state_dir: $work/site/state
  initial_root: $work/site/root.json
drop_folders: ["$work/media/*/edge-bundles"]
target: {kind: manifest-dir, folder: "$work/k3s-manifests"}
CFG
export EDGE_AGENT_CONFIG=$work/site/config.yaml
"$bin/edge-agent" status || echo "(exit $? = not initialised, as expected)"

step "site: start the daemon (edge-agent run, what the systemd unit starts)"
"$bin/edge-agent" run >"$work/daemon.log" 2>&1 &
daemon=$!; pids+=("$daemon")
for _ in $(seq 300); do grep -q "watching drop folders" "$work/daemon.log" && break; sleep 0.1; done
grep "watching drop folders" "$work/daemon.log"

step "management: build and sign revision 1 (hello-web) onto the USB stick"
"$bin/mgmt-stub" bundle build --profile "$here/bundles/hello-web" --target site-berlin-01 \
  --revision 1 --keys "$work/keys" -o "$work/stick/edge-bundles/hello-web-r1.bundle"
"$bin/edge-agent" verify "$work/stick/edge-bundles/hello-web-r1.bundle"

step "site: plug the stick in: the daemon imports and enforces it, and leaves a status report"
plug_in
until_status 'd["policy"] and d["policy"]["revision"] == 1 and d["last_cycle"] and d["reports"]'
ls "$work/k3s-manifests" "$work/media/usb1/edge-bundles"

step "site: a manifest changed behind the agent's back is healed"
victim=$(ls "$work/k3s-manifests"/*.yaml | head -1)
original=$(cat "$victim")
echo "# changed by hand" >> "$victim"
for _ in $(seq 300); do [ "$(cat "$victim")" = "$original" ] && break; sleep 0.1; done
[ "$(cat "$victim")" = "$original" ] || { echo "tampered manifest not healed"; exit 1; }
grep "written (file changed)\|written (" "$work/daemon.log" | tail -1

step "management: rotate the root, build revision 2; an attacker adds a tampered copy"
pull_out
old_policy=$("$bin/mgmt-stub" keys show --keys "$work/keys" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["policy_keys"][0])')
"$bin/mgmt-stub" keys rotate --keys "$work/keys" --new-policy-key --revoke "$old_policy"
"$bin/mgmt-stub" bundle build --profile "$here/bundles/baseline" --target region=eu,tier=edge \
  --revision 2 --keys "$work/keys" -o "$work/stick/edge-bundles/baseline-r2.bundle" --gzip
"$py" - "$work/stick/edge-bundles/baseline-r2.bundle" "$work/stick/edge-bundles/evil-r3.bundle" <<'PY'
import gzip, sys
data = bytearray(gzip.decompress(open(sys.argv[1], "rb").read()))
i = data.index(b"default-deny"); data[i] ^= 0x20      # flip one byte of a manifest
open(sys.argv[2], "wb").write(bytes(data))
PY

step "site: plug it in again: revision 2 applies, the tampered copy is rejected"
plug_in
until_status 'd["policy"]["revision"] == 2 and "revision 2 " in d["last_cycle"]["line"]
  and any(i["result"] == "rejected" for i in d["imports"])'
ls "$work/k3s-manifests"
if "$bin/edge-agent" import "$work/media/usb1/edge-bundles/hello-web-r1.bundle"; then
  echo "replay of revision 1 accepted!"; exit 1
fi

step "site: status"
"$bin/edge-agent" status || true

step "headquarters: the stick's status report is ingested by the management stub (loopback)"
pull_out
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/mgmt-stub" serve --data "$work/hq" --keys "$work/keys" --listen "127.0.0.1:$port" \
  >"$work/stub.log" 2>&1 &
pids+=("$!")
export MGMT_STUB_URL=http://127.0.0.1:$port MGMT_STUB_CREDENTIAL_FILE=$work/hq/admin.credential
for _ in $(seq 300); do [ -s "$work/hq/admin.credential" ] && "$bin/mgmt-stub" cluster list >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/mgmt-stub" cluster register site-berlin-01 --labels region=eu,tier=edge \
  --agent-key "$("$bin/edge-agent" agent-key)"
reports=("$work"/stick/edge-bundles/*.report)
for report in "${reports[@]}"; do "$bin/mgmt-stub" ingest "$report"; done
shown=$("$bin/mgmt-stub" cluster show site-berlin-01)
head -6 <<<"$shown"

step "site: the stick comes back with the receipt: the carried events are delivered"
queued=$({ "$bin/edge-agent" status --json || true; } | "$py" -c 'import json,sys; print(json.load(sys.stdin)["outbox"]["count"])')
plug_in
until_status "d['outbox']['count'] < $queued"
grep "receipt of" "$work/daemon.log" | tail -1
"$bin/edge-agent" status || true

step "site: stop the daemon (SIGTERM, as systemctl stop)"
kill -TERM "$daemon"
code=0; wait "$daemon" || code=$?
[ "$code" -eq 0 ] || { echo "daemon exited $code"; tail -20 "$work/daemon.log"; exit 1; }
tail -1 "$work/daemon.log"

code=0; json=$("$bin/edge-agent" status --json) || code=$?
# Exit 1 = degraded: correct, a tampered bundle was offered since the last good import.
[ "$code" -eq 1 ] || { echo "status exited $code, expected 1 (degraded)"; exit 1; }
"$py" -c '
import json, sys
d = json.load(sys.stdin)
assert d["policy"]["revision"] == 2 and d["trust"]["root_version"] == 2, d
print("\nround trip OK: revision", d["policy"]["revision"], "in force under root version",
      d["trust"]["root_version"] , "; status reports out, receipts back:",
      d["outbox"]["count"], "events still queued")' <<<"$json"
