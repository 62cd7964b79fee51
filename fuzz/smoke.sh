#!/usr/bin/env bash
# A short bounded fuzz run for CI: builds the targets with nightly and runs each for
# 20 s (FUZZ_SECONDS to change it) starting from the committed corpus. New inputs go
# to a temporary directory, so the committed corpus is read, never changed. Exits
# non-zero on the first crash; libFuzzer leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
targets=(header config policy hlog)

cargo +nightly fuzz build
for t in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
  cargo +nightly fuzz run "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
  rm -rf "$scratch"
  trap - EXIT
done
echo "fuzz smoke: no crash"
