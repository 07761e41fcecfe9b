#!/usr/bin/env bash
# Runs keytrail's whole test suite. Installs what the tests need when it is missing:
# SoftHSM2 (the real module under test), the clients of the compatibility tests
# (tests/clients*.rs: OpenSC's pkcs11-tool, GnuTLS's p11tool and certtool, OpenSSL with
# libp11's engine and pkcs11-provider, p11-kit and its proxy, the JDK's SunPKCS11 and
# keytool, NSS's modutil and certutil, python-pkcs11 from PyPI in a virtual environment),
# pySigma with its DuckDB backend (tests/sigma.rs, from PyPI in a virtual environment),
# cargo-nextest (one process per test: keytrail and SoftHSM hold process-wide state), and
# rsyslog with its GnuTLS driver (tests/syslog.rs), kryoptic (a PKCS#11 3.x module for the 3.0 tests, built once per machine by
# scripts/kryoptic.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
[ -e /usr/lib/x86_64-linux-gnu/pkcs11-spy.so ] || [ -e /usr/lib/aarch64-linux-gnu/pkcs11-spy.so ] || need+=(opensc-pkcs11)
command -v p11tool >/dev/null || need+=(gnutls-bin)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
[ -e "/usr/lib/$multiarch/engines-3/pkcs11.so" ] || need+=(libengine-pkcs11-openssl)
command -v p11-kit >/dev/null || need+=(p11-kit)
[ -e "/usr/lib/$multiarch/p11-kit-proxy.so" ] || need+=(p11-kit-modules)
command -v certutil >/dev/null || need+=(libnss3-tools)
{ command -v java && command -v keytool; } >/dev/null || need+=(default-jdk-headless)
command -v unshare >/dev/null || need+=(util-linux)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
# The syslog sink's tests (tests/syslog.rs) deliver to a real rsyslog, TLS through its
# GnuTLS driver.
command -v rsyslogd >/dev/null || need+=(rsyslog)
[ -e "/usr/lib/$multiarch/rsyslog/lmnsd_gtls.so" ] || need+=(rsyslog-gnutls)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_updated=""
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  apt_updated=1
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# pkcs11-provider (OpenSSL 3's PKCS#11 provider): from the distribution where it has it;
# Debian 12 has it only in bookworm-backports, so its one package comes from there through
# a temporary source list, without enabling backports on the machine. Where neither
# works, its test skips and says why.
provider="/usr/lib/$multiarch/ossl-modules/pkcs11.so"
if [ ! -e "$provider" ]; then
  [ -n "$apt_updated" ] || $sudo apt-get update -qq
  if apt-cache policy pkcs11-provider 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get install -y -qq pkcs11-provider >/dev/null
  elif grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "test.sh: installing pkcs11-provider from bookworm-backports" >&2
    bpo="$(mktemp -d)"
    mkdir -p "$bpo/lists/partial"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$bpo/sources.list"
    apt_bpo=(-o "Dir::Etc::SourceList=$bpo/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$bpo/lists")
    chmod 755 "$bpo"
    if $sudo apt-get "${apt_bpo[@]}" update -qq &&
       (cd "$bpo" && $sudo apt-get "${apt_bpo[@]}" download pkcs11-provider >/dev/null 2>&1); then
      $sudo apt-get install -y -qq "$bpo"/pkcs11-provider_*.deb >/dev/null
    fi
    $sudo rm -rf "$bpo"
  fi
  [ -e "$provider" ] ||
    echo "test.sh: WARNING: pkcs11-provider is not available here; its test in tests/clients_openssl.rs skips" >&2
fi

# A virtual environment kept in the cache, holding PyPI packages: venv NAME IMPORTS PACKAGE…
# prints its Python, installing the packages when IMPORTS cannot be imported.
venv() {
  local dir="${KEYTRAIL_CACHE:-$HOME/.cache/keytrail}/$1" imports="$2"
  shift 2
  if ! "$dir/bin/python" -c "import $imports" 2>/dev/null; then
    echo "test.sh: installing $* into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "$@" >&2
  fi
  echo "$dir/bin/python"
}
# python-pkcs11, for the Python client test (KEYTRAIL_PYTHON).
if [ -z "${KEYTRAIL_PYTHON:-}" ]; then
  KEYTRAIL_PYTHON="$(venv python-pkcs11-0.10.1 pkcs11 python-pkcs11==0.10.1)"
fi
export KEYTRAIL_PYTHON
# pySigma with its DuckDB backend, and DuckDB: tests/sigma.rs converts rules/sigma/ with
# them and runs the queries over real trails (KEYTRAIL_SIGMA_PYTHON).
if [ -z "${KEYTRAIL_SIGMA_PYTHON:-}" ]; then
  KEYTRAIL_SIGMA_PYTHON="$(venv sigma-duckdb-0.1.4 'sigma_backend_duckdb, duckdb' \
    pySigma==1.5.1 pysigma-backend-duckdb==0.1.4 duckdb==2.0.1)"
fi
export KEYTRAIL_SIGMA_PYTHON
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
