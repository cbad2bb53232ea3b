# The two commands of the README, and the pieces they are made of.
# One build profile (release) serves `run`, `test` and `bench`, so RocksDB's C++ is built once.

CARGO ?= cargo
CARGO_FLAGS ?= --release
# Two test binaries at a time and two threads each: the machine has 2 cores and the end-to-end
# tests each start a server.
TEST_THREADS ?= 2

.PHONY: setup run test lint bench bench-pg

setup:
	@bash scripts/setup.sh

run: setup
	$(CARGO) run $(CARGO_FLAGS) --bin ledgerd -- serve

test: setup
	TEST_THREADS=$(TEST_THREADS) bash scripts/test.sh

bench: setup
	$(CARGO) run $(CARGO_FLAGS) --bin ledgerd -- bench

# W1 and W2 beside PostgreSQL 15 (installed by the script if missing), in one invocation.
bench-pg: setup
	bash scripts/bench-vs-postgres.sh
