#!/usr/bin/env bash
# Run the same benchmarks on two commits back to back on this machine, and keep both outputs.
#
#   bash bench/before_after.sh BEFORE AFTER [OUT_DIR]
#
# Each commit is checked out into its own temporary worktree and runs its own copy of
# bench/ig_speed.py and bench/what_if_speed.py (same flags), alternating before / after so that
# a drift of the machine hits both alike. The cache (the converted model, the mined set) is this
# checkout's. Nothing else should run meanwhile; the outputs name the CPU (bench/machine.py).
# IG_ARGS and WHAT_IF_ARGS override the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(git rev-parse --short "${1:?BEFORE commit}")
after=$(git rev-parse --short "${2:?AFTER commit}")
out=${3:-bench/results/before_after}
ig_args=${IG_ARGS:---captum-layers 0-1 --repeats 3}
what_if_args=${WHAT_IF_ARGS:---examples 4 --batch 2}
mkdir -p "$out"
export NEURORIT_CACHE=${NEURORIT_CACHE:-$PWD/cache} HF_HUB_OFFLINE=1
tmp=$(dirname "$PWD")/.before-after  # beside this checkout, so that each worktree's ../shared is found
trap 'for rev in "$before" "$after"; do git worktree remove --force "$tmp/$rev/$(basename "$PWD")" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
for rev in "$before" "$after"; do
  git worktree add --detach -f "$tmp/$rev/$(basename "$PWD")" "$rev" >/dev/null
  [ -d ../shared ] && ln -sfn "$(cd ../shared && pwd)" "$tmp/$rev/shared"  # the datasets, as beside this checkout
done
run() {  # run BENCH REV ARGS...: one benchmark of one commit, its output kept
  local bench=$1 rev=$2; shift 2
  echo "== $bench at $rev: $*"
  local tree
  tree="$tmp/$rev/$(basename "$PWD")"
  (cd "$tree" && PYTHONPATH="$tree" python "bench/$bench.py" "$@") 2>&1 | grep -v "WARNING" | tee "$out/$bench-$rev.txt"
}
# shellcheck disable=SC2086
for bench in ig_speed what_if_speed; do
  args=$ig_args
  [ "$bench" = what_if_speed ] && args=$what_if_args
  run "$bench" "$before" $args
  run "$bench" "$after" $args
done
echo "outputs in $out"
