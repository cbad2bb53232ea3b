#!/usr/bin/env bash
# Keeps a long-lived cargo target directory from filling the disk. Every change of features or
# dependencies leaves a new variant of each affected library (and every build new test binaries)
# beside the old ones, and cargo never deletes any: the directory grew to 70 GB in a week.
#
# Live artifacts are what cargo itself reports for the three builds the README's commands make (the
# workspace tests, `ledgerd`, and the clippy check of `scripts/test.sh`): it is asked with --message-format=json, which is a no-op when
# both are fresh. Everything else under release/deps and release/build is deleted. Incremental
# caches unused for two days go too.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
release="$target/release"
[ -d "$release/deps" ] || exit 0
before=$(du -sm "$target" | cut -f1)
live=$(mktemp)
trap 'rm -f "$live"' EXIT
# If either query fails (a build error), prune nothing: a partial list would delete live files.
cargo test --release --workspace --no-run --message-format=json >"$live" 2>/dev/null || { echo "prune-target: skipped (the test build is not clean)"; exit 0; }
cargo build --release --bin ledgerd --message-format=json >>"$live" 2>/dev/null || { echo "prune-target: skipped (the ledgerd build is not clean)"; exit 0; }
# shellcheck source=scripts/clippy-args.sh
. scripts/clippy-args.sh
cargo clippy --message-format=json "${CLIPPY_ARGS[@]}" >>"$live" 2>/dev/null || { echo "prune-target: skipped (the clippy check is not clean)"; exit 0; }
python3 - "$live" "$release" <<'PY'
import json, os, re, shutil, sys
live, release = sys.argv[1], sys.argv[2]
hashes, build_dirs = set(), set()
for line in open(live):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact":
        paths = m.get("filenames", []) + ([m["executable"]] if m.get("executable") else [])
    elif m.get("reason") == "build-script-executed":
        paths = [m.get("out_dir", "")]
    else:
        continue
    for p in paths:
        b = re.search(r"/release/build/([^/]+)/", p)
        if b:
            build_dirs.add(b.group(1))
        h = re.search(r"-([0-9a-f]{16})(\.[a-z]+)?$", os.path.basename(p))
        if h:
            hashes.add(h.group(1))
if len(hashes) < 50:
    sys.exit("prune-target: cargo reported too few artifacts; pruning nothing")
deps = os.path.join(release, "deps")
for f in os.listdir(deps):
    h = re.search(r"-([0-9a-f]{16})(\.[a-z]+)?$", f)
    if h and h.group(1) not in hashes:
        os.remove(os.path.join(deps, f))
build = os.path.join(release, "build")
for d in os.listdir(build):
    if d not in build_dirs:
        shutil.rmtree(os.path.join(build, d), ignore_errors=True)
PY
if [ -d "$release/incremental" ]; then
  find "$release/incremental" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} +
fi
after=$(du -sm "$target" | cut -f1)
echo "prune-target: $target from ${before} MiB to ${after} MiB"
