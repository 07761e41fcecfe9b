#!/usr/bin/env bash
# Measures `keytrail verify` and `keytrail report` on a large synthetic trail (default
# 1,000,000 records in 4 streams), written by keytrail's own encoder and hash chain:
# wall time and maximum resident memory (GNU time).
#
#   scripts/bench-verify.sh [RECORDS] [STREAMS]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
streams=${2:-4}
[ -x /usr/bin/time ] || { echo "bench-verify.sh: installing GNU time" >&2; apt-get install -y -qq time >/dev/null; }
cargo build --release --bins --examples -q
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trail="$dir/keytrail.jsonl"
./target/release/examples/gen_trail "$trail" "$records" "$streams"
size=$(du -m "$trail" | cut -f1)
echo "trail: $records records, $streams streams, ${size} MiB"
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" >"$dir/out" 2>/dev/null || true
  read -r secs kib <"$dir/time"
  printf '%-8s %6.2f s  %7.1f MiB max RSS  %6.0f records/s\n' "$name" "$secs" "$(echo "$kib/1024" | bc -l)" "$(echo "$records/$secs" | bc -l)"
}
measure verify ./target/release/keytrail verify --quiet "$trail"
head -c 300 "$dir/out" | grep -q "valid" || { echo "verify did not pass:"; cat "$dir/out"; exit 1; }
measure report ./target/release/keytrail report --quiet "$trail"
