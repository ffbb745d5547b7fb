#!/usr/bin/env bash
# Re-runs the whole speed comparison with the peer (the same m3e-small encoder in ONNX Runtime,
# shared/peers/peer_bench.py) in one sitting, and appends a dated section with every figure, the
# exact commands and the ratios against the peer to benches/RESULTS.md.
#
#   bash benches/compare_with_peer.sh [--quick] [--no-server] [--no-train] [--profile release|dev]
#                                     [--precisions "fp32 int8"]
#
# Steps: peer deps (pip, if missing) -> peer runs (the fp32 ONNX model, then the int8 one,
# shared/peers/m3e-small-meanpool-int8.onnx) -> cargo build -> in-process encoder figures in
# the peer's shape (benches/inprocess.rs), once per precision (INTENTD_DENSE_KERNEL) -> a
# trained model (trained once if missing) -> for each precision: `intentd serve` with a
# throw-away config (serving.precision) on a free loopback port -> cold start to SERVING ->
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
# --precisions  serving precisions to measure, each against the ONNX model of the same kind
#               (default "fp32 int8"; the targets are judged on int8 against ONNX Runtime int8
#               when int8 is measured, else on fp32).
# Environment:  SHARED_DIR (default: the shared/ folder beside or above the repository),
#               TEXTS, MODEL_DIR (default models/intentd-m3e-small: m3e-small alone, the encoder
#               the peer runs; the default model is an ensemble that also runs me5-small),
#               DURATION, CONCURRENCY, RESULTS.
# All traffic goes to 127.0.0.1; every phase is bounded in time and the server is stopped on exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

QUICK=0
PRECISIONS=${PRECISIONS:-fp32 int8}
SERVER=1
TRAIN=1
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-server) SERVER=0 ;;
        --no-train) TRAIN=0 ;;
        --profile) PROFILE=${2:?--profile needs a value}; shift ;;
        --precisions) PRECISIONS=${2:?--precisions needs a value}; shift ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
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
for p in $PRECISIONS; do
    case "$p" in fp32|int8) ;; *) echo "error: --precisions: unknown precision '$p' (fp32, int8)" >&2; exit 2 ;; esac
done
peer_onnx() { # $1 = precision
    if [ "$1" = int8 ]; then echo "$SHARED_DIR/peers/m3e-small-meanpool-int8.onnx"; else echo "$SHARED_DIR/peers/m3e-small-meanpool.onnx"; fi
}
TEXTS=${TEXTS:-$SHARED_DIR/datasets/smp2017/test.tsv}
[ -s "$TEXTS" ] || { echo "error: texts file $TEXTS missing or empty" >&2; exit 1; }
MODEL_DIR=${MODEL_DIR:-models/intentd-m3e-small}
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
    echo "precisions=$PRECISIONS"
    echo "cpu_int8=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512_vnni|avx_vnni|amx_int8)$' | tr '\n' ' ')"
} > "$WORK/env.txt"

# 1. The peer, first, so it runs on the same machine state as the rest.
if ! python3 -c 'import onnxruntime, tokenizers, numpy' 2>/dev/null; then
    run python3 -m pip install onnxruntime tokenizers numpy
fi
python3 -c 'import onnxruntime; print("onnxruntime=" + onnxruntime.__version__)' >> "$WORK/env.txt"
for P in $PRECISIONS; do
    run python3 "$(rel "$SHARED_DIR/peers/peer_bench.py")" --texts "$(rel "$TEXTS")" --onnx "$(rel "$(peer_onnx "$P")")" \
        | tee "$WORK/peer-$P.out"
    last_json "$WORK/peer-$P.out" > "$WORK/peer-$P.json"
done

# 2. Build, and the same measurement as the peer's, in process.
if [ "$PROFILE" = release ]; then run cargo build --release; else run cargo build --profile "$PROFILE"; fi
if [ "$PROFILE" = release ]; then BENCH_PROFILE=(); else BENCH_PROFILE=(--profile "$PROFILE"); fi
for P in $PRECISIONS; do
    echo "+ INTENTD_DENSE_KERNEL=$P cargo bench ${BENCH_PROFILE[*]} --bench inprocess -- --texts $(rel "$TEXTS")" >&2
    echo "INTENTD_DENSE_KERNEL=$P cargo bench ${BENCH_PROFILE[*]} --bench inprocess -- --texts $(rel "$TEXTS")" \
        | sed 's/  */ /g' >> "$WORK/commands.txt"
    INTENTD_DENSE_KERNEL=$P cargo bench "${BENCH_PROFILE[@]}" --bench inprocess -- --texts "$(rel "$TEXTS")" \
        | tee "$WORK/inprocess-$P.out"
    last_json "$WORK/inprocess-$P.out" > "$WORK/inprocess-$P.json"
done

HELP=$("$BIN" --help 2>/dev/null || true)
if [ "$SERVER" = 1 ] && ! { grep -qE '^ +serve ' <<< "$HELP" && grep -qE '^ +bench ' <<< "$HELP"; }; then
    echo "note: $BIN has no 'serve' and 'bench' subcommands yet; measuring peer and in-process figures only" >&2
    SERVER=0
fi

# 3. The server under load.
if [ "$SERVER" = 1 ]; then
    if [ ! -f "$MODEL_DIR/model.json" ]; then
        echo "no trained model at $MODEL_DIR: training it once (not part of any figure)" >&2
        run "$BIN" train --base m3e-small --out "$MODEL_DIR" --quiet
    fi
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export INTENTD_TOKEN
    INTENTD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    write_config() { # $1 = model folder, $2 = serving precision, $3 = model.required (true), $4 = store.durability (full)
    cat <<EOF
# Throw-away config written by benches/compare_with_peer.sh.
listen: 127.0.0.1:$PORT
model_dir: $1
auto_train: false
serving:
  precision: ${2:-auto}
model:
  required: ${3:-true}
operator_dir: $REPO/config/operator
training_data: $REPO/training-data/nlu
auth:
  bots:
    - id: demo
      token: $INTENTD_TOKEN
store:
  enabled: true
  durability: ${4:-full}
  path: $WORK/intentd.db
  key_file: $WORK/intentd.key
  create_key_file: true
metrics:
  enabled: true
  listen: 127.0.0.1:0
http:
  enabled: false
EOF
    }
    B=$(rel "$BIN")
    T=$(rel "$TEXTS")
    bench() { run "$B" bench --addr "127.0.0.1:$PORT" --texts "$T" --json "$@"; }
    for P in $PRECISIONS; do
    # The server must not inherit an override: serving.precision decides.
    unset INTENTD_DENSE_KERNEL
    write_config "$(realpath -m "$MODEL_DIR")" "$P" > "$WORK/intentd-$P.yml"
    echo "$BIN serve --config <generated config: listen 127.0.0.1:$PORT, model $MODEL_DIR, serving.precision $P, store in a temp dir>" \
        | sed "s|$REPO/||" >> "$WORK/commands.txt"
    rm -f "$WORK/intentd.db" "$WORK/intentd.db-wal" "$WORK/intentd.db-shm"
    LAUNCH_MS=$(date +%s%3N)
    "$BIN" serve --config "$WORK/intentd-$P.yml" > "$WORK/serve-$P.log" 2>&1 &
    SERVER_PID=$!

    # Cold start: from launch to the health check reporting SERVING (model loaded).
    if ! bench --concurrency 1 --duration 0.5 --wait-serving 60 > "$WORK/cold-$P.json"; then
        echo "error: the server did not become SERVING; its log:" >&2
        tail -n 30 "$WORK/serve-$P.log" >&2
        exit 1
    fi
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["serving_at_unix_ms"] - int(sys.argv[2]))' \
        "$WORK/cold-$P.json" "$LAUNCH_MS" > "$WORK/cold_start_ms-$P.txt"
    grep -m1 'encoder dense layers' "$WORK/serve-$P.log" > "$WORK/kernel-$P.txt" || true

    bench --concurrency 1 --duration "$DURATION" --warmup "$WARMUP" > "$WORK/low-$P.json"
    bench --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" > "$WORK/closed-$P.json"
    HALF=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["requests_per_s"] / 2, 1))' "$WORK/closed-$P.json")
    bench --rate "$HALF" --duration "$DURATION" > "$WORK/open-$P.json"

    grep -E '^(VmHWM|VmRSS):' "/proc/$SERVER_PID/status" > "$WORK/rss-$P.txt"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || echo "note: server exited with status $? on SIGTERM" >&2
    SERVER_PID=
    done

    # Keyword-only decisions: the same server with no model folder answers from the rules
    # (health stays NOT_SERVING, so no --wait-serving; the port opens at once, then a warm-up).
    # Twice: with the default `store.durability: full` every answer waits for its commit's
    # fsync (the promise of `recorded: true`); `normal` shows the decision path without it.
    for D in full normal; do
    write_config "$WORK/no-model" fp32 false "$D" > "$WORK/intentd-rules-$D.yml"
    echo "$BIN serve --config <the same config, model_dir pointing at a missing folder, model.required false, store.durability $D>" \
        | sed "s|$REPO/||" >> "$WORK/commands.txt"
    rm -f "$WORK/intentd.db" "$WORK/intentd.db-wal" "$WORK/intentd.db-shm"
    "$BIN" serve --config "$WORK/intentd-rules-$D.yml" > "$WORK/serve-rules-$D.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$WORK/serve-rules-$D.log" 2>/dev/null && break
        sleep 0.1
    done
    bench --concurrency 1 --duration "$DURATION" --warmup "$WARMUP" > "$WORK/rules-$D.json"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || echo "note: server exited with status $? on SIGTERM" >&2
    SERVER_PID=
    done
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
import json, os, re, sys

work, results, concurrency, duration = sys.argv[1:5]

def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None

env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "env.txt")) if "=" in l)
precisions = env.get("precisions", "fp32").split()
# The targets are judged on int8 against ONNX Runtime int8 when int8 was measured.
main = "int8" if "int8" in precisions else precisions[0]
others = [p for p in precisions if p != main]
rules = {d: load(f"rules-{d}.json") for d in ["full", "normal"]}
torch_ft = load("torch.json")
def read_text(name):
    p = os.path.join(work, name)
    return open(p).read().strip() if os.path.exists(p) else None
def read_float(name):
    try:
        return float(read_text(name).split()[0])
    except (AttributeError, ValueError, IndexError):
        return None
train_eps = read_float("train_eps.txt")
def rss_of(p):
    out = {}
    t = read_text(f"rss-{p}.txt")
    for l in (t or "").splitlines():
        k, v = l.split(":", 1)
        out[k] = int(v.split()[0]) / 1024  # kB -> MiB
    return out
fig = {p: dict(peer=load(f"peer-{p}.json"), inproc=load(f"inprocess-{p}.json"), low=load(f"low-{p}.json"),
               closed=load(f"closed-{p}.json"), open=load(f"open-{p}.json"), cold=read_float(f"cold_start_ms-{p}.txt"),
               rss=rss_of(p), kernel=read_text(f"kernel-{p}.txt")) for p in precisions}

def f(x, d=1):
    return "n/a" if x is None else f"{x:.{d}f}"

def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}x"

def met(ok):
    return "n/a" if ok is None else ("yes" if ok else "**no**")

def g(p, part, key):
    d = fig[p][part]
    return None if d is None else d.get(key)

rows = []
def row(what, get, peer_get=None, target="", ok=None, d=1):
    """One figure: intentd and the peer at the main precision, their ratio, then the same for
    every other precision, so the gain is visible next to the target."""
    cells = []
    for p in [main] + others:
        ours = get(p)
        theirs = peer_get(p) if peer_get else None
        cells += [f(ours, d), f(theirs, d) if peer_get else "", ratio(ours, theirs) if peer_get else ""]
    rows.append(f"| {what} | " + " | ".join(cells) + f" | {target} | {met(ok(main)) if ok else ''} |")

pb = lambda key: (lambda p: g(p, "peer", key))
row("in-process encoder, batch 1, p50 ms", lambda p: g(p, "inproc", "batch1_p50_ms"), pb("batch1_p50_ms"), "lower is better", d=2)
row("in-process encoder, batch 1, p99 ms", lambda p: g(p, "inproc", "batch1_p99_ms"), pb("batch1_p99_ms"), "lower is better", d=2)
row("in-process encoder, batch 32, texts/s", lambda p: g(p, "inproc", "batch_sent_per_s"), pb("batch_sent_per_s"), "higher is better")
row(f"gRPC Classify, closed loop {concurrency} clients, requests/s", lambda p: g(p, "closed", "requests_per_s"),
    pb("batch_sent_per_s"), ">= peer batch_sent_per_s",
    lambda p: None if None in (g(p, "closed", "requests_per_s"), g(p, "peer", "batch_sent_per_s"))
    else g(p, "closed", "requests_per_s") >= g(p, "peer", "batch_sent_per_s"))
row("... p50 ms at max throughput", lambda p: g(p, "closed", "p50_ms"), d=2)
row("... p99 ms at max throughput", lambda p: g(p, "closed", "p99_ms"), d=2)
row("gRPC Classify, 1 client, p50 ms", lambda p: g(p, "low", "p50_ms"), pb("batch1_p50_ms"), "<= peer batch1_p50 + 1 ms",
    lambda p: None if None in (g(p, "low", "p50_ms"), g(p, "peer", "batch1_p50_ms"))
    else g(p, "low", "p50_ms") <= g(p, "peer", "batch1_p50_ms") + 1.0, d=2)
row("gRPC Classify, open loop at half max, p99 ms", lambda p: g(p, "open", "p99_ms"), None, "< 25 ms",
    lambda p: None if g(p, "open", "p99_ms") is None else g(p, "open", "p99_ms") < 25.0, d=2)
row("cold start to SERVING, ms", lambda p: fig[p]["cold"], None, "< 2000 ms",
    lambda p: None if fig[p]["cold"] is None else fig[p]["cold"] < 2000, d=0)
row("peak RSS (VmHWM) after all load, MiB", lambda p: fig[p]["rss"].get("VmHWM"), None, "< 400 MB",
    lambda p: None if not fig[p]["rss"] else fig[p]["rss"]["VmHWM"] < 400 * 1e6 / 2**20)
for d, why in [("full", "each answer waits for its durable commit (fsync)"),
               ("normal", "commit survives a process crash, not power loss")]:
    if rules[d]:
        p50, p99, sp99 = rules[d]["p50_ms"], rules[d]["p99_ms"], rules[d].get("server_p99_ms")
        rows.append(f"| gRPC Classify without a model (keyword-only decisions), 1 client, p99 ms, `store.durability: {d}` ({why}; p50 {f(p50, 2)}, server p99 {f(sp99, 2)}) | {f(p99, 2)} |"
                    + " |" * (3 * len(precisions) - 1) + f" < 1 ms | {met(None if p99 is None else p99 < 1.0)} |")
if train_eps is not None or torch_ft:
    teps = torch_ft.get("examples_per_s") if torch_ft else None
    rows.append(f"| fine-tuning (full, 1 epoch), examples/s | {f(train_eps)} | {(f(teps) + ' (PyTorch)') if teps else 'not measured'} | {ratio(train_eps, teps)} |"
                + " |" * (3 * len(precisions) - 3) + f" >= 0.5x PyTorch | {met(None if None in (train_eps, teps) else train_eps >= 0.5 * teps)} |")

out = []
out.append(f"\n## {env['date_utc']}: comparison with the peer (`benches/compare_with_peer.sh`)\n")
out.append(f"Machine: {env['host_cpus']} CPUs ({env['cpu_model']}; int8 instructions: {env.get('cpu_int8', '?').strip() or 'none'}), "
           f"load average {env['load_before']} before, "
           f"{env.get('load_after', '?')} after (the machine is shared; figures move with the load). "
           f"intentd {env['git_rev']}, {env['rustc']}, cargo profile `{env['profile']}`; peer onnxruntime {env.get('onnxruntime', '?')}"
           f"{', PyTorch ' + env['torch'] if 'torch' in env else ''}. Threads: {env.get('threads', '?')}. "
           f"Texts: `{env['texts']}`. Peer models: `m3e-small-meanpool.onnx` (fp32) and `m3e-small-meanpool-int8.onnx` "
           f"(int8, dynamic quantization). Targets are judged at **{main}** against the peer's {main} model.\n")
for p in precisions:
    if fig[p]["kernel"]:
        k = re.sub(r"\x1b\[[0-9;]*m", "", fig[p]["kernel"])
        out.append(f"- server at `serving.precision: {p}` logged: `{k.strip()[-160:]}`")
out.append("")
head = ["figure"]
for p in [main] + others:
    head += [f"intentd {p}", f"peer {p}", f"intentd / peer ({p})"]
head += ["target", "met"]
out.append("| " + " | ".join(head) + " |")
out.append("|" + " --- |" * len(head))
out.extend(rows)
if not any(fig[p]["closed"] or fig[p]["low"] for p in precisions):
    out.append("\nServer figures not measured in this run (`intentd serve` not available or `--no-server`).")
out.append("\nCommands, in order:\n")
out.append("```")
out.extend(l.rstrip("\n") for l in open(os.path.join(work, "commands.txt")))
out.append("```")
out.append("\nRaw outputs:\n")
out.append("```")
for p in precisions:
    for name in ["peer", "inprocess", "cold", "low", "closed", "open"]:
        j = load(f"{name}-{p}.json")
        if j is not None:
            out.append(f"{name} ({p}): {json.dumps(j, ensure_ascii=False)}")
    if fig[p]["rss"]:
        out.append(f"rss_mib ({p}): " + json.dumps({k: round(v, 1) for k, v in fig[p]["rss"].items()}))
for name in ["rules-full", "rules-normal", "torch"]:
    j = load(name + ".json")
    if j is not None:
        out.append(f"{name}: {json.dumps(j, ensure_ascii=False)}")
if train_eps is not None:
    out.append(f"intentd_train_examples_per_s (median): {train_eps}")
    all_eps = open(os.path.join(work, "train_eps_all.txt")).read().split()
    out.append(f"intentd_train_examples_per_s (each run): {', '.join(all_eps)}")
if "torch_missing" in env:
    out.append("torch: " + env["torch_missing"])
out.append("```")

if not os.path.exists(results):
    with open(results, "w") as fh:
        fh.write("# Benchmark results\n\nEvery figure with its date and command; newest sections at the end.\n")
with open(results, "a") as fh:
    fh.write("\n".join(out) + "\n")
print("\n".join(out))
print(f"\nappended to {results}", file=sys.stderr)
PY
