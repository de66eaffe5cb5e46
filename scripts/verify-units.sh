#!/usr/bin/env bash
# Checks the systemd units in systemd/ with `systemd-analyze verify`. The units start
# /usr/local/bin/trustix, which need not exist on this machine, and `verify` insists on an
# executable ExecStart, so the check runs on copies whose ExecStart is this checkout's built CLI
# run by this machine's node. Any message about the units is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
node=$(command -v node)
cli="$PWD/dist/src/cli/main.js"
[ -f "$cli" ] || { echo "verify-units: $cli is missing (npm run build)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in systemd/*.service; do
  grep -q '^ExecStart=/usr/local/bin/trustix ' "$unit" || { echo "verify-units: $unit: ExecStart must start /usr/local/bin/trustix" >&2; exit 1; }
  sed "s|^ExecStart=/usr/local/bin/trustix |ExecStart=$node $cli |" "$unit" >"$tmp/${unit##*/}"
done
# without a running systemd (a container), verify still parses and checks each unit offline
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$tmp"/*.service 2>&1) || { echo "$out" >&2; exit 1; }
if grep -F "$tmp" <<<"$out" >&2; then exit 1; fi
echo "verify-units: $(ls systemd/*.service | wc -l) units verified"
