#!/usr/bin/env bash
# Overhead benchmark: the same PKCS#11 calls made straight into SoftHSM2 ("direct") and
# through the built libkeytrail.so ("keytrail"), in one process, against one SoftHSM
# instance; plus OpenSC's pkcs11-spy as a third column when it is installed.
#
# Builds the release cdylib, makes a scratch SoftHSM2 token in a temp dir, writes the
# keytrail configuration, runs `cargo bench --bench overhead`, and removes the temp dir.
#
# Environment:
#   BENCH_JSON=<file>     also write the results as JSON to <file>
#   BENCH_SPY=0           leave out the pkcs11-spy column even when pkcs11-spy.so exists
#   BENCH_SPY_OUTPUT=<f>  where pkcs11-spy logs (default /dev/null; see below)
#   BENCH_ROUNDS, BENCH_ROUND_MS, BENCH_WARMUP_MS   tune the run (see benches/overhead.rs)
#   SOFTHSM2_MODULE       the SoftHSM2 module (default: the usual Debian paths)
# Extra arguments go to `cargo bench` (e.g. `scripts/bench.sh -- hmac` runs only the
# workloads whose name contains "hmac").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v softhsm2-util >/dev/null; then
  echo "bench.sh: installing softhsm2" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq softhsm2 >/dev/null
fi

module="${SOFTHSM2_MODULE:-}"
if [ -z "$module" ]; then
  for p in /usr/lib/softhsm/libsofthsm2.so \
           /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -e "$p" ]; then module="$p"; break; fi
  done
fi
[ -n "$module" ] && [ -e "$module" ] || { echo "bench.sh: SoftHSM2 module not found; set SOFTHSM2_MODULE" >&2; exit 1; }

cargo build --release --lib

tmp="$(mktemp -d -t keytrail-bench.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/tokens"
cat >"$tmp/softhsm2.conf" <<CONF
directories.tokendir = $tmp/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$tmp/softhsm2.conf"
softhsm2-util --init-token --free --label keytrail-bench --pin 1234 --so-pin 5678 >/dev/null

cat >"$tmp/keytrail.toml" <<CONF
module = "$module"
diagnostics = "$tmp/keytrail-diagnostics.log"
[trail]
path = "${BENCH_TRAIL:-$tmp/trail/keytrail.jsonl}"
${BENCH_AUDIT:+[audit]
$BENCH_AUDIT}
CONF
export KEYTRAIL_CONFIG="$tmp/keytrail.toml"
unset KEYTRAIL_MODULE
export SOFTHSM2_MODULE="$module"
export KEYTRAIL_SO="${KEYTRAIL_SO:-$PWD/target/release/libkeytrail.so}"

spy=""
for p in /usr/lib/x86_64-linux-gnu/pkcs11-spy.so /usr/lib/aarch64-linux-gnu/pkcs11-spy.so; do
  if [ -e "$p" ]; then spy="$p"; break; fi
done
if [ -n "$spy" ] && [ "${BENCH_SPY:-1}" != 0 ]; then
  # pkcs11-spy loads the module named by PKCS11SPY (the same SoftHSM instance) and logs
  # every call to PKCS11SPY_OUTPUT. By default that is /dev/null: a full run logs over a
  # gigabyte, and its writeback to disk disturbs the direct and keytrail rounds that are
  # interleaved with it. The column then shows what spy costs the calling thread
  # (formatting and write syscalls). BENCH_SPY_OUTPUT=file logs to a real file instead.
  export BENCH_SPY_SO="$spy" PKCS11SPY="$module" PKCS11SPY_OUTPUT="${BENCH_SPY_OUTPUT:-/dev/null}"
else
  unset BENCH_SPY_SO
fi

status=0
cargo bench --bench overhead "$@" || status=$?

if [ -s "$tmp/trail/keytrail.jsonl" ]; then
  records=$(wc -l <"$tmp/trail/keytrail.jsonl")
  bytes=$(wc -c <"$tmp/trail/keytrail.jsonl")
  echo "trail: $records records, $bytes bytes, $((bytes / records)) bytes per record (full audit on)"
fi
if [ -s "$tmp/keytrail-diagnostics.log" ]; then
  echo "--- keytrail diagnostics ---" >&2
  cat "$tmp/keytrail-diagnostics.log" >&2
fi
if [ -n "${BENCH_SPY_SO:-}" ] && [ -f "$PKCS11SPY_OUTPUT" ]; then
  echo "pkcs11-spy wrote $(du -h "$PKCS11SPY_OUTPUT" | cut -f1) of log to $PKCS11SPY_OUTPUT" >&2
fi
exit "$status"
