#!/usr/bin/env bash
# W1 and W2 against PostgreSQL 15, in one invocation, on this machine: the ratio is the judge.
#
#   bash scripts/bench-vs-postgres.sh            # or: make bench-pg
#   EVENTS=60000 W1B_EVENTS=200000 bash scripts/bench-vs-postgres.sh
#
# PostgreSQL side, as a new user would run it: Debian's postgresql-15 (installed here when
# missing), a fresh cluster with fsync and synchronous_commit on, and a message-db-style table
# (global position, per-stream position unique with the stream, unique event id) written through
# a `write_message` function that takes a per-stream advisory lock and checks the expected
# version. W1 is pgbench with 64 clients, each transaction one write_message of a 512-byte random
# payload to one of 10,000 streams; W2 is a plain ordered replay of every row (`\copy` to
# /dev/null) after the table holds as many rows as the ledger's W2 reads.
#
# Ledger side: `ledgerd serve` with its embedded defaults (views, router and CRM push running) on
# a fresh data directory and free ports, then `ledgerd bench` W1, W1b and W2 with the same sizes.
# The two never run at the same time. Both servers are stopped by their PIDs and their
# directories removed, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-60000}"
W1B_EVENTS="${W1B_EVENTS:-200000}"
WRITERS="${WRITERS:-64}"
STREAMS="${STREAMS:-10000}"
PAYLOAD_BYTES="${PAYLOAD_BYTES:-512}"
BATCH="${BATCH:-100}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

say() { echo "bench-pg: $*" >&2; }

install_postgres() {
  [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/pgbench" ] && return 0
  say "installing postgresql-15 (Debian's package)"
  [ "$(id -u)" -eq 0 ] || { say "not root: run as root, or apt-get install -y postgresql-15"; exit 1; }
  # The package's post-install would start a default cluster on port 5432; this script starts
  # only its own, so service starts are refused for the length of the install.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
  [ -n "$made_policy" ] && rm -f "$policy"
  [ -x "$PG_BIN/pgbench" ] || { say "postgresql-15 still missing after install"; exit 1; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Milliseconds since the epoch.
now_ms() { date +%s%3N; }

install_postgres
cargo build --release --workspace >&2
LEDGERD="${CARGO_TARGET_DIR:-target}/release/ledgerd"

WORK="$(mktemp -d /var/tmp/bench-pg.XXXXXX)"
PG_DATA="$WORK/pg"
LEDGER_PID=""
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres "$WORK"
  AS_PG=(runuser -u postgres --)
fi
cleanup() {
  if [ -f "$PG_DATA/postmaster.pid" ]; then
    "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$LEDGER_PID" ] && kill -0 "$LEDGER_PID" 2>/dev/null; then
    kill "$LEDGER_PID" && wait "$LEDGER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- PostgreSQL
PG_PORT="$(free_port)"
say "PostgreSQL: fresh cluster in $PG_DATA on 127.0.0.1:$PG_PORT"
"${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg.log" -w start \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK -c fsync=on -c synchronous_commit=on -c max_connections=$((WRITERS + 20)) -c shared_buffers=1GB" >/dev/null
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)

"${PSQL[@]}" <<'SQL'
CREATE EXTENSION pgcrypto;
CREATE TABLE messages (
  global_position bigserial PRIMARY KEY,
  stream_name text NOT NULL,
  position bigint NOT NULL,
  id uuid NOT NULL UNIQUE,
  type text NOT NULL,
  data bytea NOT NULL,
  metadata jsonb,
  time timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  UNIQUE (stream_name, position)
);
-- Optimistic concurrency per stream: the stream's lock, its version, the check, the insert.
CREATE FUNCTION write_message(_id uuid, _stream text, _type text, _data bytea, _metadata jsonb, _expected bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  version bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(_stream, 0));
  SELECT max(position) INTO version FROM messages WHERE stream_name = _stream;
  version := coalesce(version, -1);
  IF _expected IS NOT NULL AND _expected <> version THEN
    RAISE EXCEPTION 'wrong expected version % (stream version %)', _expected, version;
  END IF;
  INSERT INTO messages (id, stream_name, position, type, data, metadata)
    VALUES (_id, _stream, version + 1, _type, _data, _metadata);
  RETURN version + 1;
END $$;
SQL

cat >"$WORK/w1.sql" <<SQL
\set s random(1, $STREAMS)
SELECT write_message(gen_random_uuid(), 'bench-' || :s, 'MessageReceived', gen_random_bytes($PAYLOAD_BYTES), '{}'::jsonb, NULL);
SQL
chmod 644 "$WORK/w1.sql"
PER_CLIENT=$((EVENTS / WRITERS))
say "PostgreSQL W1: $((PER_CLIENT * WRITERS)) write_message calls, $WRITERS clients"
(cd "$WORK" && "${AS_PG[@]}" "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "$WRITERS" -j 2 -M prepared \
  -t "$PER_CLIENT" -f "$WORK/w1.sql" --log --log-prefix="$WORK/pglog" postgres >"$WORK/pgbench.out" 2>&1) \
  || { cat "$WORK/pgbench.out" >&2; exit 1; }
PG_W1_TPS="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$WORK/pgbench.out")"
# Column 3 of pgbench's per-transaction log is the latency in microseconds.
cat "$WORK"/pglog* | awk '{print $3}' | sort -n >"$WORK/lat"
pct() { awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p+0.5)+1; printf "%.2f", a[i]/1000}' "$WORK/lat"; }
PG_W1_P50="$(pct 0.50)"
PG_W1_P99="$(pct 0.99)"

# PostgreSQL is stopped (a fast shutdown checkpoints) while the ledger runs, so its background
# writes do not share the disk with the ledger's benchmark; it comes back for W2.
pg_stop() { "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null; }
pg_start() {
  "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK -c fsync=on -c synchronous_commit=on -c max_connections=$((WRITERS + 20)) -c shared_buffers=1GB" >/dev/null
}
pg_stop
sync

# ---------------------------------------------------------------- ledger
GRPC_PORT="$(free_port)"
HTTP_PORT="$(free_port)"
say "ledger: ledgerd serve on 127.0.0.1:$GRPC_PORT (HTTP $HTTP_PORT), data in $WORK/ledger"
mkdir -p "$WORK/ledger"
"$LEDGERD" serve --data-dir "$WORK/ledger" --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" >"$WORK/ledgerd.log" 2>&1 &
LEDGER_PID=$!
for _ in $(seq 1 300); do
  [ -s "$WORK/ledger/admin.token" ] && (echo >"/dev/tcp/127.0.0.1/$GRPC_PORT") 2>/dev/null && break
  kill -0 "$LEDGER_PID" 2>/dev/null || { cat "$WORK/ledgerd.log" >&2; exit 1; }
  sleep 0.1
done
bench() { LEDGER_DATA_DIR="$WORK/ledger" "$LEDGERD" bench --target "http://127.0.0.1:$GRPC_PORT" --writers "$WRITERS" \
  --customers "$STREAMS" --payload-bytes "$PAYLOAD_BYTES" "$@"; }
L_W1="$(bench --workload w1 --events "$EVENTS")"
echo "$L_W1" >&2
L_W1B="$(bench --workload w1b --events "$W1B_EVENTS" --batch-events "$BATCH")"
echo "$L_W1B" >&2
L_W2="$(bench --workload w2)"
echo "$L_W2" >&2
kill "$LEDGER_PID" && wait "$LEDGER_PID" 2>/dev/null || true
LEDGER_PID=""
field() { sed -n "s|.*$1.*|\\1|p" <<<"$2" | head -1; }
L_W1_RATE="$(field ' \([0-9]*\) events/s' "$L_W1")"
L_W1_P50="$(field 'p50 \([0-9.]*\) ms' "$L_W1")"
L_W1_P99="$(field 'p99 \([0-9.]*\) ms' "$L_W1")"
L_W1B_RATE="$(field ' \([0-9]*\) events/s' "$L_W1B")"
L_W2_EVENTS="$(field 'ReadAll of \([0-9]*\) events' "$L_W2")"
L_W2_RATE="$(field ' \([0-9]*\) events/s' "$L_W2")"

# ---------------------------------------------------------------- PostgreSQL W2
sync
pg_start
# The table gets as many rows as the ledger's W2 read (its W1 rows are there already).
HAVE="$("${PSQL[@]}" -t -A -c 'SELECT count(*) FROM messages')"
MORE=$((L_W2_EVENTS - HAVE))
if [ "$MORE" -gt 0 ]; then
  say "PostgreSQL: $MORE more rows so that W2 replays $L_W2_EVENTS like the ledger's"
  "${PSQL[@]}" -c "INSERT INTO messages (id, stream_name, position, type, data, metadata)
    SELECT gen_random_uuid(), 'bulk-' || (g / 100), g % 100, 'MessageReceived', gen_random_bytes($PAYLOAD_BYTES), '{}'::jsonb
    FROM generate_series(0, $MORE - 1) g"
  "${PSQL[@]}" -c 'VACUUM ANALYZE messages'
fi
ROWS="$("${PSQL[@]}" -t -A -c 'SELECT count(*) FROM messages')"
say "PostgreSQL W2: ordered replay of $ROWS rows"
T0="$(now_ms)"
"${PSQL[@]}" -c "\\copy (SELECT global_position, stream_name, position, id, type, data, metadata, time FROM messages ORDER BY global_position) TO '/dev/null'"
T1="$(now_ms)"
PG_W2_RATE=$((ROWS * 1000 / (T1 - T0 > 0 ? T1 - T0 : 1)))

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}x' if b else 'n/a')" "$1" "$2"; }
printf '\n%-6s %-44s %-44s %s\n' "" "ledger" "PostgreSQL 15 (message-db style)" "ratio"
printf '%-6s %-44s %-44s %s\n' "W1" "$L_W1_RATE events/s, p50 $L_W1_P50 ms, p99 $L_W1_P99 ms" \
  "$(printf '%.0f' "$PG_W1_TPS") events/s, p50 $PG_W1_P50 ms, p99 $PG_W1_P99 ms" "$(ratio "$L_W1_RATE" "$PG_W1_TPS")"
printf '%-6s %-44s %-44s %s\n' "W1b" "$L_W1B_RATE events/s ($BATCH per append)" "-" "-"
printf '%-6s %-44s %-44s %s\n' "W2" "$L_W2_RATE events/s ($L_W2_EVENTS, decrypted)" "$PG_W2_RATE events/s ($ROWS rows)" "$(ratio "$L_W2_RATE" "$PG_W2_RATE")"
printf '(%s events in W1, %s in W1b, %s writers, %s streams, %s-byte payloads, %s cores)\n' \
  "$EVENTS" "$W1B_EVENTS" "$WRITERS" "$STREAMS" "$PAYLOAD_BYTES" "$(nproc)"
