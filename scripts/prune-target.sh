#!/usr/bin/env bash
# Keeps a long-lived cargo target directory from filling the disk: every build of the workspace
# leaves new test binaries (hundreds of MB each with line tables) beside the old ones. Keeps the
# newest executable of each name and incremental caches used in the last two days. Libraries
# (`.rlib`, `.rmeta`) are never touched: removing a still-current variant of one makes cargo
# rebuild everything above it, RocksDB's C++ included (15 minutes).
set -euo pipefail
target="${CARGO_TARGET_DIR:-$(dirname "$0")/../target}"
deps="$target/release/deps"
[ -d "$deps" ] || exit 0
before=$(du -sm "$target" | cut -f1)
# Executables only (no extension); newest first, the two newest of each name are kept (a
# binary and its test harness can share a name).
( cd "$deps" && ls -t | awk '$0 !~ /\./ { k = $0; sub(/-[0-9a-f]{16}$/, "", k); if (seen[k]++ >= 2) print }' | xargs -r rm -f )
if [ -d "$target/release/incremental" ]; then
  find "$target/release/incremental" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} +
fi
after=$(du -sm "$target" | cut -f1)
echo "prune-target: $target from ${before} MiB to ${after} MiB"
