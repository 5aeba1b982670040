#!/usr/bin/env bash
# One-time machine set-up shared by the README's two commands. Idempotent.
# Installs what building pocket needs beyond a Rust toolchain:
#   - a C++ compiler (g++): the rocksdb crate builds RocksDB from source;
#   - libclang (Debian package libclang-dev): the rocksdb crate generates its
#     bindings with bindgen, which loads libclang.
# protoc is not needed: the build uses the protoc shipped in the
# protoc-bin-vendored crate. SQLite is bundled by sqlx.
set -euo pipefail

if ! command -v c++ >/dev/null 2>&1; then
  echo "setup: installing g++ (RocksDB is C++)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
fi

# libclang itself (libclang.so / libclang-NN.so.N), not libclang-cpp, which
# some images carry without it and which bindgen cannot use.
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
  echo "setup: installing libclang-dev (needed by the rocksdb crate's bindgen)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi

# Build outputs live outside the clone, so a fresh clone reuses the compiled
# dependencies (RocksDB's C++ takes ~10 minutes on 2 cores to build from clean).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pocket-target}"
mkdir -p "$CARGO_TARGET_DIR"
