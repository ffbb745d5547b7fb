#!/usr/bin/env bash
# Overload: what admitted requests wait when far more clients call than the server can serve
# (issue 12.6: target p99 of admitted requests < 250 ms at 10x overload). Measures the capacity
# first (32 clients, closed loop), then, for the queue budget off (`batching.queue_budget_ms: 0`,
# only max_in_flight bounds the queue) and on (the default), two overloads:
#   - closed loop: 2,000 clients sending back to back (the load of the original report);
#   - open loop: 10x the measured capacity in requests per second.
# Appends a dated section with the commands to benches/RESULTS.md.
#
# --pin runs the server on CPU 0 and the load generator on CPU 1 (taskset), so the client's own
# work (thousands of refusals a second) does not share the server's cores and its latencies are
# the end-to-end ones; capacity and 10x are then those of a one-core server.
#
#   bash benches/overload.sh [--duration S] [--budget-ms N] [--profile release|dev] [--pin]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DURATION=10
BUDGET=100
PROFILE=release
CLIENTS=2000
SERVER_CPU=()
CLIENT_CPU=()
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=${2:?}; shift ;;
        --budget-ms) BUDGET=${2:?}; shift ;;
        --profile) PROFILE=${2:?}; shift ;;
        --pin) SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1) ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ ${#SERVER_CPU[@]} -gt 0 ]; then
    PLACEMENT="Pinned: the server on CPU 0 only, the load generator on CPU 1 only (\`taskset\`), so capacity is a one-core server's and the client's work does not delay it."
    PIN_FLAG=" --pin"
else
    PLACEMENT="The load generator shares the same CPUs."
    PIN_FLAG=""
fi
RESULTS=${RESULTS:-benches/RESULTS.md}
TEXTS=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
cargo build --quiet --profile "$PROFILE" --bin intentd
DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=target/$DIR/intentd
if [ ! -f "$MODEL_DIR/model.json" ]; then
    echo "no trained model at $MODEL_DIR: run \`$BIN train\` first" >&2
    exit 1
fi
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT

start_server() { # $1 = queue_budget_ms
    rm -f "$WORK"/intentd.db*
    cat > "$WORK/c.yml" <<EOF
listen: $ADDR
model_dir: $(realpath "$MODEL_DIR")
auto_train: false
operator_dir: $REPO/config/operator
training_data: $REPO/training-data/nlu
batching:
  queue_budget_ms: $1
auth:
  bots:
    - id: demo
      token: $INTENTD_TOKEN
store:
  enabled: true
  path: $WORK/intentd.db
  key_file: $WORK/intentd.key
  create_key_file: true
metrics:
  enabled: false
http:
  enabled: false
EOF
    "${SERVER_CPU[@]}" "$BIN" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    "$BIN" bench --addr "$ADDR" --texts "$TEXTS" --concurrency 1 --duration 0.5 \
        --wait-serving 60 --json > /dev/null
}

stop_server() {
    if ! kill -TERM "$SERVER_PID" 2>/dev/null; then
        cp "$WORK/serve.log" /tmp/overload-serve.log
        echo "error: the server died during the run; its log: /tmp/overload-serve.log" >&2
        exit 1
    fi
    wait "$SERVER_PID" || true; SERVER_PID=
}

bench() { # $1 = output name, rest = load arguments
    local out=$1; shift
    "${CLIENT_CPU[@]}" "$BIN" bench --addr "$ADDR" --texts "$TEXTS" "$@" --duration "$DURATION" --warmup 2 \
        --json > "$WORK/$out.json"
}

start_server "$BUDGET"
bench capacity --concurrency 32
stop_server
CAPACITY=$(python3 -c "import json; print(round(json.load(open('$WORK/capacity.json'))['requests_per_s']))")
RATE=$((CAPACITY * 10))
for budget in 0 "$BUDGET"; do
    start_server "$budget"
    bench "closed-$budget" --concurrency "$CLIENTS"
    bench "open-$budget" --rate "$RATE" --max-outstanding 10000 --connections 16
    stop_server
done

python3 - "$WORK" "$BUDGET" "$CAPACITY" "$RATE" "$CLIENTS" <<'EOF' > "$WORK/table.md"
import json, sys
work, budget, capacity, rate, clients = sys.argv[1:]
load = lambda n: json.load(open(f"{work}/{n}.json"))
def fmt(v):
    return "-" if v is None else f"{v:.1f}"
print(f"Capacity (32 clients, closed loop): {capacity} requests/s.")
print()
print("| load | queue_budget_ms | answered/s | admitted (OK)/s | refused | admitted p50 ms | admitted p99 ms | server p99 ms | server queue p99 ms | other errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for kind, label in [("closed", f"{clients} clients"), ("open", f"{rate} req/s (10x)")]:
    for b in ["0", budget]:
        r = load(f"{kind}-{b}")
        codes = dict(r.get("errors_by_code") or {})
        refused = codes.pop("RESOURCE_EXHAUSTED", 0)
        answered = r["ok"] + r["errors"]
        share = refused / answered if answered else 0
        other = ", ".join(f"{k} {v}" for k, v in codes.items()) or "none"
        print(f"| {label} | {b if b != '0' else '0 (off)'} | {r['completed_per_s']:.0f} | "
              f"{r['requests_per_s']:.0f} | {share * 100:.1f} % | {fmt(r['p50_ms'])} | "
              f"{fmt(r['p99_ms'])} | {fmt(r.get('server_p99_ms'))} | {fmt(r.get('server_queue_p99_ms'))} | {other} |")
print()
for k, label in [("closed", f"{clients} clients"), ("open", "10x open loop")]:
    off, on = load(f"{k}-0"), load(f"{k}-{budget}")
    print(f"- {label}: admitted p99 {off['p99_ms']:.0f} -> {on['p99_ms']:.0f} ms as the client saw it, "
          f"{off['server_p99_ms']:.0f} -> {on['server_p99_ms']:.0f} ms inside the server (target: under 250 ms at 10x overload).")
EOF
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: overload, admitted latency with and without the queue budget (\`benches/overload.sh\`)"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg) after. intentd $(git rev-parse --short HEAD), profile \`$PROFILE\`, model $MODEL_DIR, store on (SQLite), max_in_flight 256 (default). $PLACEMENT Latencies are of admitted (OK) requests, from send; refusals are RESOURCE_EXHAUSTED answered at once. \"server p99\" is the server's own time for the answer (timings.total_us: validation to decision, before the log commit)."
    echo
    cat "$WORK/table.md"
    echo
    echo "Command: \`bash benches/overload.sh --duration $DURATION --budget-ms $BUDGET --profile $PROFILE$PIN_FLAG\`; per run: \`intentd serve\` with \`batching.queue_budget_ms: 0|$BUDGET\`, then \`intentd bench --addr ADDR --texts $TEXTS --concurrency $CLIENTS --duration $DURATION --warmup 2 --json\` and \`intentd bench ... --rate $RATE --max-outstanding 10000 --connections 16 ...\`."
} | tee -a "$RESULTS"
