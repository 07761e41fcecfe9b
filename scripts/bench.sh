#!/usr/bin/env bash
# Overhead benchmark. By default (benches/routes.rs) every route runs in its own process,
# as an application sees it, in interleaved rounds: SoftHSM2 direct, direct with one idle
# thread, keytrail with full audit, with `categories = []` and with `on_full = "drop"`,
# keytrail in agent mode (a `keytrail agent` started here; full audit and `categories = []`),
# `sessions = "summary"` for the open + close workload (embedded and agent), pkcs11-spy and
# p11-kit log-calls; it prints each route's ns/op and its ratio to direct and to direct + idle
# thread, with the min-max of the per-round ratios, and the keytrail writer thread's CPU
# time per operation. scripts/bench-instructions.sh counts instructions per operation
# instead (stable when other work loads the machine).
# BENCH_ROUNDS (default 7) and BENCH_ROUND_MS (default 300) tune it.
#
# BENCH_SAME_PROCESS=1 runs the older same-process benchmark (benches/overhead.rs): the same PKCS#11 calls made straight into SoftHSM2 ("direct") and
# through the built libkeytrail.so ("keytrail"), in one process, against one SoftHSM
# instance; plus OpenSC's pkcs11-spy and p11-kit's proxy with `log-calls: yes` as further
# columns when they are installed. Also reports what keytrail's trail took per workload
# (records and bytes per operation, caller and writer cost per record).
#
# Builds the release cdylib, makes a scratch SoftHSM2 token in a temp dir, writes the
# keytrail configuration, runs `cargo bench --bench overhead`, and removes the temp dir.
#
# Environment:
#   BENCH_JSON=<file>     also write the results as JSON to <file>
#   BENCH_SPY=0           leave out the pkcs11-spy column even when pkcs11-spy.so exists
#   BENCH_SPY_OUTPUT=<f>  where pkcs11-spy logs (default /dev/null; see below)
#   BENCH_P11KIT=0        leave out the p11-kit log-calls column even when p11-kit-proxy.so
#                         exists
#   BENCH_P11KIT_OUTPUT=<f>  where p11-kit's call log (the process's stderr) goes (default
#                         /dev/null; see below)
#   BENCH_TRAIL=<path>    the trail (default: in the temp dir); BENCH_AUDIT: lines for [audit]
#   BENCH_QUEUE=<n>, BENCH_ON_FULL=wait|drop   the writer queue ([trail] queue, on_full)
#   BENCH_ROUNDS, BENCH_ROUND_MS, BENCH_WARMUP_MS   tune the run (see benches/overhead.rs)
#   BENCH_PIN=0           let the calling thread of a single-threaded workload move between
#                         CPUs (by default, with 2 CPUs or more, it stays on CPU 0 in every
#                         route, which takes the migrations out of the rounds' noise; keytrail's
#                         writer thread and the agent keep every CPU)
#   BENCH_BASELINE_SO=<libkeytrail.so>  also run another keytrail build (full audit), interleaved,
#                         embedded and through the agent (which refuses a build of another ring layout)
#   BENCH_VOLUME=0        skip the trail bytes per 1,000 signatures in each usage mode
#   BENCH_SESSIONS=0      leave out the `sessions = "summary"` routes (embedded and agent,
#                         open + close workload only)
#   SOFTHSM2_MODULE       the SoftHSM2 module (default: the usual Debian paths)
# Extra arguments go to `cargo bench` (e.g. `scripts/bench.sh -- hmac` runs only the
# workloads whose name contains "hmac").
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BENCH_PIN:-1}" != 0 ] && [ "$(nproc)" -ge 2 ]; then export BENCH_PIN_CPU=0; fi

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

if [ "${BENCH_SAME_PROCESS:-0}" = 1 ]; then
  trail="${BENCH_TRAIL:-$tmp/trail/keytrail.jsonl}"
else
  # (In a variable: a literal `}` inside ${…:-…} would end the expansion.)
  per_process="$tmp/trail/keytrail-{pid}.jsonl"
  trail="${BENCH_TRAIL:-$per_process}"
fi
cat >"$tmp/keytrail.toml" <<CONF
module = "$module"
diagnostics = "$tmp/keytrail-diagnostics.log"
[trail]
path = "$trail"
${BENCH_QUEUE:+queue = $BENCH_QUEUE}
${BENCH_ON_FULL:+on_full = "$BENCH_ON_FULL"}
${BENCH_AUDIT:+[audit]
$BENCH_AUDIT}
CONF
export KEYTRAIL_CONFIG="$tmp/keytrail.toml"
# The per-process routes: full audit, and auditing switched off (only the writer remains).
export BENCH_CONFIG_FULL="$tmp/keytrail.toml" BENCH_CONFIG_OFF="$tmp/keytrail-off.toml"
sed -e '/^\[audit\]/,$d' "$tmp/keytrail.toml" >"$BENCH_CONFIG_OFF"
printf '[audit]\ncategories = []\n' >>"$BENCH_CONFIG_OFF"
# Full audit with on_full = "drop": a call never waits for the writer, so this route shows
# what the calling thread pays when the writer keeps up (records it cannot take are
# dropped and counted, not written).
export BENCH_CONFIG_DROP="$tmp/keytrail-drop.toml"
sed -e '/^on_full = /d' -e 's/^\[trail\]$/[trail]\non_full = "drop"/' "$tmp/keytrail.toml" >"$BENCH_CONFIG_DROP"
unset KEYTRAIL_MODULE
export SOFTHSM2_MODULE="$module"

# The agent route: the same audit, recorded by `keytrail agent` through a shared-memory
# ring (no thread in the benchmarked process). BENCH_AGENT=0 leaves it out.
agent_pid=""
if [ "${BENCH_SAME_PROCESS:-0}" != 1 ] && [ "${BENCH_AGENT:-1}" != 0 ]; then
  cargo build --release --bin keytrail
  cat >"$tmp/agent.toml" <<CONF
[agent]
socket = "$tmp/agent.sock"
[trail]
path = "$tmp/agent-trail/trail.jsonl"
CONF
  target/release/keytrail agent --foreground --config "$tmp/agent.toml" >"$tmp/agent.out" &
  agent_pid=$!
  trap 'rc=$?; kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; rm -rf "$tmp"; exit "$rc"' EXIT
  for _ in $(seq 100); do grep -q listening "$tmp/agent.out" 2>/dev/null && break; sleep 0.1; done
  export BENCH_CONFIG_AGENT="$tmp/keytrail-agent.toml"
  sed -e "/^\[trail\]/a mode = \"agent\"\nagent_socket = \"$tmp/agent.sock\"" \
    "$tmp/keytrail.toml" >"$BENCH_CONFIG_AGENT"
  # The agent with auditing switched off: the shim and its connection, no records. Against
  # the full agent route it shows what the records cost, the agent's CPU included.
  export BENCH_CONFIG_AGENT_OFF="$tmp/keytrail-agent-off.toml"
  sed -e '/^\[audit\]/,$d' "$BENCH_CONFIG_AGENT" >"$BENCH_CONFIG_AGENT_OFF"
  printf '[audit]\ncategories = []\n' >>"$BENCH_CONFIG_AGENT_OFF"
fi
# `sessions = "summary"` (the open + close workload only), embedded and with the agent.
# BENCH_SESSIONS=0 leaves these routes out; with BENCH_AUDIT set they are left out too
# (its [audit] section would be given twice).
if [ "${BENCH_SAME_PROCESS:-0}" != 1 ] && [ "${BENCH_SESSIONS:-1}" != 0 ] && [ -z "${BENCH_AUDIT:-}" ]; then
  export BENCH_CONFIG_SESSIONS="$tmp/keytrail-sessions.toml"
  printf '%s\n[audit]\nsessions = "summary"\n' "$(cat "$tmp/keytrail.toml")" >"$BENCH_CONFIG_SESSIONS"
  if [ -n "${BENCH_CONFIG_AGENT:-}" ]; then
    export BENCH_CONFIG_AGENT_SESSIONS="$tmp/keytrail-agent-sessions.toml"
    printf '%s\n[audit]\nsessions = "summary"\n' "$(cat "$BENCH_CONFIG_AGENT")" >"$BENCH_CONFIG_AGENT_SESSIONS"
  fi
fi
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

p11kit=""
for p in /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so /usr/lib/aarch64-linux-gnu/p11-kit-proxy.so \
         /usr/lib64/p11-kit-proxy.so; do
  if [ -e "$p" ]; then p11kit="$p"; break; fi
done
# Run the bench with this prefix (a private mount namespace for p11-kit's configuration).
run=()
if [ -n "$p11kit" ] && [ "${BENCH_P11KIT:-1}" != 0 ]; then
  # p11-kit's proxy loads the modules configured for p11-kit; the bench gives it a private
  # configuration with one module, SoftHSM (the same instance), with `log-calls: yes`.
  # An ordinary user's configuration is ~/.config/pkcs11/modules (~/.config is
  # XDG_CONFIG_HOME when set), whose softhsm2.module overrides the system one of that name
  # (Debian's softhsm2 package ships one); other system modules are disabled for the proxy.
  # p11-kit ignores user configuration in a process running as root: then the bench runs
  # in a private mount namespace (unshare -m) in which the private module directory is
  # mounted over the system ones; nothing changes outside the bench process.
  # log-calls writes each call to stderr: the harness sends its stderr to
  # BENCH_P11KIT_OUTPUT (default /dev/null) and keeps its own messages on the original.
  p11conf="$tmp/p11-kit/pkcs11/modules"
  mkdir -p "$p11conf" "$tmp/p11-kit/empty"
  printf 'module: %s\nlog-calls: yes\n' "$module" >"$p11conf/softhsm2.module"
  sysdirs=()
  for d in /usr/share/p11-kit/modules /etc/pkcs11/modules; do
    [ -d "$d" ] && sysdirs+=("$d")
  done
  ok=1
  if [ "$(id -u)" -eq 0 ]; then
    if [ ${#sysdirs[@]} -gt 0 ] && unshare -m true 2>/dev/null; then
      # shellcheck disable=SC2016
      run=(unshare -m -- bash -c '
        set -e; conf=$1; shift
        mount --bind "$conf" "$1"; shift
        while [ "$1" != -- ]; do mount --bind "$(dirname "$conf")/../empty" "$1"; shift; done
        shift; exec "$@"' _ "$p11conf" "${sysdirs[0]}" "${sysdirs[@]:1}" --)
    else
      echo "bench.sh: root, and no private mount namespace (unshare -m): no p11-kit column" >&2
      ok=0
    fi
  else
    for d in "${sysdirs[@]}"; do
      for m in "$d"/*.module; do
        [ -e "$m" ] || continue
        name=$(basename "$m")
        [ -e "$p11conf/$name" ] && continue
        { grep -E '^module:' "$m"; echo 'disable-in: p11-kit-proxy'; } >"$p11conf/$name"
      done
    done
    export XDG_CONFIG_HOME="$tmp/p11-kit"
  fi
  if [ "$ok" = 1 ]; then
    export BENCH_P11KIT_SO="$p11kit" BENCH_P11KIT_OUTPUT="${BENCH_P11KIT_OUTPUT:-/dev/null}"
  else
    unset BENCH_P11KIT_SO
  fi
else
  unset BENCH_P11KIT_SO
fi

case "$trail" in
  *"{pid}"*) unset BENCH_TRAIL_FILE ;;
  *) export BENCH_TRAIL_FILE="$trail" ;;
esac

status=0
if [ "${BENCH_SAME_PROCESS:-0}" = 1 ]; then
  "${run[@]}" cargo bench --bench overhead "$@" || status=$?
else
  "${run[@]}" cargo bench --bench routes "$@" || status=$?
fi

if [ "${BENCH_SAME_PROCESS:-0}" != 1 ] && [ -d "$tmp/trail" ]; then
  # One trail file per keytrail process; all keytrail routes' rounds together.
  records=$(cat "$tmp"/trail/*.jsonl 2>/dev/null | wc -l || true)
  bytes=$(cat "$tmp"/trail/*.jsonl 2>/dev/null | wc -c || true)
  [ "$records" -gt 0 ] && echo "trail: $records records, $bytes bytes, $((bytes / records)) bytes per record (both keytrail routes)"
elif [ -s "$trail" ]; then
  records=$(wc -l <"$trail")
  bytes=$(wc -c <"$trail")
  echo "trail: $records records, $bytes bytes, $((bytes / records)) bytes per record (full audit on)"
fi
if [ "${BENCH_SAME_PROCESS:-0}" != 1 ] && [ "${BENCH_VOLUME:-1}" != 0 ]; then
  # Trail bytes per 1,000 HMAC-SHA256 signatures in each usage mode: one keytrail process
  # with none and one with 1,000 (same setup: login, two keys), the difference.
  echo
  echo "trail bytes per 1,000 HMAC-SHA256 signatures (one process, setup records subtracted):"
  for usage in every first summary; do
    bytes=()
    for count in 0 1000; do
      dir="$tmp/volume-$usage-$count"
      mkdir -p "$dir"
      sed -e "s|^path = .*|path = \"$dir/trail.jsonl\"|" -e '/^\[audit\]/,$d' "$tmp/keytrail.toml" >"$dir/keytrail.toml"
      printf '[audit]\nusage = "%s"\n' "$usage" >>"$dir/keytrail.toml"
      BENCH_SIGNATURES=$count BENCH_MODULE="$KEYTRAIL_SO" BENCH_IDLE_THREAD=0 \
        KEYTRAIL_CONFIG="$dir/keytrail.toml" cargo bench -q --bench routes -- --child >/dev/null
      bytes+=("$(wc -c <"$dir/trail.jsonl")")
    done
    echo "  usage = \"$usage\": $((bytes[1] - bytes[0])) bytes ($((bytes[0])) for the setup alone)"
  done
fi
if [ -n "$agent_pid" ]; then
  # The agent's CPU (user + system, all its threads) per record it wrote.
  ticks=$(awk '{print $14 + $15}' "/proc/$agent_pid/stat" 2>/dev/null || echo 0)
  hz=$(getconf CLK_TCK)
  kill "$agent_pid" && wait "$agent_pid" || true
  if [ -s "$tmp/agent-trail/trail.jsonl" ]; then
    records=$(wc -l <"$tmp/agent-trail/trail.jsonl")
    echo "agent trail: $records records, $(wc -c <"$tmp/agent-trail/trail.jsonl") bytes;" \
      "agent CPU $((ticks * 1000 / hz)) ms, $((ticks * 1000000000 / hz / records)) ns per record"
  fi
  # The agent's ceiling: records driven through a fresh agent as fast as it takes them,
  # its sustained records per second and CPU per record (one and two sending threads).
  cargo build --release -q --example agent_throughput
  for t in 1 2; do AGENT_THREADS=$t target/release/examples/agent_throughput; done
fi
if [ -s "$tmp/keytrail-diagnostics.log" ]; then
  echo "--- keytrail diagnostics ---" >&2
  cat "$tmp/keytrail-diagnostics.log" >&2
fi
if [ -n "${BENCH_SPY_SO:-}" ] && [ -f "$PKCS11SPY_OUTPUT" ]; then
  echo "pkcs11-spy wrote $(du -h "$PKCS11SPY_OUTPUT" | cut -f1) of log to $PKCS11SPY_OUTPUT" >&2
fi
exit "$status"
