#!/usr/bin/env bash
# What a model reload costs in memory (issue 12 item 7): a real `intentd serve` under light
# open-loop load, its steady RSS, then N reloads by SIGHUP one after another (each waits for the
# "model reloaded" log line). The peak is the kernel's VmHWM, reset just before the first
# reload (/proc/PID/clear_refs), so it catches transients a sampler would miss. Prints steady,
# peak and final RSS and peak / steady; exits 1 when that ratio is 1.5 or more. With --record,
# appends a dated section with the command to benches/RESULTS.md.
#
#   bash benches/reload_memory.sh [--reloads N] [--rate R] [--steady S] [--bin PATH] [--record]
#
# --reloads  reloads to run (default 20)
# --rate     requests per second of the light load during the whole run (default 50)
# --steady   seconds over which the steady RSS is sampled after a warm-up of the same length
#            (default 20)
# --bin      an intentd binary to measure instead of building target/release/intentd
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
RELOADS=20
RATE=50
STEADY=20
BIN=
RECORD=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --reloads) RELOADS=${2:?}; shift ;;
        --rate) RATE=${2:?}; shift ;;
        --steady) STEADY=${2:?}; shift ;;
        --bin) BIN=${2:?}; shift ;;
        --record) RECORD=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
RESULTS=${RESULTS:-benches/RESULTS.md}
TEXTS=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
if [ -z "$BIN" ]; then
    nice -n 19 cargo build --quiet --release --bin intentd
    BIN=target/release/intentd
fi
[ -f "$MODEL_DIR/model.json" ] || { echo "no trained model at $MODEL_DIR" >&2; exit 1; }
WORK=$(mktemp -d)
SERVER_PID=
LOAD_PID=
cleanup() {
    [ -f "$WORK/serve.log" ] && cp "$WORK/serve.log" /tmp/reload_memory-serve.log
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/c.yml" <<YML
listen: 127.0.0.1:$PORT
model_dir: $(realpath "$MODEL_DIR")
auto_train: false
operator_dir: $REPO/config/operator
training_data: $REPO/training-data/nlu
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
YML
"$BIN" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$BIN" bench --addr "127.0.0.1:$PORT" --texts "$TEXTS" --concurrency 1 --duration 0.5 \
    --wait-serving 120 --json > /dev/null
"$BIN" bench --addr "127.0.0.1:$PORT" --texts "$TEXTS" --rate "$RATE" --duration 3600 \
    --json > "$WORK/load.json" 2>&1 &
LOAD_PID=$!

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }
# Median of RSS samples every 0.5 s for $1 seconds.
median_rss() {
    local n=$(( $1 * 2 )) i
    for i in $(seq 1 "$n"); do rss_kb; sleep 0.5; done | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'
}
sleep "$STEADY" # warm-up: connections, caches, the first batches
STEADY_KB=$(median_rss "$STEADY")
START_HWM_KB=$(hwm_kb)
echo 5 > "/proc/$SERVER_PID/clear_refs" # VmHWM := current RSS
echo "steady RSS $((STEADY_KB / 1024)) MB (start-up peak $((START_HWM_KB / 1024)) MB); reloading $RELOADS times"
: > "$WORK/reloads.csv"
for i in $(seq 1 "$RELOADS"); do
    t0=$(date +%s.%N)
    kill -HUP "$SERVER_PID"
    for _ in $(seq 1 1200); do
        [ "$(grep -c 'model reloaded' "$WORK/serve.log")" -ge "$i" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died; log:" >&2; tail -n 20 "$WORK/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    [ "$(grep -c 'model reloaded' "$WORK/serve.log")" -ge "$i" ] || { echo "reload $i did not finish in 120 s" >&2; tail -n 20 "$WORK/serve.log" >&2; exit 1; }
    echo "$i,$(python3 -c "print(round($(date +%s.%N) - $t0, 2))"),$(( $(rss_kb) / 1024 )),$(( $(hwm_kb) / 1024 ))" >> "$WORK/reloads.csv"
done
FINAL_KB=$(median_rss 10)
PEAK_KB=$(hwm_kb)
kill "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=
if ! kill -TERM "$SERVER_PID" 2>/dev/null; then echo "the server died" >&2; exit 1; fi
wait "$SERVER_PID" || true; SERVER_PID=
RATIO=$(python3 -c "print(f'{$PEAK_KB / $STEADY_KB:.2f}')")
FINAL_RATIO=$(python3 -c "print(f'{$FINAL_KB / $STEADY_KB:.2f}')")
REPORT=$(
    echo "| reloads | steady RSS MB | peak RSS MB (VmHWM) | final RSS MB | peak / steady | final / steady |"
    echo "|---:|---:|---:|---:|---:|---:|"
    echo "| $RELOADS | $((STEADY_KB / 1024)) | $((PEAK_KB / 1024)) | $((FINAL_KB / 1024)) | $RATIO | $FINAL_RATIO |"
    echo
    echo "Per reload (seconds from SIGHUP to \"model reloaded\", RSS and VmHWM MB after it): $(awk -F, '{printf "%s%s s %s/%s", (NR > 1 ? ", " : ""), $2, $3, $4}' "$WORK/reloads.csv")."
)
echo "$REPORT"
if [ "$RECORD" = 1 ]; then
    {
        echo
        echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: memory across model reloads (\`benches/reload_memory.sh\`)"
        echo
        echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg) after; the lead's builds may have been running at the same time. intentd $(git rev-parse --short HEAD) ($BIN), model $MODEL_DIR, open-loop load of $RATE req/s over $TEXTS during the whole run, store on. Steady RSS: median of 0.5 s samples over ${STEADY} s after a ${STEADY} s warm-up; peak: VmHWM, reset just before the first reload; final: median over 10 s after the last one. Target: peak under 1.5x steady."
        echo
        echo "$REPORT"
        echo
        echo "Command: \`bash benches/reload_memory.sh $ARGS\`"
    } >> "$RESULTS"
fi
python3 -c "import sys; sys.exit(0 if $PEAK_KB < 1.5 * $STEADY_KB else 1)" || { echo "peak / steady $RATIO is 1.5 or more" >&2; exit 1; }
