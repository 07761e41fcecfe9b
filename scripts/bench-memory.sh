#!/usr/bin/env bash
# Memory bound: resident memory of a process making HMACs through libkeytrail.so on many
# threads while the trail is a slow sink (a FIFO that a thread of the same process drains
# at BENCH_SINK_RATE bytes/s), for several writer queue sizes. The writer falls behind,
# the queue fills, callers wait for room (on_full = "wait"), and resident memory should
# stop growing at about the queue's size. Prints a markdown table per queue size: RSS
# before keytrail started (before C_Initialize), after setup (the writer and its queue
# started; the queue's slots are allocated and touched up front), and the maximum (VmHWM)
# under the load, with what the queue took per slot and what the load added.
#
# Environment:
#   BENCH_QUEUES="1024 8192 65536"   queue sizes to run
#   BENCH_ON_FULL=wait|drop          the queue-full policy (default wait)
#   BENCH_THREADS=8, BENCH_SECONDS=10, BENCH_SINK_RATE=1000000 (bytes/s)
#   SOFTHSM2_MODULE                  the SoftHSM2 module (default: the usual Debian paths)
set -euo pipefail
cd "$(dirname "$0")/.."

module="${SOFTHSM2_MODULE:-}"
if [ -z "$module" ]; then
  for p in /usr/lib/softhsm/libsofthsm2.so \
           /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -e "$p" ]; then module="$p"; break; fi
  done
fi
[ -n "$module" ] && [ -e "$module" ] || { echo "bench-memory.sh: SoftHSM2 module not found; set SOFTHSM2_MODULE" >&2; exit 1; }

cargo build --release --lib
cargo bench --bench memory --no-run

tmp="$(mktemp -d -t keytrail-memory.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/tokens"
cat >"$tmp/softhsm2.conf" <<CONF
directories.tokendir = $tmp/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$tmp/softhsm2.conf"
softhsm2-util --init-token --free --label keytrail-memory --pin 1234 --so-pin 5678 >/dev/null
export KEYTRAIL_SO="${KEYTRAIL_SO:-$PWD/target/release/libkeytrail.so}"
unset KEYTRAIL_MODULE
export BENCH_FIFO="$tmp/trail.fifo"
export BENCH_SINK_RATE="${BENCH_SINK_RATE:-1000000}" BENCH_THREADS="${BENCH_THREADS:-8}"
export BENCH_SECONDS="${BENCH_SECONDS:-10}"
on_full="${BENCH_ON_FULL:-wait}"

rows=(); setups=()
for q in ${BENCH_QUEUES:-1024 8192 65536}; do
  cat >"$tmp/keytrail.toml" <<CONF
module = "$module"
diagnostics = "$tmp/keytrail-diagnostics.log"
[trail]
path = "$BENCH_FIFO"
queue = $q
on_full = "$on_full"
CONF
  export KEYTRAIL_CONFIG="$tmp/keytrail.toml"
  echo "--- queue $q, on_full = $on_full, $BENCH_THREADS threads, sink $BENCH_SINK_RATE B/s, $BENCH_SECONDS s" >&2
  out="$(cargo bench -q --bench memory 2>&1)" || { echo "$out" >&2; exit 1; }
  echo "$out" | grep -v '^result' >&2
  r="$(echo "$out" | grep '^result')"
  get() { echo "$r" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  before=$(get before_rss_kb); base=$(get baseline_rss_kb); hwm=$(get vmhwm_kb)
  growth=$(get growth_kb); sink=$(get sink_bytes)
  setups+=("$q $((base - before))")
  rows+=("| $q | $on_full | $(get ops_per_s) | $sink | $before | $base | $hwm | $((base - before)) | $growth |")
done
rm -f "$BENCH_FIFO"

echo
echo "| queue | on_full | ops/s | bytes the sink took | RSS before keytrail kB | RSS after setup kB | max RSS (VmHWM) kB | setup added kB | load added kB |"
echo "| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
if [ ${#setups[@]} -ge 2 ]; then
  # What one more queue slot costs: the slope of "setup added" between the smallest and
  # the largest queue (SoftHSM's and keytrail's fixed setup cancel out).
  printf '%s\n' "${setups[@]}" | sort -n | sed -n '1p;$p' | paste -sd' ' |
    awk '{ printf "resident memory per queue slot (largest vs smallest queue): %.0f bytes\n", ($4 - $2) * 1024 / ($3 - $1) }'
fi
echo "$BENCH_THREADS threads of HMAC-SHA256 for $BENCH_SECONDS s each; trail = FIFO drained at $BENCH_SINK_RATE B/s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -s "$tmp/keytrail-diagnostics.log" ]; then
  echo "--- keytrail diagnostics ---" >&2
  cat "$tmp/keytrail-diagnostics.log" >&2
fi
