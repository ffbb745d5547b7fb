#!/usr/bin/env bash
# Memory under steady load (issue 12 item 7): a real `intentd serve` with open-loop Classify
# load for --minutes, its RSS sampled from /proc/PID/status every --interval seconds into a CSV.
# Warm-up RSS is the median of the minute after --warmup-minutes, end RSS the median of the
# last minute; prints both and the change, and exits 1 when it is more than 5 %.
#
#   bash benches/soak.sh [--minutes M] [--warmup-minutes W] [--rate R] [--interval S]
#                        [--bin PATH] [--csv FILE] [--old-config] [--record]
#
# The load: the smp2017 test texts with one message in ten carrying a banned word (blocked and
# queued for review), spread over 64 chats and 1,000 users, every message a new message_id; at
# this rate most groups' send queues are full, so dropped sends are recorded all the time. So
# every in-memory structure that grows with traffic grows: the review and dropped-send queues,
# the idempotency cache and key set, user and group rows. Their limits are set small enough
# (see the config below) that each reaches its bound during the warm-up: after it, RSS must be
# flat. --old-config leaves out the `playbook_state` section (for binaries before it existed).
# --record appends a dated section with the command to benches/RESULTS.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MINUTES=15
WARMUP=3
RATE=200
INTERVAL=5
BIN=
CSV=
OLD_CONFIG=0
RECORD=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=${2:?}; shift ;;
        --warmup-minutes) WARMUP=${2:?}; shift ;;
        --rate) RATE=${2:?}; shift ;;
        --interval) INTERVAL=${2:?}; shift ;;
        --bin) BIN=${2:?}; shift ;;
        --csv) CSV=${2:?}; shift ;;
        --old-config) OLD_CONFIG=1 ;;
        --record) RECORD=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
python3 -c "import sys; m, w = float('$MINUTES'), float('$WARMUP'); sys.exit(0 if m >= w + 2 else 1)" \
    || { echo "--minutes must be at least --warmup-minutes + 2 (a minute after warm-up, a last minute)" >&2; exit 2; }
RESULTS=${RESULTS:-benches/RESULTS.md}
DATASET=${TEXTS:-../shared/datasets/smp2017/test.tsv}
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
if [ -z "$BIN" ]; then
    nice -n 19 cargo build --quiet --release --bin intentd
    BIN=target/release/intentd
fi
[ -f "$MODEL_DIR/model.json" ] || { echo "no trained model at $MODEL_DIR" >&2; exit 1; }
WORK=$(mktemp -d)
CSV=${CSV:-$WORK/rss.csv}
SERVER_PID=
LOAD_PID=
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Texts: the dataset, and every tenth line one with a banned word.
python3 - "$DATASET" config/operator/banned_words.txt > "$WORK/texts.txt" <<'PY'
import sys
texts = [l.split("\t")[0] for l in open(sys.argv[1], encoding="utf-8").read().splitlines()[1:] if l.strip()]
banned = [l.strip() for l in open(sys.argv[2], encoding="utf-8") if l.strip() and not l.startswith("#")][:5]
for i, t in enumerate(texts):
    print(t)
    if i % 9 == 0:
        print(f"{t} {banned[i % len(banned)]}")
PY
export INTENTD_TOKEN
INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
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
idempotency:                 # reached within a minute at the default rate
  cache_entries: 10000
  known_keys: 20000
metrics:
  enabled: true
  listen: 127.0.0.1:$METRICS_PORT
http:
  enabled: false
YML
if [ "$OLD_CONFIG" = 0 ]; then
    cat >> "$WORK/c.yml" <<YML
playbook_state:              # reached within the warm-up at the default rate
  review_queue: {max_entries: 2000, max_bytes: 8388608, max_age_s: 86400}
  dropped_sends: {max_entries: 2000, max_bytes: 8388608, max_age_s: 86400}
YML
fi
"$BIN" serve --config "$WORK/c.yml" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$BIN" bench --addr "127.0.0.1:$PORT" --texts "$WORK/texts.txt" --concurrency 1 --duration 0.5 \
    --wait-serving 120 --json > /dev/null
TOTAL_S=$(python3 -c "print(int(float('$MINUTES') * 60))")
"$BIN" bench --addr "127.0.0.1:$PORT" --texts "$WORK/texts.txt" --rate "$RATE" \
    --duration "$TOTAL_S" --json > "$WORK/load.json" 2> "$WORK/load.err" &
LOAD_PID=$!
echo "seconds,rss_kb,anon_kb,file_kb,shmem_kb,store_kb" > "$CSV"
START=$(date +%s)
while :; do
    NOW=$(( $(date +%s) - START ))
    [ "$NOW" -ge "$TOTAL_S" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died; log:" >&2; tail -n 20 "$WORK/serve.log" >&2; exit 1; }
    # What SQLite itself holds (page caches, statements), from /metrics: how much of the RSS
    # is the store's caches filling up.
    STORE_KB=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1 == "intentd_store_memory_bytes" {printf "%d", $2 / 1024}')
    echo "$NOW,$(awk '/^(VmRSS|RssAnon|RssFile|RssShmem):/ {v[$1] = $2} END {print v["VmRSS:"] "," v["RssAnon:"] "," v["RssFile:"] "," v["RssShmem:"]}' "/proc/$SERVER_PID/status"),${STORE_KB:-0}" >> "$CSV"
    sleep "$INTERVAL"
done
wait "$LOAD_PID" || true; LOAD_PID=
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^intentd_(state_discarded_total|requests_total)' > "$WORK/metrics.txt" || true
if ! kill -TERM "$SERVER_PID" 2>/dev/null; then echo "the server died" >&2; exit 1; fi
wait "$SERVER_PID" || true; SERVER_PID=
SUMMARY=$(python3 - "$CSV" "$WARMUP" "$WORK/load.json" "$WORK/metrics.txt" <<'PY'
import csv, json, statistics, sys
rows_all = list(csv.DictReader(open(sys.argv[1])))
rows = [(int(r["seconds"]), int(r["rss_kb"])) for r in rows_all]
w = float(sys.argv[2]) * 60
end = rows[-1][0]
warm = statistics.median(k for s, k in rows if w <= s < w + 60)
last = statistics.median(k for s, k in rows if s >= end - 60)
after = [k for s, k in rows if s >= w]
change = (last - warm) / warm * 100
try:
    load = json.load(open(sys.argv[3]))
    codes = ", ".join(f"{k} {v}" for k, v in (load.get("errors_by_code") or {}).items())
    sent = f"{load.get('requests_per_s', 0):.0f} req/s answered, {load.get('errors', load.get('error_count', 0))} errors" + (f" ({codes})" if codes else "")
except Exception as e:
    sent = f"load report unreadable: {e}"
per_min = [statistics.median(k for s, k in rows if m * 60 <= s < (m + 1) * 60) for m in range(int(end // 60) + 1) if any(m * 60 <= s < (m + 1) * 60 for s, _ in rows)]
print(f"| warm-up RSS MB (minute {int(w // 60) + 1}) | end RSS MB (last minute) | change | max after warm-up MB | start MB |")
print("|---:|---:|---:|---:|---:|")
print(f"| {warm / 1024:.1f} | {last / 1024:.1f} | {change:+.1f} % | {max(after) / 1024:.1f} | {rows[0][1] / 1024:.1f} |")
print()
print("RSS per minute (median MB): " + ", ".join(f"{k / 1024:.0f}" for k in per_min) + ".")
kinds = [c for c in ("anon_kb", "file_kb", "shmem_kb", "store_kb") if c in rows_all[0]]
if kinds:
    def med(col, lo, hi):
        return statistics.median(int(r[col]) for r in rows_all if lo <= int(r["seconds"]) < hi) / 1024
    print()
    print("Of which (warm-up minute -> last minute, MB): " + ", ".join(
        f"{'SQLite (in anon)' if c == 'store_kb' else c[:-3]} {med(c, w, w + 60):.1f} -> {med(c, end - 60, end + 1):.1f}" for c in kinds) + ".")
    if "store_kb" in kinds:
        print()
        print("SQLite's memory per minute (median MB, `intentd_store_memory_bytes`): " + ", ".join(
            f"{med('store_kb', m * 60, (m + 1) * 60):.1f}" for m in range(int(end // 60) + 1)
            if any(m * 60 <= int(r["seconds"]) < (m + 1) * 60 for r in rows_all)) + ".")
print()
print(f"Load: {sent}.")
disc = [l.strip() for l in open(sys.argv[4]) if l.startswith("intentd_state_discarded_total")]
if disc:
    print()
    print("Discarded by the limits (/metrics): " + "; ".join(f"`{d}`" for d in disc) + ".")
print(f"CHANGE={change:.2f}")
PY
)
CHANGE=$(echo "$SUMMARY" | sed -n 's/^CHANGE=//p')
REPORT=$(echo "$SUMMARY" | grep -v '^CHANGE=')
echo "$REPORT"
if [ "$RECORD" = 1 ]; then
    {
        echo
        echo "## $(date -u '+%Y-%m-%d %H:%M') UTC: memory under a ${MINUTES}-minute soak (\`benches/soak.sh\`)"
        echo
        echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg) after; the lead's builds may have been running at the same time. intentd $(git rev-parse --short HEAD) ($BIN), model $MODEL_DIR, store on, open-loop $RATE req/s of the smp2017 test texts with one in ten carrying a banned word, 64 chats, 1,000 users, every message_id new; idempotency cache 10,000 answers / 20,000 keys$([ "$OLD_CONFIG" = 0 ] && echo ", review and dropped-send queues 2,000 entries each") (limits reached in the warm-up); VmRSS sampled every ${INTERVAL} s. Target: end RSS within 5 % of the RSS after a ${WARMUP}-minute warm-up."
        echo
        echo "$REPORT"
        echo
        echo "Command: \`bash benches/soak.sh $ARGS\`"
    } >> "$RESULTS"
fi
python3 -c "import sys; sys.exit(0 if abs($CHANGE) <= 5 else 1)" || { echo "RSS changed by $CHANGE % after the warm-up (limit 5 %)" >&2; exit 1; }
