#!/usr/bin/env bash
# Instructions per operation, per thread, from two callgrind runs of the same workload
# (BENCH_ITERS=n and 2n, `--separate-threads=yes`): the difference divided by n removes
# the setup. Prints "thread total sha2 rest" per thread; sha2 is SHA-256 (valgrind hides
# the CPU's SHA extensions, so its software fallback runs and is counted apart).
# Usage: scripts/cg-count.sh N PREFIX_N PREFIX_2N (scripts/bench-instructions.sh runs it)
set -euo pipefail
n=$1; a=$2; b=$3
count() { # file -> "total sha2"
  local total sha
  total=$(grep -m1 '^summary:' "$1" | awk '{print $2}')
  sha=$(callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | grep 'sha2::sha256' | awk '{gsub(",","",$1); s+=$1} END {print s+0}')
  echo "$total $sha"
}
for fa in "$a".*-*; do
  t=${fa##*-}
  fb=$(ls "$b".*-"$t" 2>/dev/null | head -1) || continue
  [ -n "$fb" ] || continue
  read -r ta sa <<<"$(count "$fa")"
  read -r tb sb <<<"$(count "$fb")"
  awk -v t="$t" -v n="$n" -v ta="$ta" -v tb="$tb" -v sa="$sa" -v sb="$sb" 'BEGIN {
    printf "thread %s: %.0f instructions per operation (%.0f in SHA-256, %.0f other)\n", t, (tb-ta)/n, (sb-sa)/n, (tb-ta-(sb-sa))/n }'
done
