#!/bin/sh
# Resuming is exact: 20 steps in one go and 20 steps stopped after 10 and
# resumed give the same per-step losses, validation rows and checkpoint bytes.
# Also: SIGINT saves a checkpoint and exits with status 130.
. "${DIRMOE_TOP_SRCDIR:-.}/tests/cli_common.sh"

# Every step logged, a validation pass every 5 steps, Gamma noise and the adaptive
# dual variable in play, warm-up and cosine decay over the 20 steps.
opts="$tiny --data $corpus --steps 20 --warmup 4 --log-every 1 --eval-every 5 --explore 0.1 --seed 11"

"$dirmoe" train $opts --out "$tmp/whole" >/dev/null || fail "the uninterrupted run failed"
out=$("$dirmoe" train $opts --stop-after 10 --out "$tmp/split") || fail "the run stopped after 10 failed"
echo "$out" | grep -q "stopped after step 10" || fail "no message for --stop-after: $out"
"$dirmoe" train $opts --resume --out "$tmp/split" >/dev/null || fail "the resumed run failed"

# Options left out on --resume come from the checkpoint, so a bare resume of a finished run only reports it.
out=$("$dirmoe" train --resume --out "$tmp/split" --data "$corpus" --backend reference) ||
    fail "a bare --resume of a finished run exited non-zero"
echo "$out" | grep -q "already completed its 20 steps" || fail "bare --resume: $out"

# Compare every train and eval row without the timing fields.
rows() {
    grep -E '"type":"(train|eval)"' "$1" | sed -E 's/"tokens_per_s":[^,]*,//; s/"flops_per_s":[^,]*,//'
}
rows "$tmp/whole/metrics.jsonl" >"$tmp/whole.rows"
rows "$tmp/split/metrics.jsonl" >"$tmp/split.rows"
test "$(grep -c '"type":"train"' "$tmp/whole.rows")" -eq 20 || fail "expected 20 train rows"
grep -q '"type":"resume","step":10' "$tmp/split/metrics.jsonl" || fail "no resume row at step 10"
diff "$tmp/whole.rows" "$tmp/split.rows" >"$tmp/rows.diff" || fail "metrics differ after resuming: $(head -c 2000 "$tmp/rows.diff")"

# A resume without --data, from another directory, continues on the run's own data.
"$dirmoe" train $opts --stop-after 10 --out "$tmp/split2" >/dev/null || fail "the second stopped run failed"
(cd / && "$dirmoe" train --resume --out "$tmp/split2" --backend reference --progress never >/dev/null) ||
    fail "the resume without --data failed"
rows "$tmp/split2/metrics.jsonl" >"$tmp/split2.rows"
diff "$tmp/whole.rows" "$tmp/split2.rows" >"$tmp/rows2.diff" ||
    fail "a resume without --data differs: $(head -c 2000 "$tmp/rows2.diff")"

# The final checkpoints hold the same tensors, bit for bit.
if ! cmp -s "$tmp/whole/checkpoint.safetensors" "$tmp/split/checkpoint.safetensors"; then
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$tmp/whole/checkpoint.safetensors" "$tmp/split/checkpoint.safetensors" <<'EOF' ||
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    return {k: data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items()}, meta
a, ma = tensors(sys.argv[1])
b, mb = tensors(sys.argv[2])
bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
if bad:
    sys.exit("tensors differ: " + ", ".join(bad[:10]))
for key in ("step", "mu", "seed"):
    if ma.get(key) != mb.get(key):
        sys.exit(f"metadata {key} differs: {ma.get(key)} against {mb.get(key)}")
EOF
            fail "the resumed checkpoint differs from the uninterrupted one"
    else
        fail "the checkpoints differ byte for byte"
    fi
fi

# SIGINT: a long run is interrupted once its first rows are out, saves, and exits 130.
"$dirmoe" train $tiny --data "$corpus" --steps 1000000 --log-every 1 --eval-every 0 --val-fraction 0 \
    --out "$tmp/sigint" >"$tmp/sigint.out" 2>"$tmp/sigint.err" &
pid=$!
i=0
while [ $i -lt 300 ] && ! grep -q '"type":"train","step":3,' "$tmp/sigint/metrics.jsonl" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
kill -INT $pid
wait $pid
status=$?
test $status -eq 130 || fail "SIGINT: exit status $status, expected 130; stderr: $(cat "$tmp/sigint.err")"
grep -q "interrupted by SIGINT after step [0-9]*: saved .*--resume" "$tmp/sigint.err" ||
    fail "SIGINT message: $(cat "$tmp/sigint.err")"
test -s "$tmp/sigint/checkpoint.safetensors" || fail "SIGINT left no checkpoint"
step=$(sed -n 's/.*after step \([0-9]*\).*/\1/p' "$tmp/sigint.err")
json=$("$dirmoe" eval --checkpoint "$tmp/sigint/checkpoint.safetensors" --data "$corpus" --batches 1 --json \
    --backend reference) || fail "the checkpoint written on SIGINT does not load"
echo "$json" | grep -q "\"step\":$step," || fail "the SIGINT checkpoint is not at step $step: $json"

echo "ok"
