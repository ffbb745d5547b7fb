#!/usr/bin/env bash
# What a setting costs in gRPC Classify throughput: the same server and load with the setting on
# and off, interleaved pairs in one sitting, medians; appends a dated section with the commands
# to benches/RESULTS.md.
#
#   bash benches/setting_cost.sh --setting idempotency|durability [--pairs N] [--duration S]
#                                [--profile release|dev] [--no-model]
#
# idempotency: `idempotency.enabled` true / false (issue 13: at most 5 %). Every request has a
#   new message_id (the load generator numbers them), so each one pays for the lookup (memory,
#   then the store) and for writing its first answer with its log row: the common case.
# durability: `store.durability` full / normal (issue 12: what an fsync per group commit costs).
# --no-model measures keyword-only decisions, where the model's time does not hide the cost.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PAIRS=3
SETTING=
DURATION=10
PROFILE=release
MODEL=1
CONCURRENCY=${CONCURRENCY:-32}
while [ $# -gt 0 ]; do
    case "$1" in
        --setting) SETTING=${2:?}; shift ;;
        --pairs) PAIRS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --profile) PROFILE=${2:?}; shift ;;
        --no-model) MODEL=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# Per side: a label, the idempotency switch, the store durability.
case "$SETTING" in
    idempotency) A=(on true full); B=(off false full); WHAT="what idempotent retries cost"
        KEY='idempotency.enabled: true|false'; TARGET="Throughput cost of idempotency: %s %% (target: at most 5 %%)." ;;
    durability) A=(full true full); B=(normal true normal); WHAT="what durable commits cost"
        KEY='store.durability: full|normal'; TARGET="Throughput cost of fsynced commits (full vs normal): %s %%." ;;
    *) echo "--setting must be idempotency or durability (see --help)" >&2; exit 2 ;;
esac
RESULTS=${RESULTS:-benches/RESULTS.md}
TEXTS=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
cargo build --quiet --profile "$PROFILE" --bin intentd
DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=target/$DIR/intentd
if [ "$MODEL" = 1 ] && [ ! -f "$MODEL_DIR/model.json" ]; then
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
model_dir=$([ "$MODEL" = 1 ] && realpath "$MODEL_DIR" || echo "$WORK/no-model")

run_one() { # $1 = side label, $2 = pair number, $3 = idempotency.enabled, $4 = store.durability
    rm -f "$WORK"/intentd.db*
    cat > "$WORK/c.yml" <<EOF
listen: 127.0.0.1:$PORT
model_dir: $model_dir
auto_train: false
model:
  required: $([ "$MODEL" = 1 ] && echo true || echo false)
operator_dir: $REPO/config/operator
training_data: $REPO/training-data/nlu
idempotency:
  enabled: $3
auth:
  bots:
    - id: demo
      token: $INTENTD_TOKEN
store:
  enabled: true
  path: $WORK/intentd.db
  durability: $4
  key_file: $WORK/intentd.key
  create_key_file: true
metrics:
  enabled: false
http:
  enabled: false
EOF
    "$BIN" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    if [ "$MODEL" = 1 ]; then
        "$BIN" bench --addr "127.0.0.1:$PORT" --texts "$TEXTS" --concurrency 1 --duration 0.5 \
            --wait-serving 60 --json > /dev/null
    else # health stays NOT_SERVING without a model: wait for the port instead
        for _ in $(seq 1 300); do
            "$BIN" bench --addr "127.0.0.1:$PORT" --texts "$TEXTS" --concurrency 1 --duration 0.2 \
                --json > /dev/null 2>&1 && break
            sleep 0.1
        done
    fi
    "$BIN" bench --addr "127.0.0.1:$PORT" --texts "$TEXTS" --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --warmup 2 --json > "$WORK/$1-$2.json"
    if ! kill -TERM "$SERVER_PID" 2>/dev/null; then
        cp "$WORK/serve.log" /tmp/setting_cost-serve.log
        echo "error: the server died during the run; its log: /tmp/setting_cost-serve.log" >&2
        tail -n 20 "$WORK/serve.log" >&2
        exit 1
    fi
    wait "$SERVER_PID" || true; SERVER_PID=
}

# ABBA order (A, B, B, A, ...) so a drift in the machine's load favours neither side.
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then run_one "${A[@]:0:1}" "$i" "${A[@]:1}"; run_one "${B[@]:0:1}" "$i" "${B[@]:1}"
    else run_one "${B[@]:0:1}" "$i" "${B[@]:1}"; run_one "${A[@]:0:1}" "$i" "${A[@]:1}"; fi
done

python3 - "$WORK" "$PAIRS" "$SETTING" "${A[0]}" "${B[0]}" "$TARGET" <<'EOF' > "$WORK/table.md"
import json, statistics, sys
work, pairs, setting, a_name, b_name, target = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def load(side):
    return [json.load(open(f"{work}/{side}-{i}.json")) for i in range(1, pairs + 1)]
on, off = load(a_name), load(b_name)
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"| figure | {setting} {a_name} | {b_name} | {a_name} / {b_name} |")
print("| --- | --- | --- | --- |")
for k, name in [("requests_per_s", "Classify requests/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]:
    a, b = med(on, k), med(off, k)
    print(f"| {name} (median of {pairs}) | {a:.1f} | {b:.1f} | {a / b:.3f} |")
print()
print(f"each run (requests/s, {a_name} / {b_name}): " + ", ".join(
    f"{a['requests_per_s']:.0f} / {b['requests_per_s']:.0f}" for a, b in zip(on, off)))
cost = 1 - med(on, "requests_per_s") / med(off, "requests_per_s")
print()
print(target % f"{cost * 100:.1f}")
EOF
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: $WHAT (\`benches/setting_cost.sh --setting $SETTING\`)"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg) after. intentd $(git rev-parse --short HEAD), profile \`$PROFILE\`, $([ "$MODEL" = 1 ] && echo "model $MODEL_DIR" || echo "no model (keyword-only decisions)"). Every request a new message_id; store on (SQLite); $CONCURRENCY clients, ${DURATION} s after a 2 s warm-up; pairs interleaved in ABBA order (${A[0]}, ${B[0]}, ${B[0]}, ${A[0]}, ...)."
    echo
    cat "$WORK/table.md"
    echo
    echo "Command: \`bash benches/setting_cost.sh --setting $SETTING --pairs $PAIRS --duration $DURATION --profile $PROFILE$([ "$MODEL" = 1 ] || echo ' --no-model')\`; per run: \`intentd serve\` with \`$KEY\`, then \`intentd bench --addr 127.0.0.1:PORT --texts $TEXTS --concurrency $CONCURRENCY --duration $DURATION --warmup 2 --json\`."
} | tee -a "$RESULTS"
