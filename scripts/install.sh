#!/usr/bin/env bash
# Install edge-agent on a host: binary, systemd unit, config and initial trust root.
# Idempotent: running it again changes nothing an operator set (an existing config or trust
# root is never overwritten; the binary and unit are replaced only when they differ).
#
# Usage:
#   scripts/install.sh --binary FILE [--config FILE] [--root-json FILE] [--root DIR] [--no-systemctl]
#   scripts/install.sh --uninstall [--purge] [--root DIR] [--no-systemctl]
#
#   --binary FILE     the edge-agent executable (scripts/build-binary.sh makes one)
#   --config FILE     the agent config to install as /etc/edge-agent/config.yaml (if none yet)
#   --root-json FILE  the initial trust root, /etc/edge-agent/root.json (if none yet)
#   --root DIR        install below DIR instead of / (images, tests); no user, no systemctl
#   --no-systemctl    do not run systemctl (daemon-reload, enable --now / disable --now)
#   --uninstall       remove the binary, the unit and the binary's unpack folder
#                     (/var/cache/edge-agent); keep config and state (/var/lib/edge-agent)
#   --purge           with --uninstall: remove config and state too (the trust state is lost)
set -euo pipefail

root=/ binary= config= root_json= systemctl=yes uninstall= purge= changed=
value() {  # value OPTION ARGS...: the option's value, or exit 2
  [ $# -ge 2 ] && [ -n "$2" ] || { echo "install.sh: $1 needs a value" >&2; exit 2; }
  printf '%s' "$2"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$(value "$@"); shift 2 ;;
    --config) config=$(value "$@"); shift 2 ;;
    --root-json) root_json=$(value "$@"); shift 2 ;;
    --root) root=$(value "$@"); shift 2 ;;
    --no-systemctl) systemctl=; shift ;;
    --uninstall) uninstall=yes; shift ;;
    --purge) purge=yes; shift ;;
    *) echo "install.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
unit_src=$here/edge-agent.service
bin_dst=$root/usr/local/bin/edge-agent
unit_dst=$root/etc/systemd/system/edge-agent.service
etc=$root/etc/edge-agent
state=$root/var/lib/edge-agent
cache=$root/var/cache/edge-agent  # the unit's CacheDirectory: where the binary unpacks itself
[ "$root" = / ] || systemctl=
say() { echo "install.sh: $*"; }

run_systemctl() {
  if [ -n "$systemctl" ] && [ -d /run/systemd/system ]; then systemctl "$@"; fi
}

if [ -n "$uninstall" ]; then
  run_systemctl disable --now edge-agent.service || true
  rm -f "$bin_dst" "$unit_dst"
  rm -rf "$cache"
  run_systemctl daemon-reload || true
  if [ -n "$purge" ]; then
    rm -rf "$etc" "$state"
    say "removed edge-agent, its config and its state"
  else
    say "removed edge-agent; kept $etc and $state (--purge removes them)"
  fi
  exit 0
fi

[ -n "$binary" ] || { echo "install.sh: --binary FILE is required" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 2; }
[ -f "$unit_src" ] || { echo "install.sh: $unit_src is missing" >&2; exit 2; }

if [ "$root" = / ] && ! id edge-agent >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
  say "created system user edge-agent"
fi

place() {  # place SRC DST MODE: copy only when missing or different
  local src=$1 dst=$2 mode=$3
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then return 0; fi
  mkdir -p "$(dirname "$dst")"
  install -m "$mode" "$src" "$dst.new" && mv -f "$dst.new" "$dst"
  say "installed $dst"
  changed=yes
}
keep() {  # keep SRC DST MODE: install only when DST does not exist (the operator's copy wins)
  local src=$1 dst=$2 mode=$3
  if [ -e "$dst" ]; then
    cmp -s "$src" "$dst" || say "kept the existing $dst (not overwritten)"
    return 0
  fi
  mkdir -p "$(dirname "$dst")"
  install -m "$mode" "$src" "$dst"
  say "installed $dst"
}

place "$binary" "$bin_dst" 0755
place "$unit_src" "$unit_dst" 0644
mkdir -p "$etc" && chmod 0755 "$etc"
[ -z "$config" ] || keep "$config" "$etc/config.yaml" 0640
[ -z "$root_json" ] || keep "$root_json" "$etc/root.json" 0644
if [ "$root" = / ] && [ -f "$etc/config.yaml" ]; then chgrp edge-agent "$etc/config.yaml"; fi

if [ ! -f "$etc/config.yaml" ]; then
  say "no $etc/config.yaml yet: write one (see README), then: systemctl enable --now edge-agent"
  run_systemctl daemon-reload
  exit 0
fi
run_systemctl daemon-reload
run_systemctl enable --now edge-agent.service
# A new binary or unit takes a restart (a reload would keep the old binary running).
if [ -n "$changed" ]; then run_systemctl restart edge-agent.service; fi
say "edge-agent is installed and up to date"
