#!/usr/bin/env bash
# Installs what building the ledger needs beyond a Rust toolchain and gcc: libclang, which
# RocksDB's bindgen loads at build time. Idempotent: does nothing when it is already there.
# protoc is not needed: the build uses a vendored one.
set -euo pipefail

have_libclang() {
  # On Debian, ask dpkg: bindgen needs both libclang and clang's builtin headers, which
  # libclang-dev brings (a bare libclang1 is not enough).
  if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'
    return
  fi
  compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

if have_libclang; then
  exit 0
fi

echo "setup: libclang not found; installing libclang-dev (needed by RocksDB's bindgen)" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "setup: not root and no sudo; run as root: apt-get install -y libclang-dev" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libclang-dev >/dev/null
have_libclang || { echo "setup: libclang still missing after install" >&2; exit 1; }
echo "setup: libclang installed" >&2
