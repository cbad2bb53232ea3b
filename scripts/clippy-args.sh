# The clippy check `scripts/test.sh` runs (and `scripts/prune-target.sh` keeps the artifacts of):
# only the disallowed-methods lint of clippy.toml, as an error; the release profile, so it shares
# RocksDB's C++ build with the tests.
CLIPPY_ARGS=(--release --workspace --all-targets --quiet -- -A clippy::all -D clippy::disallowed_methods)
