#!/bin/sh
# scripts/get_kjv.sh writes the default corpus where dirmoe train looks for it.
. "${DIRMOE_TOP_SRCDIR:-.}/tests/cli_common.sh"

if ! command -v bible >/dev/null 2>&1; then
    echo "SKIP: the bible-kjv package is not installed"
    exit 77
fi
DIRMOE_DATA_DIR=$tmp/data "$srcdir/scripts/get_kjv.sh" >/dev/null || fail "get_kjv.sh exited non-zero"
kjv=$tmp/data/kjv.txt
test "$(wc -l <"$kjv")" -eq 31102 || fail "expected 31,102 verses, got $(wc -l <"$kjv") lines"
head -n 1 "$kjv" | grep -qx "1:1 In the beginning God created the heaven and the earth." ||
    fail "unexpected first line: $(head -n 1 "$kjv")"
tail -n 1 "$kjv" | grep -qx "22:21 The grace of our Lord Jesus Christ be with you all. Amen." ||
    fail "unexpected last line: $(tail -n 1 "$kjv")"

# Without --data, train reads it from DIRMOE_DATA_DIR.
out=$(DIRMOE_DATA_DIR=$tmp/data "$dirmoe" train $tiny --steps 2 --out "$tmp/run") || fail "train on the KJV failed"
grep -q "\"data\":\"$kjv\"" "$tmp/run/metrics.jsonl" || fail "the run did not read $kjv"
echo "ok"
