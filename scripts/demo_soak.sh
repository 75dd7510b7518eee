#!/usr/bin/env bash
# `make demo` from N fresh clones of the committed HEAD (default 10); prints how many passed.
#
#   scripts/demo_soak.sh [N]
#
# The first clone runs the whole `make setup`, as on a fresh machine. To save minutes, the other
# clones reuse its virtualenv: each installs its own code into it (`pip install -e . --no-deps`)
# and marks the set-up done, so `make demo` runs that clone's code. Every run starts in a clean
# clone with no data folder; a failed run's output is kept and its last lines printed.
set -euo pipefail

runs="${1:-10}"
root="$(git rev-parse --show-toplevel)"
commit="$(git -C "$root" rev-parse HEAD)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bitware-demo-soak.XXXXXX")"
trap 'rm -rf "$work"' EXIT

clone() {
    git clone --quiet --no-checkout "$root" "$1"
    git -C "$1" checkout --quiet "$commit"
}

echo "make demo from $runs fresh clones of ${commit:0:12} (in $work)"
clone "$work/clone-1"
if ! make -C "$work/clone-1" setup >"$work/setup.log" 2>&1; then
    tail -n 20 "$work/setup.log"
    echo "make setup failed in a fresh clone" >&2
    exit 1
fi
venv="$work/clone-1/.venv"

passed=0
for i in $(seq 1 "$runs"); do
    dir="$work/clone-$i"
    if [ "$i" -gt 1 ]; then
        clone "$dir"
        ln -s "$venv" "$dir/.venv"
        (cd "$dir" && "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .)
        touch "$venv/.setup-stamp"  # newer than the clone's files: `make demo` skips set-up
    fi
    started=$SECONDS
    if timeout 300 make -C "$dir" demo >"$work/demo-$i.log" 2>&1; then
        passed=$((passed + 1))
        echo "run $i: passed in $((SECONDS - started))s"
    else
        echo "run $i: FAILED after $((SECONDS - started))s; its last lines:"
        tail -n 25 "$work/demo-$i.log" | sed 's/^/    /'
        cp "$work/demo-$i.log" "${TMPDIR:-/tmp}/bitware-demo-soak-failed-$i.log"
    fi
done
echo "make demo passed $passed of $runs runs from fresh clones"
[ "$passed" -eq "$runs" ]
