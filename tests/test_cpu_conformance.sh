#!/bin/sh
# The cpu backend against the reference: every op of `dirmoe conformance` and its
# whole-model check, under 1 and 2 OpenMP threads. Then repeatability: a repeated
# bench run and a stopped-and-resumed training run give the same bits.
set -u
dirmoe="$DIRMOE_TOP_BUILDDIR/tools/dirmoe"
fail() { echo "FAIL: $*"; exit 1; }

for threads in 1 2; do
    out=$(OMP_NUM_THREADS=$threads "$dirmoe" conformance --backend cpu 2>&1) ||
        fail "conformance with OMP_NUM_THREADS=$threads: $(echo "$out" | grep -v ' pass ' | tail -20)"
    echo "$out" | tail -1
    echo "$out" | grep -q "^summary: .* 0 failed" || fail "no clean summary line: $(echo "$out" | tail -3)"
done

# A training run is bit-identical when repeated with the same thread count.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for run in a b; do
    OMP_NUM_THREADS=2 "$dirmoe" bench --backend cpu --layers 2 --d-model 64 --heads 2 --d-ff 128 --seq-len 64 \
        --batch 4 --warmup-steps 0 --timed-steps 3 --gemm-size 64 --gemm-reps 1 --json > "$tmp/$run.json" ||
        fail "bench run $run failed"
    sed 's/.*"last_loss":\([^,]*\).*/\1/' "$tmp/$run.json" > "$tmp/$run.loss"
done
cmp -s "$tmp/a.loss" "$tmp/b.loss" || fail "two identical runs ended at losses $(cat "$tmp/a.loss") and $(cat "$tmp/b.loss")"

# Stopping after step 3 and resuming gives the checkpoint of an uninterrupted run, bit for bit.
opts="--backend cpu --layers 2 --d-model 64 --heads 2 --d-ff 128 --seq-len 64 --batch 4 --steps 6
      --log-every 1 --eval-every 0 --eval-batches 1 --progress never --data $tmp/corpus.txt --val-fraction 0.2"
awk 'BEGIN { for (i = 0; i < 400; i++) print "line " i " of a small corpus for the resume test" }' > "$tmp/corpus.txt"
# shellcheck disable=SC2086
OMP_NUM_THREADS=2 "$dirmoe" train $opts --out "$tmp/whole" > /dev/null || fail "uninterrupted run failed"
# shellcheck disable=SC2086
OMP_NUM_THREADS=2 "$dirmoe" train $opts --out "$tmp/split" --stop-after 3 > /dev/null || fail "run with --stop-after 3 failed"
# shellcheck disable=SC2086
OMP_NUM_THREADS=2 "$dirmoe" train $opts --out "$tmp/split" --resume > /dev/null || fail "resumed run failed"
cmp -s "$tmp/whole/checkpoint.safetensors" "$tmp/split/checkpoint.safetensors" ||
    fail "the resumed run's checkpoint differs from the uninterrupted run's"
exit 0
