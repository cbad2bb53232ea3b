#!/usr/bin/env bash
# The whole test suite: buf lint of the protos, the clippy check of blocking calls, then every test
# of every crate (unit, property, crash and end-to-end), then one closing line with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${TEST_THREADS:-2}"
bash scripts/buf-lint.sh
# Blocking work stays off the async runtime: clippy.toml's disallowed methods (synced RocksDB
# writes, flushes, fsyncs) are errors outside the functions that allow them.
# shellcheck source=scripts/clippy-args.sh
. scripts/clippy-args.sh
echo "clippy: disallowed blocking calls" >&2
cargo clippy "${CLIPPY_ARGS[@]}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --no-fail-fast -- --test-threads="$THREADS" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
bash scripts/prune-target.sh >&2 || true
echo "tests: $passed passed, $failed failed"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "cargo test exited $status without a failed test: a build error?" >&2
fi
exit "$status"
