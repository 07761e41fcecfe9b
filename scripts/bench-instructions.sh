#!/usr/bin/env bash
# Instructions per operation, per thread, for the per-process routes of benches/routes.rs:
# SoftHSM2 direct, keytrail with full audit, with `categories = []`, with
# `on_full = "drop"`, with `sessions = "summary"`, and in agent mode (a
# `keytrail agent --foreground` started in the temporary directory records the trail). Unlike times, instruction counts do
# not move when other work loads the machine. Each route runs under
# `valgrind --tool=callgrind` twice, with BENCH_ITERS=N and 2N operations of each workload
# named in the arguments (as for scripts/bench.sh, e.g. `opensession`); the difference
# divided by N leaves out the setup (scripts/cg-count.sh).
#
# valgrind does not offer the CPU's SHA extensions, so sha2 runs its software fallback
# under it: SHA-256 is counted apart, and on hardware with SHA-NI it costs several times
# fewer instructions than shown. Kernel work (the writer's write() calls) is not counted.
#
# Environment: BENCH_ITERS (N, default 2000), SOFTHSM2_MODULE, BENCH_BASELINE_SO (also
# count another keytrail build, full audit; in agent mode too unless BENCH_AGENT=0),
# BENCH_ROUTES (a regular expression: only the routes whose name matches), BENCH_AGENT=0
# (leave out the agent routes), BENCH_CACHE=1 (simulate the caches, `--cache-sim=yes`:
# also I1 misses, D1 read misses and D1 write misses per operation; a miss costs the
# calling thread ~10-15 cycles, so code and data footprint count, not only instructions),
# BENCH_CG_DIR (keep the callgrind files there, for `callgrind_annotate --inclusive=yes`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "bench-instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: scripts/bench-instructions.sh WORKLOAD-FILTER…" >&2; exit 2; }
module="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
n="${BENCH_ITERS:-2000}"
cargo build --release --lib --bins -q
bench=$(cargo bench --bench routes --no-run --message-format=json -q 2>/dev/null |
  grep '"name":"routes"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "bench-instructions.sh: benches/routes.rs did not build" >&2; exit 1; }
tmp="$(mktemp -d -t keytrail-instr.XXXXXX)"
agent_pid=""
trap 'rc=$?; [ -z "$agent_pid" ] || { kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; }; rm -rf "$tmp"; exit "$rc"' EXIT
mkdir "$tmp/tokens" "$tmp/cg"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$tmp" >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF="$tmp/softhsm2.conf"
softhsm2-util --init-token --free --label keytrail-bench --pin 1234 --so-pin 5678 >/dev/null
conf() { # name, extra [trail] line, [audit] lines
  printf 'module = "%s"\n[trail]\npath = "%s/trail/%s-{pid}.jsonl"\n%s\n%s\n' \
    "$module" "$tmp" "$1" "$2" "$3" >"$tmp/$1.toml"
}
conf full "" ""
conf off "" $'[audit]\ncategories = []'
conf drop 'on_full = "drop"' ""
conf sessions "" $'[audit]\nsessions = "summary"'
# The agent route: records go through the shared-memory ring to `keytrail agent`; the
# process under valgrind has no thread of keytrail's.
# (Started only when BENCH_ROUTES, if given, keeps it.)
if [ "${BENCH_AGENT:-1}" != 0 ] && [[ "keytrail agent" =~ ${BENCH_ROUTES:-.} ]]; then
  printf '[agent]\nsocket = "%s/agent.sock"\n[trail]\npath = "%s/agent-trail/trail.jsonl"\n' \
    "$tmp" "$tmp" >"$tmp/agentd.toml"
  target/release/keytrail agent --foreground --config "$tmp/agentd.toml" >"$tmp/agent.out" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do grep -q listening "$tmp/agent.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$tmp/agent.out" || { cat "$tmp/agent.out" >&2; echo "bench-instructions.sh: the agent did not start" >&2; exit 1; }
  conf agent "mode = \"agent\"
agent_socket = \"$tmp/agent.sock\"" ""
fi
routes=("direct|$module|" "keytrail|$PWD/target/release/libkeytrail.so|$tmp/full.toml"
  "keytrail categories=[]|$PWD/target/release/libkeytrail.so|$tmp/off.toml"
  "keytrail on_full=drop|$PWD/target/release/libkeytrail.so|$tmp/drop.toml"
  "keytrail sessions=summary|$PWD/target/release/libkeytrail.so|$tmp/sessions.toml")
[ -n "$agent_pid" ] && routes+=("keytrail agent|$PWD/target/release/libkeytrail.so|$tmp/agent.toml")
# BENCH_ROUTES: a pattern; only the routes whose name matches it run.
if [ -n "${BENCH_ROUTES:-}" ]; then
  kept=()
  for r in "${routes[@]}"; do [[ "${r%%|*}" =~ $BENCH_ROUTES ]] && kept+=("$r"); done
  routes=("${kept[@]}")
fi
if [ -n "${BENCH_BASELINE_SO:-}" ]; then
  routes+=("keytrail baseline build|$BENCH_BASELINE_SO|$tmp/full.toml")
  [ -n "$agent_pid" ] && routes+=("keytrail agent baseline build|$BENCH_BASELINE_SO|$tmp/agent.toml")
fi
cache=()
[ "${BENCH_CACHE:-0}" = 1 ] && cache=(--cache-sim=yes)
for w in "$@"; do
  for r in "${routes[@]}"; do
    IFS='|' read -r name so config <<<"$r"
    for k in "$n" $((2 * n)); do
      BENCH_ITERS=$k BENCH_MODULE="$so" KEYTRAIL_CONFIG="$config" \
        valgrind --tool=callgrind --separate-threads=yes "${cache[@]}" \
        --callgrind-out-file="$tmp/cg/run-$k.%p" "$bench" --child "$w" >/dev/null 2>"$tmp/valgrind.log" ||
        { tail -20 "$tmp/valgrind.log" >&2; exit 1; }
    done
    echo "$w, $name (thread 01: the caller; 02: keytrail's writer):"
    scripts/cg-count.sh "$n" "$tmp/cg/run-$n" "$tmp/cg/run-$((2 * n))" | sed 's/^/  /'
    if [ -n "${BENCH_CG_DIR:-}" ]; then
      mkdir -p "$BENCH_CG_DIR"
      for f in "$tmp"/cg/run-*; do mv "$f" "$BENCH_CG_DIR/${w// /_}.${name// /_}.${f##*/}"; done
    fi
    rm -f "$tmp"/cg/run-*
  done
done
