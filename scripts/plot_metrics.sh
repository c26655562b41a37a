#!/bin/sh
# Plots a training run's OUT/metrics.jsonl with gnuplot (Debian: gnuplot-nox).
#
# Usage: scripts/plot_metrics.sh RUN_DIR [OUTPUT_DIR]
# Writes into OUTPUT_DIR (default RUN_DIR):
#   loss.png     training and validation loss (nats per byte) over steps
#   bpb.png      training and validation bits per byte over steps
#   active.png   mean active experts per token of every MoE layer over steps
#   load_L.png   per-expert load share of MoE layer L over steps (one per layer)
# python3 turns the JSON rows into whitespace-separated columns for gnuplot.
set -eu

if [ $# -lt 1 ] || [ "$1" = "--help" ]; then
    echo "usage: scripts/plot_metrics.sh RUN_DIR [OUTPUT_DIR]" >&2
    exit 2
fi
run=$1
out=${2:-$run}
metrics=$run/metrics.jsonl

if [ ! -s "$metrics" ]; then
    echo "plot_metrics.sh: '$metrics' is missing or empty: give the --out directory of a dirmoe train run" >&2
    exit 1
fi
command -v gnuplot >/dev/null 2>&1 || {
    echo "plot_metrics.sh: gnuplot is not installed: run 'apt-get install gnuplot-nox'" >&2
    exit 1
}
command -v python3 >/dev/null 2>&1 || {
    echo "plot_metrics.sh: python3 is not installed" >&2
    exit 1
}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Columns: train.dat = step loss bpb; val.dat = step loss bpb;
# active.dat = step then the active count of each MoE layer (training rows);
# load_L.dat = step then the load share of each expert of layer L
# (evaluation rows when there are any, else training rows).
python3 - "$metrics" "$work" <<'EOF'
import json, sys

path, work = sys.argv[1], sys.argv[2]
train, val, active = [], [], []
load = {"eval": {}, "train": {}}
for n, line in enumerate(open(path), 1):
    try:
        row = json.loads(line)
    except ValueError:
        print(f"plot_metrics.sh: {path}:{n}: skipped a line that is not JSON", file=sys.stderr)
        continue
    kind, step = row.get("type"), row.get("step")
    if kind not in ("train", "eval"):
        continue
    layers = row.get("layers", [])
    (train if kind == "train" else val).append((step, row.get("ce", row.get("loss")), row.get("bpb")))
    if kind == "train" and layers:
        active.append([step] + [l.get("active") for l in layers])
    for l in layers:
        if "load" in l:
            load[kind].setdefault(l["layer"], []).append([step] + l["load"])

def write(name, rows):
    with open(f"{work}/{name}", "w") as f:
        for r in rows:
            f.write(" ".join("nan" if v is None else repr(v) for v in r) + "\n")

write("train.dat", train)
write("val.dat", val)
write("active.dat", active)
source = load["eval"] if load["eval"] else load["train"]
for layer, rows in source.items():
    write(f"load_{layer}.dat", rows)
with open(f"{work}/layers", "w") as f:
    f.write(" ".join(str(l) for l in sorted(source)))
with open(f"{work}/load_source", "w") as f:
    f.write("validation" if load["eval"] else "training")
EOF

# Draws "plot" lines for the columns that have data: training always, validation when present.
lines() {
    col=$1
    spec="'$work/train.dat' using 1:$col with lines lw 2 title 'train'"
    if [ -s "$work/val.dat" ]; then
        spec="$spec, '$work/val.dat' using 1:$col with linespoints pt 7 lw 2 title 'validation'"
    fi
    echo "$spec"
}

if [ ! -s "$work/train.dat" ]; then
    echo "plot_metrics.sh: '$metrics' has no training rows yet" >&2
    exit 1
fi

gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set grid
set key top right
set xlabel 'step'

set output '$out/loss.png'
set title 'cross-entropy loss'
set ylabel 'nats per byte'
plot $(lines 2)

set output '$out/bpb.png'
set title 'bits per byte'
set ylabel 'bits per byte'
plot $(lines 3)
EOF
made="loss.png bpb.png"

if [ -s "$work/active.dat" ]; then
    n=$(awk 'NR == 1 { print NF - 1 }' "$work/active.dat")
    layers=$(cat "$work/layers")
    gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set grid
set key top right
set xlabel 'step'
set ylabel 'experts per token'
set title 'mean active experts per token (training forward)'
set output '$out/active.png'
names = '$layers'
plot for [i=1:$n] '$work/active.dat' using 1:(column(i+1)) with lines lw 2 title sprintf('layer %s', word(names, i))
EOF
    made="$made active.png"
fi

source=$(cat "$work/load_source")
for layer in $(cat "$work/layers"); do
    data=$work/load_$layer.dat
    [ -s "$data" ] || continue
    experts=$(awk 'NR == 1 { print NF - 1 }' "$data")
    gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set grid
set key outside right
set xlabel 'step'
set ylabel 'share of assignments'
set yrange [0:*]
set title 'expert load share, layer $layer ($source)'
set output '$out/load_$layer.png'
plot for [e=1:$experts] '$data' using 1:(column(e+1)) with linespoints pt 7 ps 0.5 lw 2 title sprintf('expert %d', e-1)
EOF
    made="$made load_$layer.png"
done

echo "wrote $made into $out"
