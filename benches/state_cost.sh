#!/usr/bin/env bash
# What the durable playbook state costs on SQLite (issue 15: at most 10 % of the throughput
# before the state was made durable). Three servers, same texts, same SQLite settings:
#   - store off: nothing written;
#   - SQLite, the log alone: a build with the `bench-no-state` feature, whose store writer drops
#     the playbook's rows instead of committing them (the conversation log, the stored answers
#     for retries and the audit rows are committed as usual: the store as it was before);
#   - SQLite: the release build, state durable (the default).
# Rounds interleaved and rotated; saturation is the best median over closed loops of 32 and 64
# clients (CONCURRENCY_LEVELS), as in store_backends.sh. Also the server's CPU time per answered
# request (from /proc, warm-up excluded), which the hypervisor's steal disturbs less than the
# throughput. Appends a dated section with the commands to benches/RESULTS.md.
#
#   bash benches/state_cost.sh [--rounds N] [--duration S]
#
# Builds both binaries (the feature build first, copied aside, then the plain release build
# again, so target/release/intentd is the ordinary one afterwards).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ROUNDS=5
DURATION=20
LEVELS=${CONCURRENCY_LEVELS:-32 64}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds must be a whole number of at least 1, not '$ROUNDS'" >&2; exit 2 ;; esac
case "$DURATION" in ''|*[!0-9.]*) echo "--duration must be a number of seconds, not '$DURATION'" >&2; exit 2 ;; esac
RESULTS=${RESULTS:-benches/RESULTS.md}
TEXTS=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
if [ ! -f "$MODEL_DIR/model.json" ]; then
    echo "no trained model at $MODEL_DIR: run \`intentd train\` first" >&2
    exit 1
fi

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2> /dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --release --bin intentd --features bench-no-state
cp target/release/intentd "$WORK/intentd-no-state"
cargo build --quiet --release --bin intentd
BIN=target/release/intentd

# Let the builds' load fade first (up to 3 minutes), so the sitting starts on a quiet machine.
for _ in $(seq 1 36); do
    awk '{exit !($1 < 1.0)}' /proc/loadavg && break
    sleep 5
done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
TICKS_BEFORE=$(cpu_ticks)
HZ=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
ADDR=127.0.0.1:$(free_port)

start_server() { # $1 = off | log | state
    rm -f "$WORK"/intentd.db* "$WORK/intentd.key"
    local store bin=$BIN
    case "$1" in
        off) store="  enabled: false" ;;
        log) store="  enabled: true
  path: $WORK/intentd.db"; bin=$WORK/intentd-no-state ;;
        state) store="  enabled: true
  path: $WORK/intentd.db" ;;
    esac
    cat > "$WORK/c.yml" <<EOF
listen: $ADDR
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
metrics:
  enabled: false
http:
  enabled: false
EOF
    "$bin" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    "$BIN" bench --addr "$ADDR" --texts "$TEXTS" --concurrency 1 --duration 0.5 \
        --wait-serving 60 --json > /dev/null
}

stop_server() {
    if ! kill -TERM "$SERVER_PID" 2> /dev/null; then
        cp "$WORK/serve.log" /tmp/state_cost-serve.log
        echo "error: the server died during the run; its log: /tmp/state_cost-serve.log" >&2
        tail -n 20 "$WORK/serve.log" >&2
        exit 1
    fi
    wait "$SERVER_PID" || true
    SERVER_PID=
}

# The cases are what they claim: the log-alone build left no state rows, the release build some.
check_rows() { # $1 = case
    [ "$1" = off ] && return 0
    local n
    n=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from playbook_state").fetchone()[0])' "$WORK/intentd.db")
    if [ "$1" = log ] && [ "$n" != 0 ]; then echo "error: the bench-no-state build stored $n state rows" >&2; exit 1; fi
    if [ "$1" = state ] && [ "$n" = 0 ]; then echo "error: the release build stored no state rows" >&2; exit 1; fi
    echo "$n" > "$WORK/rows-$1"
}

server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

bench() { # $1 = output name, $2 = clients: a warm-up run, then the measured one
    "$BIN" bench --addr "$ADDR" --texts "$TEXTS" --concurrency "$2" --duration 2 --json > /dev/null
    local t0
    t0=$(server_ticks)
    "$BIN" bench --addr "$ADDR" --texts "$TEXTS" --concurrency "$2" --duration "$DURATION" \
        --json > "$WORK/$1.json"
    echo $(($(server_ticks) - t0)) > "$WORK/$1.ticks"
}

CASES=(off log state)
for r in $(seq 1 "$ROUNDS"); do
    for k in 0 1 2; do
        b=${CASES[$(((r - 1 + k) % 3))]}
        start_server "$b"
        for c in $LEVELS; do
            bench "$b-$c-$r" "$c"
        done
        stop_server
        check_rows "$b"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
STEAL=$(python3 -c "import sys; t0, s0, t1, s1 = map(int, sys.argv[1:]); print(f'{100 * (s1 - s0) / max(1, t1 - t0):.1f}')" $TICKS_BEFORE $(cpu_ticks))
QUIET=$(python3 -c "import sys; print('low' if float(sys.argv[1]) < 1.0 else 'NOT low')" "${LOAD_BEFORE%% *}")

python3 - "$WORK" "$ROUNDS" "$HZ" "$QUIET" $LEVELS <<'EOF' > "$WORK/table.md"
import json, statistics, sys
work, rounds, hz, quiet, levels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
names = {"off": "store off", "log": "SQLite, the log alone (`bench-no-state` build)",
         "state": "SQLite, log + durable state (release build)"}
cases = list(names)
R = range(1, rounds + 1)
runs = {(b, c): [json.load(open(f"{work}/{b}-{c}-{r}.json")) for r in R] for b in cases for c in levels}
cpu = {(b, c): [int(open(f"{work}/{b}-{c}-{r}.ticks").read()) * 1000 / hz / max(1, x["ok"])
                for r, x in zip(R, runs[(b, c)])] for b in cases for c in levels}
med = statistics.median
rps = lambda b, c: med(x["requests_per_s"] for x in runs[(b, c)])
best = {b: max(levels, key=lambda c: rps(b, c)) for b in cases}
print(f"| figure | {' | '.join(names.values())} |")
print("| --- | --- | --- | --- |")
for c in levels:
    print(f"| Classify requests/s, {c} clients (median of {rounds}) | "
          + " | ".join(f"{rps(b, c):.1f}" for b in cases) + " |")
    print(f"| ... each round | " + " | ".join(" / ".join(f"{x['requests_per_s']:.0f}" for x in runs[(b, c)]) for b in cases) + " |")
print("| saturation: the better of those, requests/s | "
      + " | ".join(f"**{rps(b, best[b]):.1f}** ({best[b]} clients)" for b in cases) + " |")
print("| server CPU ms per answered request, same runs (median) | "
      + " | ".join(f"{med(cpu[(b, best[b])]):.3f}" for b in cases) + " |")
print("| p99 ms, same runs (median) | "
      + " | ".join(f"{med(x['p99_ms'] for x in runs[(b, best[b])]):.1f}" for b in cases) + " |")
print("| refused (RESOURCE_EXHAUSTED etc.), same runs, all rounds | "
      + " | ".join(str(sum(x["errors"] for x in runs[(b, best[b])])) for b in cases) + " |")
print()
if quiet != "low":
    print("The machine was busy (see the load above): the verdict below is indicative only.")
    print()
off, log, state = (rps(b, best[b]) for b in cases)
cost = 1 - state / log
cpu_cost = med(cpu[("state", best["state"])]) / med(cpu[("log", best["log"])]) - 1
print(f"- The durable state costs **{cost * 100:.1f} %** of the throughput of the log alone "
      f"(SQLite {state:.1f} / {log:.1f} requests/s); target at most 10 %: "
      f"{'met' if cost <= 0.10 else 'NOT met'}. In server CPU per answered request it costs "
      f"{cpu_cost * 100:+.1f} %.")
print(f"- The whole store (log, answers for retries, state) against store off: {state / off:.3f} "
      f"(the log alone: {log / off:.3f}).")
EOF
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: what the durable playbook state costs on SQLite (\`benches/state_cost.sh\`)"
    echo
    echo "Machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -n 1)), load average $LOAD_BEFORE at the start ($QUIET), $LOAD_AFTER at the end; the hypervisor took ${STEAL} % of the CPU time (steal) during the sitting. intentd $(git rev-parse --short HEAD), release builds with and without the \`bench-no-state\` feature, model $MODEL_DIR. One process per run, SQLite with the default \`store.durability: full\`, a fresh database for every server start. Closed loops of $(echo $LEVELS | sed 's/ / and /') clients, ${DURATION} s each after a 2 s warm-up, on one server start per case and round; $ROUNDS rounds, the order rotated each round."
    echo
    cat "$WORK/table.md"
    echo
    echo "Command: \`bash benches/state_cost.sh --rounds $ROUNDS --duration $DURATION\`; per run: \`intentd serve\` (\`store.enabled: false\`, or a SQLite \`store.path\`), then \`intentd bench --addr 127.0.0.1:PORT --texts $TEXTS --concurrency N --duration 2\` (warm-up) and \`--duration $DURATION\` (measured)."
} | tee -a "$RESULTS"
