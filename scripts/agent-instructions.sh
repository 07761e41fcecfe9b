#!/usr/bin/env bash
# Instructions the agent spends per record: examples/agent_throughput drives N and then 2N
# records through a `keytrail agent` that runs under `valgrind --tool=callgrind`; the
# difference divided by N leaves out the agent's start and stop. SHA-256 is counted apart
# (valgrind hides the CPU's SHA extensions, so sha2's software fallback runs and is
# counted; on hardware with SHA-NI it costs several times fewer instructions).
#
# Environment: AGENT_RECORDS (N, default 10000), KEYTRAIL_BIN (another keytrail binary to
# count, default target/release/keytrail).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "agent-instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
n="${AGENT_RECORDS:-10000}"
cargo build --release -q --bin keytrail --example agent_throughput
bin="$(realpath "${KEYTRAIL_BIN:-target/release/keytrail}")"
tmp="$(mktemp -d -t keytrail-agent-instr.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
# The example starts whatever KEYTRAIL_BIN names: here, the agent under callgrind.
cat >"$tmp/agent" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="\$CG_OUT" "$bin" "\$@" 2>>"$tmp/valgrind.log"
WRAP
chmod +x "$tmp/agent"
for k in "$n" $((2 * n)); do
  CG_OUT="$tmp/cg.$k" KEYTRAIL_BIN="$tmp/agent" AGENT_RECORDS=$k \
    target/release/examples/agent_throughput >/dev/null ||
    { tail -20 "$tmp/valgrind.log" >&2; exit 1; }
done
count() { # file -> "total sha2"
  local total sha
  total=$(grep -m1 '^summary:' "$1" | awk '{print $2}')
  sha=$(callgrind_annotate --inclusive=yes "$1" 2>/dev/null | grep -m1 'sha2::sha256::compress256 \[' |
    awk '{gsub(",","",$1); print $1}')
  echo "$total ${sha:-0}"
}
read -r ta sa <<<"$(count "$tmp/cg.$n")"
read -r tb sb <<<"$(count "$tmp/cg.$((2 * n))")"
awk -v n="$n" -v ta="$ta" -v tb="$tb" -v sa="$sa" -v sb="$sb" 'BEGIN {
  printf "agent: %.0f instructions per record (%.0f in SHA-256, %.0f other)\n", (tb-ta)/n, (sb-sa)/n, (tb-ta-(sb-sa))/n }'
