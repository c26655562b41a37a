#!/bin/sh
# The OpenCL backend against the reference: every op of the registry on sizes 1,
# primes and odd sizes, plus the 20-step whole-model check (dirmoe conformance),
# then one clear error for an unknown OpenCL device.
set -u
dirmoe="$DIRMOE_TOP_BUILDDIR/tools/dirmoe"
fail() { echo "FAIL: $*"; exit 1; }

# The program cache goes to a scratch directory; PoCL's compiler cache is shared with
# test_opencl_ops in the build tree, so reruns skip PoCL's kernel compilation.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
XDG_CACHE_HOME=$tmp
export XDG_CACHE_HOME
if [ -z "${POCL_CACHE_DIR:-}" ]; then
    POCL_CACHE_DIR="$DIRMOE_TOP_BUILDDIR/tests/pocl-cache"
    mkdir -p "$POCL_CACHE_DIR"
    export POCL_CACHE_DIR
fi

out=$(DIRMOE_BACKEND=opencl "$dirmoe" conformance 2>&1)
rc=$?
echo "$out" | grep -v " pass " | tail -40
test $rc -eq 0 || fail "dirmoe conformance exited $rc on the opencl backend"
echo "$out" | grep -q "^summary: .* 0 failed" || fail "no clean summary line"
test -n "$(ls "$tmp"/dirmoe/opencl-*.bin 2>/dev/null)" || fail "no program cache file under $tmp/dirmoe"

err=$(DIRMOE_BACKEND=opencl DIRMOE_OPENCL_DEVICE=nonexistent "$dirmoe" backends 2>&1 >/dev/null) &&
    fail "DIRMOE_OPENCL_DEVICE=nonexistent exited 0"
echo "$err" | grep -q "DIRMOE_OPENCL_DEVICE=nonexistent matches no OpenCL device" ||
    fail "message does not name the device setting: $err"
test "$(echo "$err" | wc -l)" -eq 1 || fail "expected one line on stderr, got: $err"
exit 0
