#!/usr/bin/env bash
# The main job on the embedded default store: create a log, submit build results, look them up
# with full verification (signature, sparse index proof, inclusion proof), prove an absence,
# and audit the log. Usage: scripts/demo.sh [DIR]   (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
trustix() { node dist/src/cli/main.js "$@"; }

STATE=${1:-$(mktemp -d)/log}
echo "== creating a log in $STATE"
trustix init --state "$STATE" --origin demo.trustix.local/builder1

echo "== submitting three build results (store path hash -> NAR sha256)"
trustix submit --state "$STATE" \
  0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k=c1a3d0ab649821db54ec4dc668c63489ea17738ca1727ed2638a230ede605e3f \
  1b9p07z77phvv2hf6gm9f28syp39f1ag=8a4e5f0b7b4e6d3a2c1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3928171605 \
  2c4c6cp8zkhqbq8g6k9k1yj0mb7c5jzr=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff

echo "== a thousand more from a file"
for i in $(seq 1 1000); do printf 'demo%04d %064x\n' "$i" "$i"; done > "$STATE.pairs"
trustix submit --state "$STATE" -f "$STATE.pairs"

echo "== looking up a present key (verified)"
trustix lookup --state "$STATE" 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k

echo "== looking up an absent key (non-inclusion verified; exit code 3)"
set +e
trustix lookup --state "$STATE" 3zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz
code=$?
set -e
[ "$code" -eq 3 ] || { echo "expected exit code 3 for a verified absence, got $code" >&2; exit 1; }

echo "== audit: replay every entry, recompute every published root"
trustix audit --state "$STATE"
trustix info --state "$STATE"
