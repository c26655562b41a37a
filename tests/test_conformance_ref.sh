#!/bin/sh
# dirmoe conformance with the reference under test: every case passes, and bad options fail clearly.
set -u
dirmoe="$DIRMOE_TOP_BUILDDIR/tools/dirmoe"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$dirmoe" conformance --backend reference) || fail "reference vs reference exited non-zero: $out"
echo "$out" | grep -q "^summary: .* 0 failed" || fail "summary line missing or failures reported: $(echo "$out" | tail -3)"
echo "$out" | grep -q "^dirmoe_route_forward .*fixed_noise=0" || fail "Philox-drawn router cases missing"
echo "$out" | grep -q "^gemm .*odd" || fail "odd-size gemm cases missing"

out=$("$dirmoe" conformance --backend reference --op '^philox$' --format csv 2>/dev/null) || fail "--op philox exited non-zero"
echo "$out" | head -1 | grep -q "^op,case,result" || fail "csv header missing: $out"
rows=$(echo "$out" | grep -c "^philox,")
[ "$rows" -eq 6 ] || fail "expected 6 philox rows (3 sizes x 2 variants), got $rows"

err=$("$dirmoe" conformance --backend reference --op 'no_such_op' 2>&1 >/dev/null) && fail "an --op matching nothing exited 0"
echo "$err" | grep -q "no op matches --op 'no_such_op'" || fail "message: $err"

err=$("$dirmoe" conformance --backend reference --op '(' 2>&1 >/dev/null) && fail "an invalid regex exited 0"
echo "$err" | grep -q "invalid --op regular expression" || fail "message: $err"
exit 0
