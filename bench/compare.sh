#!/bin/sh
# Training throughput of the dirmoe cpu backend against the same model in
# eager PyTorch (bench/torch_moe.py), on this machine, in one run.
#
# usage: bench/compare.sh [DIRMOE]
#   DIRMOE   the dirmoe program (default: dirmoe on PATH). For a build tree,
#            pass BUILD/tools/dirmoe and set DIRMOE_PLUGIN_PATH=BUILD/plugins.
# environment:
#   THREADS  OpenMP threads of both (default 2)
#   ROUNDS   alternating rounds per implementation and router; the median
#            counts (default 3)
#   WARMUP, STEPS   untimed and timed training steps per run (default 3, 10)
#   PYTHON   the Python with torch installed (default python3); the script
#            uses whatever torch that Python imports (it prints the version)
#   EXTRA    more options for both, e.g. "--batch 8" (names as in dirmoe train)
#
# Both run the default model (4 layers, d_model 256, 4 heads, d_ff 512,
# 8 experts, k = 2, seq_len 256, batch 16) on random bytes; DirMoE starts at
# select_init = p0, so both routers run about 2 experts per token. Prints the
# median tokens/s of each, the cpu / PyTorch ratio per router, and the
# DirMoE / top-k step-time ratio of the cpu backend.
set -eu

DIRMOE=${1:-dirmoe}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-3}
STEPS=${STEPS:-10}
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-}
HERE=$(cd "$(dirname "$0")" && pwd)

export OMP_NUM_THREADS="$THREADS"
# OMP_WAIT_POLICY is left as the caller set it, so each side runs with its own
# default: dirmoe sets passive itself when it is unset, PyTorch keeps libgomp's.

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "compare.sh: $PYTHON cannot import torch: install it (pip install torch) or set PYTHON" >&2
    exit 1
fi
if ! "$DIRMOE" --version >/dev/null 2>&1; then
    echo "compare.sh: cannot run '$DIRMOE': pass the dirmoe program as the first argument" >&2
    exit 1
fi

# Bernoulli prior p0 solving E p + (1 - p)^E = k for E = 8, k = 2.
P0=$("$PYTHON" -c '
lo, hi = 0.0, 1.0
for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if 8 * mid + (1 - mid) ** 8 < 2 else (lo, mid)
print(f"{(lo + hi) / 2:.6f}")')

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Prints field $1 of the JSON object on standard input.
field() {
    "$PYTHON" -c 'import json, sys; print(json.loads(sys.stdin.readline())["'"$1"'"])'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc --all) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "threads $THREADS, $ROUNDS rounds of $WARMUP warm-up + $STEPS timed steps, select_init(dirmoe) = p0 = $P0"
"$PYTHON" -c 'import torch; print("pytorch", torch.__version__, "from", torch.__file__)'

for router in topk dirmoe; do
    opts="--router $router --warmup-steps $WARMUP --timed-steps $STEPS $EXTRA"
    [ "$router" = dirmoe ] && opts="$opts --select-init $P0"
    for round in $(seq "$ROUNDS"); do
        # Alternate the order, so a change in machine load does not favour one side.
        for impl in cpu torch; do
            [ $((round % 2)) -eq 0 ] && impl=$([ "$impl" = cpu ] && echo torch || echo cpu)
            if [ "$impl" = cpu ]; then
                # shellcheck disable=SC2086
                "$DIRMOE" bench --backend cpu --json --gemm-reps 1 --gemm-size 512 $opts > "$TMP/out.json"
            else
                # shellcheck disable=SC2086
                "$PYTHON" "$HERE/torch_moe.py" --json --threads "$THREADS" $opts > "$TMP/out.json" 2>/dev/null
            fi
            field tokens_per_s < "$TMP/out.json" >> "$TMP/$impl.$router"
        done
    done
done

# Ratios with awk, so the script needs no bc. The targets: cpu at least 2x PyTorch,
# DirMoE's step at most 1.15x top-k's.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
verdict() { awk -v x="$1" -v goal="$2" -v dir="$3" 'BEGIN {
    ok = (dir == "min") ? x >= goal : x <= goal
    if (ok) print "met"; else printf "missed by %.0f%%\n", 100 * (dir == "min" ? (goal - x) / goal : (x - goal) / goal) }'; }

printf '\n%-8s %14s %14s %8s  %s\n' router "cpu tok/s" "torch tok/s" ratio "target >= 2x"
for router in topk dirmoe; do
    c=$(median < "$TMP/cpu.$router")
    t=$(median < "$TMP/torch.$router")
    r=$(ratio "$c" "$t")
    printf '%-8s %14.0f %14.0f %7.2fx  %s\n' "$router" "$c" "$t" "$r" "$(verdict "$r" 2 min)"
done
c_topk=$(median < "$TMP/cpu.topk")
c_dir=$(median < "$TMP/cpu.dirmoe")
r=$(ratio "$c_topk" "$c_dir")
printf '\ncpu backend: DirMoE step time / top-k step time = %s (target <= 1.15: %s)\n' "$r" "$(verdict "$r" 1.15 max)"
