#!/usr/bin/env bash
# Noisy-label benchmark (issue 17): flip a share of SMP2017's training labels to random other
# intents (seeded), then
#   1. `intentd data check` on the noisy set: precision / recall of its `mislabelled` rows
#      against the flips;
#   2. train with defaults on the clean set and on the noisy set, and evaluate both on the clean
#      test set;
#   3. train on the noisy set with each extra train option given (default: --drop-suspect) and
#      evaluate that too.
# Prints a Markdown block for benches/RESULTS.md.
#
#   bash benches/noise.sh [--bin PATH] [--rate 0.2] [--seed 7] [--work DIR] [--skip-clean]
#                         [--variant "ARGS"]... | [--baseline]   (--baseline: no variant runs)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/intentd
rate=0.2
seed=7
work=""
skip_clean=0
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --skip-clean) skip_clean=1; shift ;;
    --variant) variants+=("$2"); shift 2 ;;
    --baseline) variants=("none"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#variants[@]} -gt 0 ] || variants=("--drop-suspect")
data=../shared/datasets/smp2017
[ -f "$data/train.tsv" ] || { echo "$data/train.tsv not found (the shared datasets live beside the repository)" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin not found: cargo build --release first, or pass --bin" >&2; exit 1; }
[ -n "$work" ] || work=$(mktemp -d /tmp/intentd-noise.XXXXXX)
mkdir -p "$work"

# The noisy copy and the list of flipped lines (line numbers of the TSV, header = line 1).
python3 - "$data/train.tsv" "$work/noisy.tsv" "$work/flipped.tsv" "$rate" "$seed" <<'EOF'
import random, sys
src, out, flips, rate, seed = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
lines = open(src, encoding="utf-8").read().splitlines()
header, rows = lines[0], [l.split("\t") for l in lines[1:]]
labels = sorted({r[1] for r in rows})
rng = random.Random(seed)
chosen = sorted(rng.sample(range(len(rows)), round(rate * len(rows))))
with open(flips, "w", encoding="utf-8") as f:
    f.write("line\ttrue\tnoisy\n")
    for i in chosen:
        new = rng.choice([l for l in labels if l != rows[i][1]])
        f.write(f"{i + 2}\t{rows[i][1]}\t{new}\n")
        rows[i][1] = new
with open(out, "w", encoding="utf-8") as f:
    f.write(header + "\n")
    for r in rows:
        f.write("\t".join(r) + "\n")
print(f"flipped {len(chosen)} of {len(rows)} labels (rate {rate}, seed {seed})", file=sys.stderr)
EOF

accuracy() { # model -> "accuracy macro_f1"
  "$bin" eval --model "$1" --data "$data/test.tsv" | tail -1 | sed -E 's/accuracy=([0-9.]+) macro_f1=([0-9.]+).*/\1 \2/'
}
train() { # out data [args...] -> seconds
  local out=$1 d=$2; shift 2
  local t0=$(date +%s.%N)
  "$bin" train --quiet --data "$d" --out "$out" "$@" >/dev/null 2>"$out.log" || { cat "$out.log" >&2; exit 1; }
  python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)"
}

echo "== data check on the noisy set" >&2
"$bin" data check --data "$work/noisy.tsv" --report "$work/check" >/dev/null 2>"$work/check.log"
check=$(python3 - "$work/check/suspects.csv" "$work/flipped.tsv" <<'EOF'
import csv, sys
flipped = {int(r["line"]) for r in csv.DictReader(open(sys.argv[2], encoding="utf-8"), delimiter="\t")}
flagged = {int(r["line"]) for r in csv.DictReader(open(sys.argv[1], encoding="utf-8")) if r["kind"] == "mislabelled"}
hit = len(flagged & flipped)
p = hit / len(flagged) if flagged else 0.0
r = hit / len(flipped) if flipped else 0.0
print(f"{len(flagged)} {hit} {len(flipped)} {p:.3f} {r:.3f}")
EOF
)
read -r n_flagged n_hit n_flipped precision recall <<<"$check"

rows=()
if [ "$skip_clean" = 0 ]; then
  echo "== train on the clean set" >&2
  secs=$(train "$work/clean" "$data/train.tsv")
  read -r acc f1 <<<"$(accuracy "$work/clean")"
  rows+=("| clean train set, defaults | $acc | $f1 | $secs s |")
  clean_acc=$acc
fi
echo "== train on the noisy set" >&2
secs=$(train "$work/noisy" "$work/noisy.tsv")
read -r acc f1 <<<"$(accuracy "$work/noisy")"
rows+=("| noisy train set, defaults | $acc | $f1 | $secs s |")
for v in "${variants[@]}"; do
  [ "$v" = none ] && continue
  echo "== train on the noisy set with $v" >&2
  name=$(echo "$v" | tr -c 'a-z0-9' '_')
  # shellcheck disable=SC2086
  secs=$(train "$work/noisy$name" "$work/noisy.tsv" $v)
  read -r acc f1 <<<"$(accuracy "$work/noisy$name")"
  rows+=("| noisy train set, \`$v\` | $acc | $f1 | $secs s |")
done

cat <<EOF
Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end. intentd $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty), $bin. Noise: $n_flipped of SMP2017's train labels flipped to a random other intent (rate $rate, seed $seed); test set clean.

\`intentd data check\` on the noisy set: $n_flagged flagged as mislabelled, $n_hit of them flipped: **precision $precision, recall $recall** (target: precision >= 0.8 at recall >= 0.6).

| training | SMP2017 test accuracy | macro-F1 | training time |
| --- | --- | --- | --- |
$(printf '%s\n' "${rows[@]}")

\`\`\`sh
bash benches/noise.sh --bin $bin --rate $rate --seed $seed$(for v in "${variants[@]}"; do if [ "$v" = none ]; then printf ' --baseline'; else printf ' --variant "%s"' "$v"; fi; done)$( [ "$skip_clean" = 1 ] && echo ' --skip-clean')
\`\`\`
EOF
echo "work files in $work" >&2
