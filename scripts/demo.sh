#!/usr/bin/env bash
# keytrail in two minutes: builds keytrail, creates a scratch SoftHSM2 token, runs a
# realistic key lifecycle through libkeytrail.so with pkcs11-tool (keys generated, used,
# wrapped and destroyed, a wrong PIN), then shows the audit trail, verifies its hash
# chain and reports on it.
#
# Usage: scripts/demo.sh [--clean] [--agent]
#   --clean   remove the scratch directory at the end (by default it is kept, so you can
#             look at the token, the configuration and the trail)
#   --agent   record through `keytrail agent` (started in the foreground in the scratch
#             directory, stopped with SIGTERM at the end) instead of the embedded writer:
#             every pkcs11-tool run is its own process, and all of them land in the
#             agent's one chain, with pid, uid and executable taken from the kernel
#
# Installs what it needs when missing (softhsm2, opensc, openssl; apt-get, with sudo when
# not root). Environment:
#   KEYTRAIL_DEMO_PROFILE=debug   use target/debug instead of target/release
#   KEYTRAIL_DEMO_PREBUILT=1      skip `cargo build` (the binaries must exist)
#   SOFTHSM2_MODULE=<path>        SoftHSM2's module, when not in the usual places
#
# Exit status: 0 when everything went as expected (including the wrong PIN being
# refused), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

clean=0
agent=0
for arg in "$@"; do
  case "$arg" in
    --clean) clean=1 ;;
    --agent) agent=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

profile="${KEYTRAIL_DEMO_PROFILE:-release}"
case "$profile" in
  release | debug) ;;
  *)
    echo "demo.sh: KEYTRAIL_DEMO_PROFILE must be release or debug" >&2
    exit 2
    ;;
esac

# --- What the demo needs ---------------------------------------------------------------
need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "demo.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

target="${CARGO_TARGET_DIR:-target}/$profile"
if [ "${KEYTRAIL_DEMO_PREBUILT:-0}" != 1 ]; then
  if ! command -v cargo >/dev/null; then
    echo "demo.sh: cargo not found: install Rust first (https://rustup.rs)" >&2
    exit 1
  fi
  echo "== building keytrail ($profile)"
  if [ "$profile" = release ]; then
    cargo build --release --lib --bins --quiet
  else
    cargo build --lib --bins --quiet
  fi
fi
shim="$target/libkeytrail.so"
keytrail="$target/keytrail"
for f in "$shim" "$keytrail"; do
  if [ ! -x "$f" ] && [ ! -f "$f" ]; then
    echo "demo.sh: $f is missing (build it, or unset KEYTRAIL_DEMO_PREBUILT)" >&2
    exit 1
  fi
done
shim="$(cd "$(dirname "$shim")" && pwd)/$(basename "$shim")"
keytrail="$(cd "$(dirname "$keytrail")" && pwd)/$(basename "$keytrail")"

softhsm="${SOFTHSM2_MODULE:-}"
if [ -z "$softhsm" ]; then
  for p in /usr/lib/softhsm/libsofthsm2.so \
    /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -e "$p" ]; then
      softhsm="$p"
      break
    fi
  done
fi
if [ -z "$softhsm" ] && command -v dpkg >/dev/null; then
  softhsm="$(dpkg -L libsofthsm2 2>/dev/null | grep '/libsofthsm2\.so$' | head -n 1 || true)"
fi
if [ -z "$softhsm" ] || [ ! -e "$softhsm" ]; then
  echo "demo.sh: SoftHSM2's module not found; set SOFTHSM2_MODULE" >&2
  exit 1
fi

# --- A scratch token and keytrail configuration ------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/keytrail-demo.XXXXXX")"
# Distinctive PINs, so that "the PINs appear nowhere in the trail" is a meaningful check.
user_pin="demo-user-pin-2718"
so_pin="demo-so-pin-3141"
wrong_pin="demo-wrong-pin-0000"
trail="$work/trail/keytrail.jsonl"
log="$work/pkcs11-tool.log"
unexpected=0

agent_pid=""
finish() {
  if [ -n "$agent_pid" ]; then
    kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  if [ "$clean" = 1 ]; then
    rm -rf "$work"
  fi
}
trap finish EXIT

n=0
step() {
  n=$((n + 1))
  printf '%2d. %s\n' "$n" "$*"
}
# A step that went wrong: say so, show the end of the tool's output, carry on.
failed() {
  unexpected=1
  echo "    UNEXPECTED: $* failed; the end of $log:" >&2
  tail -n 5 "$log" | sed 's/^/    | /' >&2
}
# pkcs11-tool through keytrail; its chatter goes to the log.
p11() {
  echo "\$ pkcs11-tool --module $shim $*" >>"$log"
  pkcs11-tool --module "$shim" "$@" >>"$log" 2>&1
}
login=(--login --pin "$user_pin")

echo "== scratch directory: $work"
mkdir -p "$work/tokens" "$work/trail"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$work" >"$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
cat >"$work/keytrail.toml" <<EOF
# keytrail configuration for the demo (see src/config.rs for every setting).
module = "$softhsm"
service = "demo"

[trail]
path = "$trail"

[integrity]
checkpoint_interval = "5s"
EOF
export KEYTRAIL_CONFIG="$work/keytrail.toml"
unset KEYTRAIL_MODULE KEYTRAIL_LOG

if [ "$agent" = 1 ]; then
  # The agent owns its trail; the library's own `path` is then only the fallback for when
  # the agent cannot be reached (on_failure = "continue").
  agent_trail="$work/agent-trail/keytrail.jsonl"
  cat >"$work/agent.toml" <<EOF
# keytrail agent configuration for the demo (packaging/agent.toml is the installed one).
[agent]
socket = "$work/run/agent.sock"

[trail]
path = "$agent_trail"

[integrity]
checkpoint_interval = "5s"
EOF
  sed -i "/^\[trail\]/a mode = \"agent\"\nagent_socket = \"$work/run/agent.sock\"" \
    "$work/keytrail.toml"
  echo "== starting: keytrail agent --foreground --config $work/agent.toml"
  "$keytrail" agent --foreground --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do
    grep -q listening "$work/agent.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q listening "$work/agent.log" || {
    echo "demo.sh: the agent did not start; see $work/agent.log" >&2
    exit 1
  }
  sed 's/^/    /' "$work/agent.log"
  trail="$agent_trail"
fi

step "create a SoftHSM2 token \"demo\" (softhsm2-util, not audited)"
softhsm2-util --init-token --free --label demo --pin "$user_pin" --so-pin "$so_pin" \
  >>"$log" 2>&1 || failed "softhsm2-util --init-token"

echo "== key lifecycle through $shim"
step "log in, generate AES-256 key \"payments-kek\" (id 6b01; sensitive, but may be wrapped)"
p11 "${login[@]}" --keygen --key-type AES:32 --label payments-kek --id 6b01 \
  --sensitive --extractable || failed "AES key generation"

step "generate AES-256 wrapping key \"backup-wrap\" (id 6b02)"
p11 "${login[@]}" --keygen --key-type AES:32 --label backup-wrap --id 6b02 \
  --sensitive --usage-wrap || failed "wrapping key generation"

step "generate EC P-256 key pair \"release-signer\" (id 5101)"
p11 "${login[@]}" --keypairgen --key-type EC:prime256v1 --label release-signer --id 5101 \
  --usage-sign || failed "EC key pair generation"

echo "keytrail demo release 1.0" >"$work/release.txt"
openssl dgst -sha256 -binary "$work/release.txt" >"$work/release.sha256"
step "sign release.txt with ECDSA (SHA-256 by openssl, then CKM_ECDSA on the token)"
p11 "${login[@]}" --sign -m ECDSA --id 5101 -i "$work/release.sha256" \
  -o "$work/release.sig" || failed "ECDSA signature"

step "verify the signature with the public key"
p11 --verify -m ECDSA --id 5101 -i "$work/release.sha256" \
  --signature-file "$work/release.sig" || failed "ECDSA verification"

iv="000102030405060708090a0b0c0d0e0f"
printf 'card 4111-1111-1111-1111, exp 12/29\n' >"$work/secret.txt"
step "encrypt secret.txt with \"payments-kek\" (AES-CBC-PAD)"
p11 "${login[@]}" --encrypt -m AES-CBC-PAD --iv "$iv" --id 6b01 -i "$work/secret.txt" \
  -o "$work/secret.enc" || failed "AES encryption"

step "decrypt it again and compare"
if p11 "${login[@]}" --decrypt -m AES-CBC-PAD --iv "$iv" --id 6b01 -i "$work/secret.enc" \
  -o "$work/secret.dec"; then
  cmp -s "$work/secret.txt" "$work/secret.dec" || failed "the decryption round trip"
else
  failed "AES decryption"
fi

step "wrap \"payments-kek\" with \"backup-wrap\" (AES key wrap), for a backup"
p11 "${login[@]}" --wrap -m AES-KEY-WRAP --id 6b02 --application-id 6b01 \
  -o "$work/payments-kek.wrapped" || failed "key wrap"

step "log in with a wrong PIN (expected to be refused)"
if p11 --login --pin "$wrong_pin" --list-objects; then
  failed "refusing the wrong PIN (it was accepted)"
elif ! grep -q CKR_PIN_INCORRECT "$log"; then
  failed "refusing the wrong PIN with CKR_PIN_INCORRECT"
else
  echo "    refused: CKR_PIN_INCORRECT, as expected"
fi

step "list the token's objects"
p11 "${login[@]}" --list-objects || failed "object listing"

step "destroy \"payments-kek\""
p11 "${login[@]}" --delete-object --type secrkey --id 6b01 || failed "key destruction"

# --- The trail -----------------------------------------------------------------------------
if [ -n "$agent_pid" ]; then
  echo
  echo "== stopping the agent (SIGTERM: it drains every ring, then ends its chain)"
  kill -TERM "$agent_pid"
  wait "$agent_pid" || failed "the agent's clean stop"
  agent_pid=""
  echo "    $(grep -c '"action":"client_connected"' "$trail") processes recorded in one chain"
fi
echo
echo "== keytrail show $trail"
"$keytrail" show --color never "$trail" || failed "keytrail show"

echo
echo "== keytrail verify $trail"
verify_rc=0
"$keytrail" verify "$trail" || verify_rc=$?
if [ "$verify_rc" -ne 0 ]; then
  # 1: broken chain; 3: a stream without its trail_stop (every pkcs11-tool run finalizes,
  # so neither should happen here).
  failed "keytrail verify (exit status $verify_rc)"
fi

echo
echo "== keytrail report $trail"
"$keytrail" report "$trail" || failed "keytrail report"

echo
records=$(wc -l <"$trail")
bytes=$(wc -c <"$trail")
if grep -qF -e "$user_pin" -e "$so_pin" -e "$wrong_pin" "$trail"; then
  failed "keeping the PINs out of the trail"
fi
echo "== $((records)) records, $((bytes)) bytes, no PIN in the trail: $trail"
if [ "$clean" = 1 ]; then
  echo "== scratch directory removed (--clean)"
else
  echo "== scratch directory kept: $work (remove it, or run with --clean)"
fi
if [ "$unexpected" -ne 0 ]; then
  echo "demo.sh: something unexpected failed (see above and $log)" >&2
  exit 1
fi
