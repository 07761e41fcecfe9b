#!/usr/bin/env bash
# Builds kryoptic (a PKCS#11 3.2 software token, crate `kryoptic`) once per machine and prints the
# path of its libkryoptic_pkcs11.so on stdout; progress goes to stderr. The tests of keytrail's
# PKCS#11 3.0 paths (tests/v3.rs) run against it. kryoptic needs OpenSSL >= 3.2, which
# Debian 12 does not ship, so it is built against a static libcrypto made from the
# `openssl-src` crate's sources (kryoptic's own build would configure those sources itself
# and fail: the crate leaves out files OpenSSL's Configure wants). A first build takes
# several minutes on 2 cores.
#
# Cache: ${KEYTRAIL_CACHE:-$HOME/.cache/keytrail}/kryoptic/<version>/libkryoptic_pkcs11.so,
# checked first. Versions are pinned below; change them to rebuild into a new cache directory.
set -euo pipefail

KRYOPTIC_VERSION=1.5.4
OPENSSL_SRC_VERSION="~300.5"

cache_root="${KEYTRAIL_CACHE:-$HOME/.cache/keytrail}/kryoptic"
out_dir="$cache_root/$KRYOPTIC_VERSION"
so="$out_dir/libkryoptic_pkcs11.so"

if [ -f "$so" ]; then
  echo "$so"
  exit 0
fi

log() { echo "kryoptic.sh: $*" >&2; }

# Build dependencies from Debian: libclang for bindgen, sqlite for the token store, a C toolchain
# and perl for OpenSSL's Configure.
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)
command -v cc >/dev/null || need+=(build-essential)
command -v perl >/dev/null || need+=(perl)
command -v make >/dev/null || need+=(make)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# One build at a time per cache directory (several test runs may start together).
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$so" ]; then
  echo "$so"
  exit 0
fi

start=$(date +%s)
work="$cache_root/build-$KRYOPTIC_VERSION"
rm -rf "$work"
mkdir -p "$work/fetch/src"

# A throwaway cargo project whose only purpose is to download the two crates' sources.
cat >"$work/fetch/Cargo.toml" <<EOF
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = { version = "=$KRYOPTIC_VERSION", default-features = false }
openssl-src = "$OPENSSL_SRC_VERSION"
EOF
echo "" >"$work/fetch/src/lib.rs"
log "fetching kryoptic $KRYOPTIC_VERSION and openssl-src $OPENSSL_SRC_VERSION"
(cd "$work/fetch" && cargo fetch --quiet)

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
pkg_version() { # name -> the version cargo resolved
  awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' \
    "$work/fetch/Cargo.lock"
}
find_src() { # name version -> the unpacked source directory in the cargo registry
  local d
  for d in "$cargo_home"/registry/src/*/"$1-$2"; do
    if [ -d "$d" ]; then
      echo "$d"
      return 0
    fi
  done
  echo "kryoptic.sh: $1-$2 not found under $cargo_home/registry/src" >&2
  return 1
}
ossl_ver=$(pkg_version openssl-src)
kry_src=$(find_src kryoptic "$KRYOPTIC_VERSION")
ossl_src=$(find_src openssl-src "$ossl_ver")
log "openssl-src $ossl_ver"

# 1. A static libcrypto from the openssl-src sources (kryoptic's own build would run Configure
#    on them and fail on files the crate leaves out; given a built libcrypto.a it uses that).
cp -a "$ossl_src/openssl" "$work/openssl"
chmod -R u+w "$work/openssl"
log "building libcrypto.a"
(
  cd "$work/openssl"
  ./Configure no-shared no-module no-legacy no-docs no-tests -fPIC >"$work/openssl-configure.log" 2>&1
  make -j"$(nproc)" build_generated >"$work/openssl-make.log" 2>&1
  make -j"$(nproc)" libcrypto.a >>"$work/openssl-make.log" 2>&1
) || {
  log "OpenSSL build failed; last lines of the logs in $work:"
  tail -n 30 "$work"/openssl-*.log >&2
  exit 1
}

# 2. kryoptic itself (a cdylib, so no `cargo install`).
cp -a "$kry_src" "$work/kryoptic"
chmod -R u+w "$work/kryoptic"
log "building kryoptic"
(
  cd "$work/kryoptic"
  KRYOPTIC_OPENSSL_SOURCES="$work/openssl" CARGO_TARGET_DIR="$work/target" \
    cargo build --release --no-default-features --features standard,ossl/ossl-sys \
    >"$work/kryoptic-build.log" 2>&1
) || {
  log "kryoptic build failed; last lines of $work/kryoptic-build.log:"
  tail -n 40 "$work/kryoptic-build.log" >&2
  exit 1
}

mkdir -p "$out_dir"
cp "$work/target/release/libkryoptic_pkcs11.so" "$so.tmp"
mv "$so.tmp" "$so"
rm -rf "$work"
log "built in $(($(date +%s) - start)) s"
echo "$so"
