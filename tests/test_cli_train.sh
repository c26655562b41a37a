#!/bin/sh
# dirmoe train, eval and sample end to end on a tiny model: metrics rows,
# progress output, every router, evaluation that reproduces training's
# validation row, and seeded sampling.
. "${DIRMOE_TOP_SRCDIR:-.}/tests/cli_common.sh"

# --- a DirMoE run: log line per interval, metrics rows --------------------
out=$("$dirmoe" train $tiny --data "$corpus" --steps 6 --log-every 2 --eval-every 3 --out "$tmp/run") ||
    fail "train exited non-zero: $out"
echo "$out" | grep -q "^step 2/6  loss " || fail "no log line for step 2: $out"
echo "$out" | grep -q "^step 6/6 " || fail "no log line for step 6: $out"
echo "$out" | grep -q "^eval step 3: val loss" || fail "no validation line at step 3: $out"
echo "$out" | grep -q "ETA" || fail "log line without ETA: $out"
test -s "$tmp/run/checkpoint.safetensors" || fail "no checkpoint written"

m=$tmp/run/metrics.jsonl
head -n 1 "$m" | grep -q '^{"type":"config",' || fail "first metrics row is not the configuration"
head -n 1 "$m" | grep -q '"n_layer":1' || fail "configuration row lacks n_layer: $(head -n 1 "$m")"
test "$(grep -c '"type":"train"' "$m")" -eq 3 || fail "expected 3 train rows (steps 2, 4, 6)"
test "$(grep -c '"type":"eval"' "$m")" -eq 2 || fail "expected 2 eval rows (steps 3, 6)"
train=$(grep '"type":"train","step":6,' "$m") || fail "no train row for step 6"
for key in loss ce ppl bpb lr grad_norm tokens_per_s flops_per_token active kbar load load_cv dead mu tau alpha0; do
    echo "$train" | grep -q "\"$key\":" || fail "train row lacks $key: $train"
done
eval=$(grep '"type":"eval","step":6,' "$m") || fail "no eval row for step 6"
for key in loss ppl bpb active load load_cv dead entropy h_expert h_expert_given_token mutual_info; do
    echo "$eval" | grep -q "\"$key\":" || fail "eval row lacks $key: $eval"
done

# --- the progress line on request -----------------------------------------
out=$("$dirmoe" train $tiny --data "$corpus" --steps 3 --progress always --out "$tmp/progress") ||
    fail "train --progress always exited non-zero"
printf '%s' "$out" | tr '\r' '\n' | grep -q "^step 3/3  loss .* tok/s  active .* ETA" ||
    fail "no progress line: $out"
printf '%s' "$out" | grep -q "$(printf '\r')" || fail "the progress line is not redrawn with a carriage return"

# --- the other routers -------------------------------------------------------
for router in topk switch dense; do
    "$dirmoe" train $tiny --data "$corpus" --steps 3 --router "$router" --k 1 --out "$tmp/$router" >/dev/null ||
        fail "--router $router exited non-zero"
    grep -q '"type":"eval","step":3,' "$tmp/$router/metrics.jsonl" || fail "--router $router: no final eval row"
done
grep -q '"layers":\[\]' "$tmp/dense/metrics.jsonl" || fail "dense run lists MoE layers"

# --- a --config file, overridden by the command line -----------------------
cat >"$tmp/run.conf" <<EOF
# tiny model
layers = 1
d-model = 16
heads = 2
d-ff = 32
experts = 4
seq-len = 16
batch = 2
steps = 9
EOF
"$dirmoe" train --config "$tmp/run.conf" --steps 2 --backend reference --progress never --data "$corpus" \
    --out "$tmp/conf" >/dev/null || fail "train --config exited non-zero"
grep -q '"steps":2' "$tmp/conf/metrics.jsonl" || fail "the command line did not override the config file"

# --- eval reproduces the validation row at the checkpoint's step ------------
out=$("$dirmoe" eval --checkpoint "$tmp/run/checkpoint.safetensors" --data "$corpus" --held-out --backend reference) ||
    fail "eval exited non-zero: $out"
echo "$out" | grep -q "bits/byte" || fail "eval prints no bits per byte: $out"
echo "$out" | grep -q "I(X;E)" || fail "eval prints no mutual information: $out"
echo "$out" | grep -q "active .* experts/token" || fail "eval prints no evaluation count: $out"

json=$("$dirmoe" eval --checkpoint "$tmp/run/checkpoint.safetensors" --data "$corpus" --held-out --json \
    --backend reference) || fail "eval --json exited non-zero"
want=$(echo "$eval" | sed 's/.*"loss":\([^,]*\),.*/\1/')
got=$(echo "$json" | sed 's/.*"loss":\([^,]*\),.*/\1/')
test "$want" = "$got" || fail "eval loss $got differs from the training run's validation loss $want"

# Without --data, eval uses the run's own held-out data, found through metrics.jsonl.
json=$(DIRMOE_DATA_DIR=/nonexistent "$dirmoe" eval --checkpoint "$tmp/run/checkpoint.safetensors" --json \
    --backend reference) || fail "eval without --data exited non-zero"
got=$(echo "$json" | sed 's/.*"loss":\([^,]*\),.*/\1/')
test "$want" = "$got" || fail "eval without --data gave loss $got, the run's validation loss is $want"

# --- sample ---------------------------------------------------------------------
ck=$tmp/run/checkpoint.safetensors
a=$("$dirmoe" sample --checkpoint "$ck" --prompt "In the" --tokens 20 --seed 7 --backend reference) ||
    fail "sample exited non-zero"
b=$("$dirmoe" sample --checkpoint "$ck" --prompt "In the" --tokens 20 --seed 7 --backend reference)
test "$a" = "$b" || fail "the same seed gave different text: '$a' and '$b'"
case $a in "In the"*) ;; *) fail "sample output does not start with the prompt: '$a'" ;; esac
bytes=$("$dirmoe" sample --checkpoint "$ck" --prompt "In the" --tokens 20 --seed 7 --backend reference | wc -c)
test "$bytes" -eq 27 || fail "expected 6 prompt bytes + 20 generated + newline, got $bytes bytes"

g1=$("$dirmoe" sample --checkpoint "$ck" --prompt "the" --tokens 10 --temperature 0 --backend reference)
g2=$("$dirmoe" sample --checkpoint "$ck" --prompt "the" --tokens 10 --top-k 1 --seed 3 --backend reference)
test "$g1" = "$g2" || fail "top-k 1 differs from greedy: '$g1' and '$g2'"

err=$("$dirmoe" sample --checkpoint "$ck" --tokens 5 2>&1 >/dev/null) && fail "sample without --prompt exited 0"
one_line_with "$err" "missing --prompt"
err=$("$dirmoe" sample --checkpoint "$ck" --prompt x --top-p 2 2>&1 >/dev/null) && fail "--top-p 2 exited 0"
one_line_with "$err" "top-p"

# --- plots of the run --------------------------------------------------------------
if command -v gnuplot >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    "$srcdir/scripts/plot_metrics.sh" "$tmp/run" "$tmp/plots" >/dev/null || fail "plot_metrics.sh exited non-zero"
    for png in loss.png bpb.png active.png load_0.png; do
        test -s "$tmp/plots/$png" || fail "plot_metrics.sh wrote no $png"
    done
fi

echo "ok"
