#!/usr/bin/env bash
# Instructions per operation, per thread, from two callgrind runs of the same workload
# (BENCH_ITERS=n and 2n, `--separate-threads=yes`): the difference divided by n removes
# the setup. Prints "thread total sha2 rest" per thread; sha2 is SHA-256 (valgrind hides
# the CPU's SHA extensions, so its software fallback runs and is counted apart). When the
# runs simulated the caches (`--cache-sim=yes`), also the I1 misses, D1 read misses and D1
# write misses per operation.
# Usage: scripts/cg-count.sh N PREFIX_N PREFIX_2N (scripts/bench-instructions.sh runs it)
set -euo pipefail
n=$1; a=$2; b=$3
count() { # file -> "total sha2 I1mr D1mr D1mw" (the misses "-" without the cache simulation)
  local total sha misses
  total=$(grep -m1 '^summary:' "$1" | awk '{print $2}')
  # The columns by name: the events: line says which the summary: line holds.
  misses=$(awk '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
    /^summary:/ { if ("I1mr" in col) print $col["I1mr"], $col["D1mr"], $col["D1mw"]; else print "- - -"; exit }' "$1")
  sha=$(callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | grep 'sha2::sha256' | awk '{gsub(",","",$1); s+=$1} END {print s+0}')
  echo "$total $sha $misses"
}
for fa in "$a".*-*; do
  t=${fa##*-}
  fb=$(ls "$b".*-"$t" 2>/dev/null | head -1) || continue
  [ -n "$fb" ] || continue
  read -r ta sa ia ra wa <<<"$(count "$fa")"
  read -r tb sb ib rb wb <<<"$(count "$fb")"
  awk -v t="$t" -v n="$n" -v ta="$ta" -v tb="$tb" -v sa="$sa" -v sb="$sb" \
    -v ia="$ia" -v ib="$ib" -v ra="$ra" -v rb="$rb" -v wa="$wa" -v wb="$wb" 'BEGIN {
    printf "thread %s: %.0f instructions per operation (%.0f in SHA-256, %.0f other)", t, (tb-ta)/n, (sb-sa)/n, (tb-ta-(sb-sa))/n
    if (ia != "-") printf "; misses per operation: I1 %.1f, D1 read %.1f, D1 write %.1f", (ib-ia)/n, (rb-ra)/n, (wb-wa)/n
    printf "\n" }'
done
