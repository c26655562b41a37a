#!/bin/sh
# dirmoe train on bad input: every case ends with one clear line on stderr,
# a non-zero exit, and no file that was already written is damaged.
. "${DIRMOE_TOP_SRCDIR:-.}/tests/cli_common.sh"

# Runs train with the tiny model and extra arguments; prints stderr only, and fails the test on exit 0.
train_fails() {
    if err=$("$dirmoe" train $tiny --steps 2 "$@" 2>&1 >/dev/null); then
        fail "train $* exited 0"
    fi
    printf '%s\n' "$err"
}

# --- data -----------------------------------------------------------------------
err=$(train_fails --data "$tmp/no-such-file.txt" --out "$tmp/r1")
one_line_with "$err" "no-such-file.txt"

: >"$tmp/empty.txt"
err=$(train_fails --data "$tmp/empty.txt" --out "$tmp/r2")
one_line_with "$err" "empty.txt"

mkdir "$tmp/a-directory"
err=$(train_fails --data "$tmp/a-directory" --out "$tmp/r3")
one_line_with "$err" "a-directory"

printf 'too short' >"$tmp/short.txt"
err=$(train_fails --data "$tmp/short.txt" --out "$tmp/r4")
one_line_with "$err" "short.txt"

err=$(DIRMOE_DATA_DIR=$tmp/nowhere train_fails --out "$tmp/r5")
one_line_with "$err" "apt-get install bible-kjv && scripts/get_kjv.sh"
echo "$err" | grep -q "$tmp/nowhere/kjv.txt" || fail "the message does not name the default corpus path: $err"

# Bytes that are not UTF-8 train fine, with a note.
cp "$corpus" "$tmp/latin1.txt"
printf 'caf\351 na\357ve \377\376\n' >>"$tmp/latin1.txt"
err=$("$dirmoe" train $tiny --steps 2 --data "$tmp/latin1.txt" --out "$tmp/latin1" 2>&1 >/dev/null) ||
    fail "non-UTF-8 data exited non-zero: $err"
echo "$err" | grep -q "not valid UTF-8.*byte-level" || fail "no note about non-UTF-8 bytes: $err"

# --- option values ------------------------------------------------------------------
err=$(train_fails --data "$corpus" --out "$tmp/o" --experts 0)
one_line_with "$err" "--experts"
err=$(train_fails --data "$corpus" --out "$tmp/o" --k 9)
one_line_with "$err" "--k"
err=$(train_fails --data "$corpus" --out "$tmp/o" --heads 3)
one_line_with "$err" "--heads"
err=$(train_fails --data "$corpus" --out "$tmp/o" --tau 0)
one_line_with "$err" "--tau"
err=$(train_fails --data "$corpus" --out "$tmp/o" --tau 1:abc)
one_line_with "$err" "--tau"
err=$(train_fails --data "$corpus" --out "$tmp/o" --explore 0.6)
one_line_with "$err" "--explore"
err=$(train_fails --data "$corpus" --out "$tmp/o" --router mixtral)
one_line_with "$err" "--router"
err=$(train_fails --data "$corpus" --out "$tmp/o" --seq-len twelve)
one_line_with "$err" "--seq-len"
err=$(train_fails --data "$corpus" --out "$tmp/o" --lr -1)
one_line_with "$err" "--lr"
err=$(train_fails --data "$corpus" --out "$tmp/o" --no-such-option 1)
one_line_with "$err" "--no-such-option"
test ! -e "$tmp/o" || fail "a rejected command created its output directory"

help=$("$dirmoe" train --help) || fail "train --help exited non-zero"
for opt in data val router experts k k-max layers d-model heads d-ff seq-len batch steps lr warmup \
    weight-decay clip seed backend out val-fraction eval-every save-every resume moe-every aux-loss z-loss \
    capacity-factor beta-b beta-d lambda-s sparsity dual-step tau alpha0 schedule explore kl-b selection \
    alpha-min alpha-max select-init; do
    echo "$help" | grep -q -- "^  --$opt[ ]" || fail "--help does not list --$opt"
done
echo "$help" | grep -q -- "--lr X .*\[" || fail "--help shows no default for --lr"

# --- output directory -------------------------------------------------------------------
err=$(train_fails --data "$corpus" --out /dev/null/run)
one_line_with "$err" "/dev/null/run"
: >"$tmp/a-file"
err=$(train_fails --data "$corpus" --out "$tmp/a-file")
one_line_with "$err" "a-file"

# --- an existing run and its checkpoint ------------------------------------------------------
run=$tmp/run
"$dirmoe" train $tiny --steps 4 --data "$corpus" --out "$run" >/dev/null || fail "the reference run failed"
ck=$run/checkpoint.safetensors
cp "$ck" "$tmp/good.safetensors"
cp "$run/metrics.jsonl" "$tmp/good.jsonl"
unchanged() {
    cmp -s "$ck" "$tmp/good.safetensors" || fail "$1: the checkpoint changed"
    cmp -s "$run/metrics.jsonl" "$tmp/good.jsonl" || fail "$1: metrics.jsonl changed"
}

err=$(train_fails --steps 4 --data "$corpus" --out "$run")
one_line_with "$err" "--resume"
unchanged "a second run into the same --out"

err=$(train_fails --steps 4 --data "$corpus" --out "$run" --resume --experts 8)
one_line_with "$err" "expert"
unchanged "resume with another --experts"

err=$(train_fails --steps 8 --data "$corpus" --out "$run" --resume)
one_line_with "$err" "steps"
unchanged "resume with another --steps"

mkdir "$tmp/metrics-only"
echo '{"type":"config"}' >"$tmp/metrics-only/metrics.jsonl"
err=$(train_fails --data "$corpus" --out "$tmp/metrics-only")
one_line_with "$err" "metrics.jsonl"
test "$(cat "$tmp/metrics-only/metrics.jsonl")" = '{"type":"config"}' || fail "an earlier run's metrics were overwritten"

err=$(train_fails --data "$corpus" --out "$tmp/nothing-here" --resume)
one_line_with "$err" "no checkpoint"

# Truncated: half the file.
size=$(wc -c <"$tmp/good.safetensors")
head -c $((size / 2)) "$tmp/good.safetensors" >"$ck"
cp "$ck" "$tmp/cut.safetensors"
err=$(train_fails --steps 4 --data "$corpus" --out "$run" --resume)
one_line_with "$err" "checkpoint.safetensors"
cmp -s "$ck" "$tmp/cut.safetensors" || fail "resume from a truncated checkpoint changed it"
cmp -s "$run/metrics.jsonl" "$tmp/good.jsonl" || fail "resume from a truncated checkpoint changed metrics.jsonl"
err=$("$dirmoe" eval --checkpoint "$ck" --data "$corpus" 2>&1 >/dev/null) && fail "eval of a truncated checkpoint exited 0"
one_line_with "$err" "checkpoint.safetensors"

# Corrupt: the header length field overwritten with a huge value.
cp "$tmp/good.safetensors" "$ck"
printf '\377\377\377\377\377\377\377\177' | dd of="$ck" bs=1 seek=0 conv=notrunc 2>/dev/null
err=$(train_fails --steps 4 --data "$corpus" --out "$run" --resume)
one_line_with "$err" "checkpoint.safetensors"
err=$("$dirmoe" sample --checkpoint "$ck" --prompt x 2>&1 >/dev/null) && fail "sample from a corrupt checkpoint exited 0"
one_line_with "$err" "checkpoint.safetensors"

# --- NaN in the loss: weights poisoned with NaN, so the first resumed step fails -----------
if command -v python3 >/dev/null 2>&1; then
    "$dirmoe" train $tiny --steps 8 --stop-after 4 --data "$corpus" --out "$tmp/long" >/dev/null ||
        fail "the run to poison failed"
    python3 - "$tmp/long/checkpoint.safetensors" <<'EOF'
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
begin, end = header["h.0.router.w"]["data_offsets"]
for off in range(8 + n + begin, 8 + n + end, 4):
    data[off:off + 4] = struct.pack("<f", float("nan"))
open(path, "wb").write(data)
EOF
    cp "$tmp/long/checkpoint.safetensors" "$tmp/long.safetensors"
    err=$("$dirmoe" train $tiny --steps 8 --data "$corpus" --out "$tmp/long" --resume 2>&1 >/dev/null) &&
        fail "training from NaN weights exited 0"
    one_line_with "$err" "step 4"
    echo "$err" | grep -Eqi "(layer|block) 0" || fail "the NaN message does not name the layer: $err"
    echo "$err" | grep -q "checkpoint" || fail "the NaN message does not mention the kept checkpoint: $err"
    cmp -s "$tmp/long/checkpoint.safetensors" "$tmp/long.safetensors" || fail "the NaN run overwrote the checkpoint"
fi

echo "ok"
