#!/usr/bin/env bash
# Serving cost of models trained from each base (issue 17): for every model folder given,
# start `intentd serve` on it, run the load generator with N concurrent clients (8: enough to
# fill the batcher without tripping the queue budget's RESOURCE_EXHAUSTED), and report answers/s,
# errors, p50 / p99 and the server's RSS (now and peak). Run on a quiet machine.
#
#   bash benches/base_models.sh [--bin target/release/intentd] [--duration 10] [--concurrency 8] \
#     [--texts ../shared/datasets/smp2017/test.tsv] MODEL_DIR...
#
# --texts: a TSV with a `text` header or one text per line (an ensemble's cascade sends only the
# texts its first member is unsure of to the others, so its cost depends on the traffic).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/intentd
duration=10
concurrency=8
texts=../shared/datasets/smp2017/test.tsv
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --texts) texts=$2; shift 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
[ ${#models[@]} -gt 0 ] || { echo "usage: $0 [--bin PATH] [--duration S] [--concurrency N] [--texts FILE] MODEL_DIR..." >&2; exit 2; }
[ -f "$texts" ] || { echo "--texts $texts: no such file" >&2; exit 2; }
work=$(mktemp -d /tmp/intentd-bases.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

echo "| model | base | answered/s ($concurrency clients) | errors | answers from the model | p50 ms | p99 ms | RSS MiB | peak RSS MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
for m in "${models[@]}"; do
  port=$((20000 + RANDOM % 20000))
  cat > "$work/$port.yml" <<EOF
# Throw-away config written by benches/base_models.sh.
listen: 127.0.0.1:$port
model_dir: $(realpath "$m")
auto_train: false
operator_dir: $PWD/config/operator
training_data: $PWD/training-data/nlu
auth:
  bots:
    - id: demo
      token: $INTENTD_TOKEN
store:
  enabled: true
  path: $work/$port.db
  key_file: $work/$port.key
  create_key_file: true
metrics:
  enabled: true
  listen: 127.0.0.1:0
http:
  enabled: false
EOF
  "$bin" serve --config "$work/$port.yml" >"$work/$port.log" 2>&1 &
  pid=$!
  "$bin" bench --addr "127.0.0.1:$port" --texts "$texts" --json --concurrency 1 --duration 0.5 \
    --wait-serving 120 >/dev/null
  out=$("$bin" bench --addr "127.0.0.1:$port" --texts "$texts" --json --concurrency "$concurrency" \
    --duration "$duration" --warmup 2)
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")
  hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  base=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['base_model'])" "$m/model.json")
  python3 - "$m" "$base" "$rss" "$hwm" <<EOF
import json, sys
r = json.loads('''$out''')
model = r.get("source_share", {}).get("MODEL", 0.0)
print(f"| {sys.argv[1]} | {sys.argv[2]} | {r['ok'] / r['elapsed_s']:.1f} | {r['errors']} {r['errors_by_code']} | {model:.0%} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {sys.argv[3]} | {sys.argv[4]} |")
EOF
done
echo
echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg). intentd $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty), $bin; texts $texts."
echo
echo '```sh'
echo "bash benches/base_models.sh --bin $bin --duration $duration --concurrency $concurrency --texts $texts ${models[*]}"
echo '```'
