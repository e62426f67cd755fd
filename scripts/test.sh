#!/usr/bin/env bash
# Runs every test of the workspace and closes with one line over all test binaries together:
# `N passed, N failed` (cargo's own last line belongs to a doc-test run and reads "0 passed").
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ {
       for (i = 1; i < NF; i++) {
         if ($(i + 1) ~ /^passed/) passed += $i
         if ($(i + 1) ~ /^failed/) failed += $i
       }
     }
     END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
