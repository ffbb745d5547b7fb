#!/usr/bin/env bash
# The store backends side by side (issue 15): gRPC Classify throughput and latency of one
# process with the store off, on SQLite (default durability: an fsync per group commit) and on
# PostgreSQL (a throw-away local cluster with its durable defaults: fsync, synchronous_commit),
# and of two replicas that all serve on that PostgreSQL (`leader.followers: serve`).
# Same texts; rounds interleaved (off, SQLite, PostgreSQL, off, ...), medians. Saturation is
# the best median over closed loops of 32 and 64 clients (CONCURRENCY_LEVELS): the release build
# needs more than 32 clients to fill its batches on 2 CPUs, and past saturation the refusals of
# the queue budget (RESOURCE_EXHAUSTED) cost instead. Then each backend in open loop at half of
# its own saturation, once per round, for the median p99.
# Appends a dated section with the commands to benches/RESULTS.md.
#
# With the store on, the playbook's state is durable (written through the store with every
# decision that changes it); with it off, nothing is written. So "SQLite / off" bounds what the
# durable state costs from above: it also holds the conversation log's writes.
#
#   bash benches/store_backends.sh [--rounds N] [--duration S] [--profile release|dev]
#                                  [--bin PATH]
# --bin runs an intentd binary already built (e.g. the one `cargo test` built) instead of
# building the profile's.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ROUNDS=3
DURATION=10
PROFILE=release
LEVELS=${CONCURRENCY_LEVELS:-32 64}
BIN=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --profile) PROFILE=${2:?}; shift ;;
        --bin) BIN=${2:?}; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds must be a whole number of at least 1, not '$ROUNDS'" >&2; exit 2 ;; esac
RESULTS=${RESULTS:-benches/RESULTS.md}
TEXTS=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# CPU time the hypervisor gave to others (steal) during the sitting: on a shared virtual
# machine it is what makes one run differ from the next.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
TICKS_BEFORE=$(cpu_ticks)
if [ -z "$BIN" ]; then
    cargo build --quiet --profile "$PROFILE" --bin intentd
    DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
    BIN=target/$DIR/intentd
    BUILT="profile \`$PROFILE\`"
    BIN_FLAG=""
else
    [ -x "$BIN" ] || { echo "--bin $BIN is not an executable file" >&2; exit 2; }
    BUILT="binary $BIN (built before the run, profile \`$PROFILE\`)"
    BIN_FLAG=" --bin $BIN"
fi
if [ ! -f "$MODEL_DIR/model.json" ]; then
    echo "no trained model at $MODEL_DIR: run \`$BIN train\` first" >&2
    exit 1
fi

# PostgreSQL's server binaries: PATH first, then Debian's versioned folders (newest).
if command -v pg_ctl > /dev/null; then
    PG_BIN=$(dirname "$(realpath "$(command -v pg_ctl)")")
else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -n 1)
fi
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's \`postgresql\`" >&2
    exit 1
fi
# initdb refuses to run as root: then the cluster belongs to the `postgres` user, in a folder
# it can reach.
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); PG_BASE=/tmp; else AS_PG=(); PG_BASE=${TMPDIR:-/tmp}; fi

WORK=$(mktemp -d)
PG_DIR=$(mktemp -d "$PG_BASE/intentd-bench-pg.XXXXXX")
SERVER_PID=
SERVER2_PID=
PG_STARTED=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2> /dev/null
    [ -n "$SERVER2_PID" ] && kill "$SERVER2_PID" 2> /dev/null
    [ -n "$PG_STARTED" ] && "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop > /dev/null 2>&1
    rm -rf "$WORK" "$PG_DIR"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
PG_PORT=$(free_port)
"${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 > "$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" start > /dev/null
PG_STARTED=1
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
psql_admin() { PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }

export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PORT=$(free_port)
PORT2=$(free_port)
ADDR=127.0.0.1:$PORT

start_server() { # $1 = backend: off | sqlite | postgres | postgres2 (two replicas that all serve)
    rm -f "$WORK"/intentd.db* "$WORK/intentd.key"
    local store leader=""
    case "$1" in
        off) store="  enabled: false" ;;
        sqlite) store="  enabled: true
  path: $WORK/intentd.db" ;;
        postgres|postgres2)
            # A fresh database per run, like SQLite's fresh file.
            psql_admin "DROP DATABASE IF EXISTS intentd_bench"
            psql_admin "CREATE DATABASE intentd_bench"
            store="  enabled: true
  url: postgres://postgres@127.0.0.1:$PG_PORT/intentd_bench
  path: $WORK/unused.db"
            [ "$1" = postgres2 ] && leader="leader:
  followers: serve" ;;
    esac
    write_config() { # $1 = listen address, $2 = file
        cat > "$2" <<EOF
listen: $1
model_dir: $(realpath "$MODEL_DIR")
auto_train: false
operator_dir: $REPO/config/operator
training_data: $REPO/training-data/nlu
auth:
  bots:
    - id: demo
      token: $INTENTD_TOKEN
store:
$store
  key_file: $WORK/intentd.key
  create_key_file: true
$leader
metrics:
  enabled: false
http:
  enabled: false
EOF
    }
    write_config "$ADDR" "$WORK/c.yml"
    "$BIN" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    "$BIN" bench --addr "$ADDR" --texts "$TEXTS" --concurrency 1 --duration 0.5 \
        --wait-serving 60 --json > /dev/null
    TARGET=$ADDR
    if [ "$1" = postgres2 ]; then
        # The second replica starts once the first made the key file and the schema.
        write_config "127.0.0.1:$PORT2" "$WORK/c2.yml"
        "$BIN" serve --config "$WORK/c2.yml" > "$WORK/serve2.log" 2>&1 &
        SERVER2_PID=$!
        TARGET=$ADDR,127.0.0.1:$PORT2
        "$BIN" bench --addr "$TARGET" --texts "$TEXTS" --concurrency 2 --duration 0.5 \
            --wait-serving 60 --json > /dev/null
    fi
}

stop_server() {
    local pid log
    for pid in "$SERVER_PID" "$SERVER2_PID"; do
        [ -n "$pid" ] || continue
        log=$WORK/serve.log; [ "$pid" = "$SERVER2_PID" ] && log=$WORK/serve2.log
        if ! kill -TERM "$pid" 2> /dev/null; then
            cp "$log" /tmp/store_backends-serve.log
            echo "error: a server died during the run; its log: /tmp/store_backends-serve.log" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        wait "$pid" || true
    done
    SERVER_PID=; SERVER2_PID=
}

bench() { # $1 = output name, rest = load arguments
    local out=$1; shift
    "$BIN" bench --addr "$TARGET" --texts "$TEXTS" "$@" --duration "$DURATION" --warmup 2 \
        --json > "$WORK/$out.json"
}

BACKENDS=(off sqlite postgres postgres2)
# Interleaved rounds, the order rotated each round (off sqlite postgres postgres2, sqlite
# postgres postgres2 off, ...), so a drift in the machine's load favours no backend.
for r in $(seq 1 "$ROUNDS"); do
    for k in 0 1 2 3; do
        b=${BACKENDS[$(((r - 1 + k) % 4))]}
        start_server "$b"
        for c in $LEVELS; do
            bench "closed-$b-$c-$r" --concurrency "$c"
        done
        stop_server
    done
done
saturation() { # $1 = backend: prints the best median requests/s over the levels
    python3 - "$WORK" "$ROUNDS" "$1" $LEVELS <<'EOF'
import json, statistics, sys
work, rounds, b, levels = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
print(round(max(statistics.median(
    json.load(open(f"{work}/closed-{b}-{c}-{r}.json"))["requests_per_s"]
    for r in range(1, rounds + 1)) for c in levels)))
EOF
}
# Open loop at half of each backend's own saturation, once per round, rotated as above.
for b in "${BACKENDS[@]}"; do
    half=$(($(saturation "$b") / 2))
    [ "$half" -ge 1 ] || { echo "error: $b served under 2 requests/s; nothing to halve" >&2; exit 1; }
    echo "$half" > "$WORK/half-$b"
done
for r in $(seq 1 "$ROUNDS"); do
    for k in 0 1 2 3; do
        b=${BACKENDS[$(((r - 1 + k) % 4))]}
        start_server "$b"
        bench "open-$b-$r" --rate "$(cat "$WORK/half-$b")"
        stop_server
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
STEAL=$(python3 -c "import sys; t0, s0, t1, s1 = map(int, sys.argv[1:]); print(f'{100 * (s1 - s0) / max(1, t1 - t0):.1f}')" $TICKS_BEFORE $(cpu_ticks))

QUIET=$(python3 -c "import sys; print('low' if float(sys.argv[1]) < 1.0 else 'NOT low')" "${LOAD_BEFORE%% *}")
python3 - "$WORK" "$ROUNDS" "$QUIET" $LEVELS <<'EOF' > "$WORK/table.md"
import json, statistics, sys
work, rounds, quiet, levels = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
names = {"off": "store off", "sqlite": "SQLite", "postgres": "PostgreSQL",
         "postgres2": "PostgreSQL, 2 replicas serving"}
backends = list(names)
R = range(1, rounds + 1)
closed = {(b, c): [json.load(open(f"{work}/closed-{b}-{c}-{r}.json")) for r in R]
          for b in backends for c in levels}
med = lambda runs, k: statistics.median(x[k] for x in runs)
# Each backend at the client count where its median throughput is highest.
best = {b: max(levels, key=lambda c: med(closed[(b, c)], "requests_per_s")) for b in backends}
print(f"| figure | {' | '.join(names.values())} |")
print("| --- | --- | --- | --- | --- |")
for c in levels:
    print(f"| Classify requests/s, {c} clients (median of {rounds}) | "
          + " | ".join(f"{med(closed[(b, c)], 'requests_per_s'):.1f}" for b in backends) + " |")
print("| saturation: the better of those, requests/s | "
      + " | ".join(f"**{med(closed[(b, best[b])], 'requests_per_s'):.1f}** ({best[b]} clients)" for b in backends) + " |")
for k, label in [("p50_ms", "p50 ms, same runs"), ("p99_ms", "p99 ms, same runs")]:
    print(f"| {label} | " + " | ".join(f"{med(closed[(b, best[b])], k):.1f}" for b in backends) + " |")
print("| refused (RESOURCE_EXHAUSTED etc.), same runs, all rounds | "
      + " | ".join(str(sum(x["errors"] for x in closed[(b, best[b])])) for b in backends) + " |")
opened = {b: [json.load(open(f"{work}/open-{b}-{r}.json")) for r in R] for b in backends}
half = {b: int(open(f"{work}/half-{b}").read()) for b in backends}
print("| open loop at half of its saturation, requests/s asked | "
      + " | ".join(str(half[b]) for b in backends) + " |")
print(f"| ... answered OK/s (median of {rounds}) | " + " | ".join(f"{med(opened[b], 'requests_per_s'):.1f}" for b in backends) + " |")
print("| ... p50 ms (median) | " + " | ".join(f"{med(opened[b], 'p50_ms'):.1f}" for b in backends) + " |")
print("| ... p99 ms (median) | " + " | ".join(f"**{med(opened[b], 'p99_ms'):.1f}**" for b in backends) + " |")
print("| ... p99 ms of each round | " + " | ".join(" / ".join(f"{x['p99_ms']:.0f}" for x in opened[b]) for b in backends) + " |")
def errors(runs):
    # The total, and by gRPC code, so a refusal under a burst is told from a failure.
    by_code = {}
    for x in runs:
        for code, n in (x.get("errors_by_code") or {}).items():
            by_code[code] = by_code.get(code, 0) + n
    total = sum(x["errors"] for x in runs)
    codes = ", ".join(f"{c} {n}" for c, n in sorted(by_code.items()))
    return f"{total} ({codes})" if codes else str(total)
print("| ... errors, all rounds | " + " | ".join(errors(opened[b]) for b in backends) + " |")
print()
print("each closed-loop run at the saturation client count (requests/s, off / SQLite / PostgreSQL / 2 replicas): " + "; ".join(
    " / ".join(f"{closed[(b, best[b])][r - 1]['requests_per_s']:.0f}" for b in backends) for r in R))
print()
if quiet != "low":
    print("The machine was busy (see the load above): the verdicts below are indicative only; "
          "judge the targets on a sitting with a low load.")
    print()
off, sq, pg, pg2 = (med(closed[(b, best[b])], "requests_per_s") for b in backends)
verdict = lambda ok: "met" if ok else "NOT met"
cost = 1 - sq / off
print(f"- SQLite / store off: {sq / off:.3f}, so the store with its durable playbook state costs "
      f"{cost * 100:.1f} % of throughput (an upper bound of the durable state's cost: it includes "
      f"the conversation log). Target at most 10 %: {verdict(cost <= 0.10)}.")
print(f"- PostgreSQL / SQLite: {pg / sq:.3f} (target at least 0.8x: {verdict(pg / sq >= 0.8)}).")
print(f"- 2 replicas that all serve / 1 replica, on PostgreSQL: {pg2 / pg:.3f} (both replicas "
      f"run on this one machine and share its CPUs; the encoder is CPU-bound, so this shows the "
      f"cost of deciding the playbook state in the database, not the gain of a second machine).")
p99 = {b: med(opened[b], "p99_ms") for b in backends}
print(f"- p99 at half load (median of {rounds}): SQLite {p99['sqlite']:.1f} ms, PostgreSQL {p99['postgres']:.1f} ms, "
      f"2 replicas {p99['postgres2']:.1f} ms, store off {p99['off']:.1f} ms (target under 25 ms on both backends: "
      f"{verdict(p99['sqlite'] < 25 and p99['postgres'] < 25)}).")
EOF
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: store backends, off vs SQLite vs PostgreSQL (1 and 2 replicas) (\`benches/store_backends.sh\`)"
    echo
    echo "Machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -n 1)), load average $LOAD_BEFORE at the start ($QUIET: other work on the machine shares its CPUs$([ "$QUIET" = low ] && echo ' little' || echo ', so the figures are noisier than on an idle machine')), $LOAD_AFTER at the end; the hypervisor took ${STEAL} % of the CPU time (steal) during the sitting. intentd $(git rev-parse --short HEAD), $BUILT, model $MODEL_DIR. One process, except the last column: two \`intentd serve\` with \`leader.followers: serve\` on the same database and machine, the clients' connections spread over both (\`intentd bench --addr A,B\`); SQLite with the default \`store.durability: full\`; PostgreSQL $PG_VERSION on the same machine over TCP (a throw-away cluster with its defaults: fsync and synchronous_commit on), default \`store.postgres\` (16 connections); a fresh database for every server start. Closed loops of $(echo $LEVELS | sed 's/ / and /') clients, ${DURATION} s each after a 2 s warm-up, on one server start per backend and round; $ROUNDS rounds, the order rotated each round; then $ROUNDS rounds of one open-loop run per backend at half its saturation."
    echo
    cat "$WORK/table.md"
    echo
    echo "Command: \`${CONCURRENCY_LEVELS:+CONCURRENCY_LEVELS=\"$LEVELS\" }bash benches/store_backends.sh --rounds $ROUNDS --duration $DURATION --profile $PROFILE$BIN_FLAG\`; per run: \`intentd serve\` with \`store.enabled: false\`, a SQLite \`store.path\` or \`store.url: postgres://...\`, then \`intentd bench --addr 127.0.0.1:PORT --texts $TEXTS --concurrency N --duration $DURATION --warmup 2 --json\` (open loop: \`--rate HALF\` instead of \`--concurrency\`)."
} | tee -a "$RESULTS"
