#!/usr/bin/env bash
# Runs keytrail's whole test suite. Installs what the tests need when it is missing:
# SoftHSM2 (the real module under test), OpenSC (pkcs11-tool), GnuTLS tools (p11tool),
# OpenSSL, cargo-nextest (one process per test: keytrail and SoftHSM hold process-wide
# state), and kryoptic (a PKCS#11 3.x module for the 3.0 tests, built once per machine by
# scripts/kryoptic.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
[ -e /usr/lib/x86_64-linux-gnu/pkcs11-spy.so ] || [ -e /usr/lib/aarch64-linux-gnu/pkcs11-spy.so ] || need+=(opensc-pkcs11)
command -v p11tool >/dev/null || need+=(gnutls-bin)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# kryoptic, a PKCS#11 3.x module, for the 3.0 paths (tests/v3.rs); built once per machine
# into a cache. An explicit KRYOPTIC_MODULE wins.
if [ -z "${KRYOPTIC_MODULE:-}" ]; then
  KRYOPTIC_MODULE="$(scripts/kryoptic.sh)"
fi
export KRYOPTIC_MODULE

# The integration tests load the built cdylib; build it (debug and release) first.
cargo build --lib --bins
cargo build --release --lib --bins
cargo nextest run --no-fail-fast "$@"
