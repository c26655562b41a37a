#!/bin/sh
# dirmoe backends: listing, selection by environment, and the unknown-backend error.
set -u
dirmoe="$DIRMOE_TOP_BUILDDIR/tools/dirmoe"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$dirmoe" --version) || fail "--version exited non-zero"
echo "$out" | grep -q "^dirmoe " || fail "--version printed '$out'"

"$dirmoe" --help | grep -q "backends" || fail "--help does not list the backends command"
"$dirmoe" backends --help | grep -q "usage: dirmoe backends" || fail "backends --help"

out=$(DIRMOE_BACKEND=reference "$dirmoe" backends) || fail "DIRMOE_BACKEND=reference exited non-zero"
echo "$out" | grep -q "^selected: reference" || fail "reference not selected: $out"
echo "$out" | grep -q "ABI:" || fail "no ABI version listed"
echo "$out" | grep -q "auto selects:" || fail "no auto choice listed"

err=$(DIRMOE_BACKEND=nope "$dirmoe" backends 2>&1 >/dev/null) && fail "DIRMOE_BACKEND=nope exited 0"
echo "$err" | grep -q "unknown backend 'nope'" || fail "message does not name the backend: $err"
echo "$err" | grep -q "reference" || fail "message does not list the backends found: $err"
test "$(echo "$err" | wc -l)" -eq 1 || fail "expected one line on stderr, got: $err"

err=$("$dirmoe" backends --backend nope 2>&1 >/dev/null) && fail "--backend nope exited 0"
echo "$err" | grep -q "unknown backend 'nope'" || fail "--backend: $err"

err=$("$dirmoe" frobnicate 2>&1) && fail "unknown command exited 0"
echo "$err" | grep -q "unknown command 'frobnicate'" || fail "unknown command: $err"

err=$("$dirmoe" backends --no-such-option 2>&1) && fail "unknown option exited 0"
echo "$err" | grep -q "unknown option '--no-such-option'" || fail "unknown option: $err"
echo "ok"
