#!/bin/sh
# Installs dirmoe into a staging directory, builds the out-of-tree example
# plugin against the installed headers and pkg-config file, and loads it.
set -eu
fail() { echo "FAIL: $*"; exit 1; }

stage=$(mktemp -d /tmp/dirmoe-stage-XXXXXX)
trap 'rm -rf "$stage"' EXIT

${MAKE:-make} -s -C "$DIRMOE_TOP_BUILDDIR" install DESTDIR="$stage" >/dev/null
pcdir="$stage$DIRMOE_LIBDIR/pkgconfig"
test -f "$pcdir/dirmoe.pc" || fail "dirmoe.pc not installed in $pcdir"
test -f "$stage$DIRMOE_INCLUDEDIR/dirmoe/backend.h" || fail "backend.h not installed"

cp "$DIRMOE_TOP_SRCDIR/plugins/example/example.c" "$DIRMOE_TOP_SRCDIR/plugins/example/Makefile" "$stage/"
chmod u+w "$stage/example.c" "$stage/Makefile"
PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$stage" ${MAKE:-make} -s -C "$stage" dm_example.so \
    || fail "the example plugin does not build against the installed headers"

out=$(DIRMOE_PLUGIN_PATH="$stage" "$DIRMOE_TOP_BUILDDIR/tools/dirmoe" backends --backend example) \
    || fail "the example backend cannot be selected"
echo "$out" | grep -q "^selected: example" || fail "example not selected: $out"
echo "$out" | grep -q "partial" || fail "example not reported as partial: $out"
echo ok
