# Shared by the tests/test_cli_*.sh scripts: the binary, a scratch directory,
# a small corpus and the options of a tiny model on the reference backend.
set -u
dirmoe="${DIRMOE_TOP_BUILDDIR:-.}/tools/dirmoe"
srcdir="${DIRMOE_TOP_SRCDIR:-.}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAIL: $*"
    exit 1
}

# Checks that stderr text $1 is exactly one line that contains $2.
one_line_with() {
    test "$(printf '%s\n' "$1" | wc -l)" -eq 1 || fail "expected one line on stderr, got: $1"
    printf '%s\n' "$1" | grep -q -- "$2" || fail "expected '$2' in: $1"
}

# About 6 KB of English text, so the tests need no corpus download.
corpus=$tmp/corpus.txt
i=0
while [ $i -lt 40 ]; do
    echo "In the beginning was the word, and the word was with the experts; every token found its way." >>"$corpus"
    echo "And the router said: let there be load balance, and there was balance among the experts $i." >>"$corpus"
    i=$((i + 1))
done

tiny="--layers 1 --d-model 16 --heads 2 --d-ff 32 --experts 4 --seq-len 16 --batch 2 --backend reference"
tiny="$tiny --eval-batches 2 --progress never"
