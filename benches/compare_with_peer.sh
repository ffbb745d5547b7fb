#!/usr/bin/env bash
# Re-runs the whole speed comparison with the peer (the same m3e-small encoder in ONNX Runtime,
# shared/peers/peer_bench.py) in one sitting, and appends a dated section with every figure, the
# exact commands and the ratios against the peer to benches/RESULTS.md.
#
#   bash benches/compare_with_peer.sh [--quick] [--no-server] [--no-train] [--profile release|dev]
#
# Steps: peer deps (pip, if missing) -> peer run -> cargo build -> in-process encoder figures in
# the peer's shape (benches/inprocess.rs) -> a trained model (trained once if missing) ->
# `intentd serve` with a throw-away config on a free loopback port -> cold start to SERVING ->
# `intentd bench` at low load (1 client), closed loop (max throughput), open loop at half of it
# -> peak RSS (VmHWM) -> stop the server -> the same server without a model (keyword-only
# decisions, 1 client) -> fine-tuning examples/s, `intentd train` and PyTorch
# (benches/torch_finetune.py) on the same third of SMP2017 train, one epoch, three interleaved
# pairs, medians -> RESULTS.md.
#
# --no-server   peer + in-process only (also chosen automatically when the binary has no `serve`).
# --no-train    skip the fine-tuning comparison (about 2 minutes).
# --quick       short load phases (3 s instead of 10 s) while developing.
# --profile     cargo profile (default release; dev reuses a debug build's dependencies, which
#               are optimised too, but figures for RESULTS.md should come from release).
# Environment:  SHARED_DIR (default: the shared/ folder beside or above the repository),
#               TEXTS, MODEL_DIR (default models/intentd-default), DURATION, CONCURRENCY, RESULTS.
# All traffic goes to 127.0.0.1; every phase is bounded in time and the server is stopped on exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

QUICK=0
SERVER=1
TRAIN=1
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-server) SERVER=0 ;;
        --no-train) TRAIN=0 ;;
        --profile) PROFILE=${2:?--profile needs a value}; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

find_shared() {
    local d=$REPO
    while [ "$d" != "/" ]; do
        d=$(dirname "$d")
        if [ -f "$d/shared/peers/peer_bench.py" ]; then echo "$d/shared"; return 0; fi
    done
    return 1
}
SHARED_DIR=${SHARED_DIR:-$(find_shared || true)}
[ -n "$SHARED_DIR" ] && [ -f "$SHARED_DIR/peers/peer_bench.py" ] \
    || { echo "error: shared/peers/peer_bench.py not found above $REPO; set SHARED_DIR" >&2; exit 1; }
TEXTS=${TEXTS:-$SHARED_DIR/datasets/smp2017/test.tsv}
[ -s "$TEXTS" ] || { echo "error: texts file $TEXTS missing or empty" >&2; exit 1; }
MODEL_DIR=${MODEL_DIR:-models/intentd-default}
RESULTS=${RESULTS:-benches/RESULTS.md}
if [ "$QUICK" = 1 ]; then DURATION=${DURATION:-3}; WARMUP=1; else DURATION=${DURATION:-10}; WARMUP=2; fi
CONCURRENCY=${CONCURRENCY:-64}
case "$PROFILE" in
    release) PROFILE_DIR=release ;;
    dev) PROFILE_DIR=debug ;;
    *) PROFILE_DIR=$PROFILE ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/$PROFILE_DIR/intentd

WORK=$(mktemp -d -t intentd-compare.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

: > "$WORK/commands.txt"
# Runs a command, records it (as typed, relative to the repository) for RESULTS.md.
run() {
    echo "+ $*" >&2
    printf '%s\n' "$*" >> "$WORK/commands.txt"
    "$@"
}
last_json() { grep '^{' "$1" | tail -n 1; }
rel() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1]))' "$1"; }

{
    echo "date_utc=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host_cpus=$(nproc)"
    echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "rustc=$(rustc --version)"
    echo "profile=$PROFILE"
    echo "texts=$(rel "$TEXTS")"
    echo "threads=RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset} CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-unset}"
} > "$WORK/env.txt"

# 1. The peer, first, so it runs on the same machine state as the rest.
if ! python3 -c 'import onnxruntime, tokenizers, numpy' 2>/dev/null; then
    run python3 -m pip install onnxruntime tokenizers numpy
fi
python3 -c 'import onnxruntime; print("onnxruntime=" + onnxruntime.__version__)' >> "$WORK/env.txt"
run python3 "$(rel "$SHARED_DIR/peers/peer_bench.py")" --texts "$(rel "$TEXTS")" | tee "$WORK/peer.out"
last_json "$WORK/peer.out" > "$WORK/peer.json"

# 2. Build, and the same measurement as the peer's, in process.
if [ "$PROFILE" = release ]; then run cargo build --release; else run cargo build --profile "$PROFILE"; fi
if [ "$PROFILE" = release ]; then BENCH_PROFILE=(); else BENCH_PROFILE=(--profile "$PROFILE"); fi
run cargo bench "${BENCH_PROFILE[@]}" --bench inprocess -- --texts "$(rel "$TEXTS")" | tee "$WORK/inprocess.out"
last_json "$WORK/inprocess.out" > "$WORK/inprocess.json"

HELP=$("$BIN" --help 2>/dev/null || true)
if [ "$SERVER" = 1 ] && ! { grep -qE '^ +serve ' <<< "$HELP" && grep -qE '^ +bench ' <<< "$HELP"; }; then
    echo "note: $BIN has no 'serve' and 'bench' subcommands yet; measuring peer and in-process figures only" >&2
    SERVER=0
fi

# 3. The server under load.
if [ "$SERVER" = 1 ]; then
    if [ ! -f "$MODEL_DIR/model.json" ]; then
        echo "no trained model at $MODEL_DIR: training it once (not part of any figure)" >&2
        run "$BIN" train --out "$MODEL_DIR" --quiet
    fi
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export INTENTD_TOKEN
    INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    write_config() { # $1 = model folder
    cat <<EOF
# Throw-away config written by benches/compare_with_peer.sh.
listen: 127.0.0.1:$PORT
model_dir: $1
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
  enabled: true
  listen: 127.0.0.1:0
EOF
    }
    write_config "$(realpath -m "$MODEL_DIR")" > "$WORK/intentd.yml"
    echo "$BIN serve --config <generated config: listen 127.0.0.1:$PORT, model $MODEL_DIR, store in a temp dir>" \
        | sed "s|$REPO/||" >> "$WORK/commands.txt"
    LAUNCH_MS=$(date +%s%3N)
    "$BIN" serve --config "$WORK/intentd.yml" > "$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    B=$(rel "$BIN")
    T=$(rel "$TEXTS")
    bench() { run "$B" bench --addr "127.0.0.1:$PORT" --texts "$T" --json "$@"; }

    # Cold start: from launch to the health check reporting SERVING (model loaded).
    if ! bench --concurrency 1 --duration 0.5 --wait-serving 60 > "$WORK/cold.json"; then
        echo "error: the server did not become SERVING; its log:" >&2
        tail -n 30 "$WORK/serve.log" >&2
        exit 1
    fi
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["serving_at_unix_ms"] - int(sys.argv[2]))' \
        "$WORK/cold.json" "$LAUNCH_MS" > "$WORK/cold_start_ms.txt"

    bench --concurrency 1 --duration "$DURATION" --warmup "$WARMUP" > "$WORK/low.json"
    bench --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" > "$WORK/closed.json"
    HALF=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["requests_per_s"] / 2, 1))' "$WORK/closed.json")
    bench --rate "$HALF" --duration "$DURATION" > "$WORK/open.json"

    grep -E '^(VmHWM|VmRSS):' "/proc/$SERVER_PID/status" > "$WORK/rss.txt"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || echo "note: server exited with status $? on SIGTERM" >&2
    SERVER_PID=

    # Keyword-only decisions: the same server with no model folder answers from the rules
    # (health stays NOT_SERVING, so no --wait-serving; the port opens at once, then a warm-up).
    write_config "$WORK/no-model" > "$WORK/intentd-rules.yml"
    echo "$BIN serve --config <the same config, model_dir pointing at a missing folder>" \
        | sed "s|$REPO/||" >> "$WORK/commands.txt"
    "$BIN" serve --config "$WORK/intentd-rules.yml" > "$WORK/serve-rules.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$WORK/serve-rules.log" 2>/dev/null && break
        sleep 0.1
    done
    bench --concurrency 1 --duration "$DURATION" --warmup "$WARMUP" > "$WORK/rules.json"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || echo "note: server exited with status $? on SIGTERM" >&2
    SERVER_PID=
fi

# 4. Fine-tuning speed: intentd and PyTorch, the same recipe on the same data.
if [ "$TRAIN" = 1 ]; then
    FT_DATA="$WORK/finetune.tsv"
    # Every third row of SMP2017 train (766 texts, all 31 intents), one epoch.
    awk 'NR == 1 || NR % 3 == 2' "$SHARED_DIR/datasets/smp2017/train.tsv" > "$FT_DATA"
    echo "awk 'NR == 1 || NR % 3 == 2' $(rel "$SHARED_DIR/datasets/smp2017/train.tsv") > finetune.tsv" >> "$WORK/commands.txt"
    # Three interleaved pairs (intentd, PyTorch, intentd, ...): each figure is the median of its
    # three, so a burst of other work on the machine moves one run, not the ratio.
    HAVE_TORCH=0
    if python3 -c 'import torch, tokenizers' 2>/dev/null; then
        HAVE_TORCH=1
        python3 -c 'import torch; print("torch=" + torch.__version__)' >> "$WORK/env.txt"
    fi
    : > "$WORK/train_eps_all.txt"
    : > "$WORK/torch_all.jsonl"
    for pair in 1 2 3; do
        run "$(rel "$BIN")" train --mode full --data "$FT_DATA" --epochs 1 --no-refit --out "$WORK/ft-model" 2> "$WORK/train.err" || true
        grep -oE '\(([0-9.]+) examples/s\)' "$WORK/train.err" | grep -oE '[0-9.]+' | head -n 1 >> "$WORK/train_eps_all.txt" || true
        if [ "$HAVE_TORCH" = 1 ]; then
            run python3 benches/torch_finetune.py --data "$FT_DATA" --model-dir models/m3e-small \
                | tee "$WORK/torch.out" || true
            last_json "$WORK/torch.out" >> "$WORK/torch_all.jsonl" || true
        fi
    done
    python3 - "$WORK" <<'PY'
import json, os, statistics, sys
work = sys.argv[1]
eps = [float(l) for l in open(os.path.join(work, "train_eps_all.txt")) if l.strip()]
if eps:
    open(os.path.join(work, "train_eps.txt"), "w").write(f"{statistics.median(eps)}\n")
runs = [json.loads(l) for l in open(os.path.join(work, "torch_all.jsonl")) if l.strip()]
if runs:
    median = statistics.median(r["examples_per_s"] for r in runs)
    best = min(runs, key=lambda r: abs(r["examples_per_s"] - median))
    best = dict(best, examples_per_s=median, runs_examples_per_s=[r["examples_per_s"] for r in runs])
    json.dump(best, open(os.path.join(work, "torch.json"), "w"))
print("fine-tuning examples/s, intentd:", eps, "PyTorch:", [r["examples_per_s"] for r in runs])
PY
    if [ "$HAVE_TORCH" = 0 ]; then
        echo "torch_missing=PyTorch is not installed here (python3 -m pip install torch), so its figure is missing" >> "$WORK/env.txt"
    fi
fi
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/env.txt"

# 5. The report.
python3 - "$WORK" "$RESULTS" "$CONCURRENCY" "$DURATION" <<'PY'
import json, os, sys

work, results, concurrency, duration = sys.argv[1:5]

def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None

env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "env.txt")) if "=" in l)
peer, inproc = load("peer.json"), load("inprocess.json")
low, closed, opn = load("low.json"), load("closed.json"), load("open.json")
rules, torch_ft = load("rules.json"), load("torch.json")
def read_float(name):
    try:
        return float(open(os.path.join(work, name)).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
train_eps = read_float("train_eps.txt")
cold = open(os.path.join(work, "cold_start_ms.txt")).read().strip() if os.path.exists(os.path.join(work, "cold_start_ms.txt")) else None
rss = {}
if os.path.exists(os.path.join(work, "rss.txt")):
    for l in open(os.path.join(work, "rss.txt")):
        k, v = l.split(":", 1)
        rss[k] = int(v.split()[0]) / 1024  # kB -> MiB

def f(x, d=1):
    return "n/a" if x is None else f"{x:.{d}f}"

def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}x"

def met(ok):
    return "n/a" if ok is None else ("yes" if ok else "**no**")

rows = []
def row(what, ours, theirs, r, target, ok):
    rows.append(f"| {what} | {ours} | {theirs} | {r} | {target} | {met(ok) if target else ''} |")

p50_peer = peer and peer["batch1_p50_ms"]
thr_peer = peer and peer["batch_sent_per_s"]
if inproc:
    row("in-process encoder, batch 1, p50 ms", f(inproc["batch1_p50_ms"], 2), f(p50_peer, 2),
        ratio(inproc["batch1_p50_ms"], p50_peer), "lower is better", None)
    row("in-process encoder, batch 1, p99 ms", f(inproc["batch1_p99_ms"], 2), f(peer and peer["batch1_p99_ms"], 2),
        ratio(inproc["batch1_p99_ms"], peer and peer["batch1_p99_ms"]), "lower is better", None)
    row(f"in-process encoder, batch {inproc['batch_size']}, texts/s", f(inproc["batch_sent_per_s"]), f(thr_peer),
        ratio(inproc["batch_sent_per_s"], thr_peer), "higher is better", None)
if closed:
    rps = closed["requests_per_s"]
    row(f"gRPC Classify, closed loop {concurrency} clients, requests/s", f(rps), f(thr_peer), ratio(rps, thr_peer),
        ">= peer batch_sent_per_s", None if thr_peer is None else rps >= thr_peer)
    row("... p50 / p99 ms at max throughput", f"{f(closed['p50_ms'], 2)} / {f(closed['p99_ms'], 2)}", "", "", "", None)
if low:
    p50 = low["p50_ms"]
    row("gRPC Classify, 1 client, p50 ms", f(p50, 2), f(p50_peer, 2), ratio(p50, p50_peer),
        "<= peer batch1_p50 + 1 ms", None if None in (p50, p50_peer) else p50 <= p50_peer + 1.0)
if opn:
    p99 = opn["p99_ms"]
    row(f"gRPC Classify, open loop {opn['target_rate']}/s (half max), p99 ms", f(p99, 2), "", "", "< 25 ms",
        None if p99 is None else p99 < 25.0)
if cold is not None:
    row("cold start to SERVING, ms", cold, "", "", "< 2000 ms", int(cold) < 2000)
if rules:
    p99 = rules["p99_ms"]
    row("gRPC Classify without a model (keyword-only decisions), 1 client, p99 ms", f(p99, 2), "", "", "< 1 ms",
        None if p99 is None else p99 < 1.0)
if train_eps is not None or torch_ft:
    teps = torch_ft.get("examples_per_s") if torch_ft else None
    row("fine-tuning (full, 1 epoch), examples/s", f(train_eps), (f(teps) + " (PyTorch)") if teps else "not measured",
        ratio(train_eps, teps), ">= 0.5x PyTorch", None if None in (train_eps, teps) else train_eps >= 0.5 * teps)
if rss:
    row("peak RSS (VmHWM) after all load, MiB", f(rss.get("VmHWM")), "", "", "< 400 MB", rss.get("VmHWM", 1e9) < 400 * 1e6 / 2**20)

out = []
out.append(f"\n## {env['date_utc']}: comparison with the peer (`benches/compare_with_peer.sh`)\n")
out.append(f"Machine: {env['host_cpus']} CPUs ({env['cpu_model']}), load average {env['load_before']} before, "
           f"{env.get('load_after', '?')} after (the machine is shared; figures move with the load). "
           f"intentd {env['git_rev']}, {env['rustc']}, cargo profile `{env['profile']}`; peer onnxruntime {env.get('onnxruntime', '?')}"
           f"{', PyTorch ' + env['torch'] if 'torch' in env else ''}. Threads: {env.get('threads', '?')}. "
           f"Texts: `{env['texts']}`.\n")
out.append("| figure | intentd | peer (ONNX Runtime) | intentd / peer | target | met |")
out.append("| --- | --- | --- | --- | --- | --- |")
out.extend(rows)
if not (closed or low or opn):
    out.append("\nServer figures not measured in this run (`intentd serve` not available or `--no-server`).")
out.append("\nCommands, in order:\n")
out.append("```")
out.extend(l.rstrip("\n") for l in open(os.path.join(work, "commands.txt")))
out.append("```")
out.append("\nRaw outputs:\n")
out.append("```")
for name in ["peer", "inprocess", "cold", "low", "closed", "open", "rules", "torch"]:
    j = load(name + ".json")
    if j is not None:
        out.append(f"{name}: {json.dumps(j, ensure_ascii=False)}")
if train_eps is not None:
    out.append(f"intentd_train_examples_per_s (median): {train_eps}")
    all_eps = open(os.path.join(work, "train_eps_all.txt")).read().split()
    out.append(f"intentd_train_examples_per_s (each run): {', '.join(all_eps)}")
if "torch_missing" in env:
    out.append("torch: " + env["torch_missing"])
if rss:
    out.append("rss_mib: " + json.dumps({k: round(v, 1) for k, v in rss.items()}))
out.append("```")

if not os.path.exists(results):
    with open(results, "w") as fh:
        fh.write("# Benchmark results\n\nEvery figure with its date and command; newest sections at the end.\n")
with open(results, "a") as fh:
    fh.write("\n".join(out) + "\n")
print("\n".join(out))
print(f"\nappended to {results}", file=sys.stderr)
PY
