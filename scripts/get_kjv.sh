#!/bin/sh
# Writes the King James Bible as plain text, the default training corpus of
# `dirmoe train`, from Debian's bible-kjv package (its `bible` program reads
# the compressed bible-kjv-text data in /usr/lib/bible.data).
#
# Usage: scripts/get_kjv.sh [OUTPUT]
# OUTPUT defaults to $DIRMOE_DATA_DIR/kjv.txt, else ~/.local/share/dirmoe/kjv.txt,
# the path `dirmoe train` reads when --data is not given.
#
# Format: one verse per line, "CHAPTER:VERSE text", ASCII, 31,102 lines and
# 4,303,552 bytes with bible-kjv 4.x (Genesis 1:1 to Revelation 22:21).
set -eu

data_dir=${DIRMOE_DATA_DIR:-${HOME:?HOME is not set}/.local/share/dirmoe}
out=${1:-$data_dir/kjv.txt}

if ! command -v bible >/dev/null 2>&1; then
    echo "get_kjv.sh: the 'bible' program is not installed: run 'apt-get install bible-kjv' (as root) and retry" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM

# -f turns pretty-printing off: one verse per line, prefixed by its reference
# such as "Ge1:1" or "1Sm3:4". The book abbreviation is dropped and the
# chapter:verse kept, the layout of the usual plain-text editions.
bible -f Gen1:1-Rev22:21 | sed -E 's/^[1-3]?[A-Za-z]+([0-9]+:[0-9]+) /\1 /' >"$tmp"

lines=$(wc -l <"$tmp")
if [ "$lines" -lt 31000 ]; then
    echo "get_kjv.sh: 'bible' printed only $lines lines (expected 31,102 verses): check the bible-kjv-text package" >&2
    exit 1
fi

mv "$tmp" "$out"
trap - EXIT INT TERM
echo "wrote $out ($(wc -c <"$out") bytes, $lines verses)"
