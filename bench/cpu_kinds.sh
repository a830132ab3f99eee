#!/usr/bin/env bash
# IG and what-if speed on this CPU's own kernels and on its AVX2 kernels (what an AMD EPYC without
# AVX-512 runs), one after the other in one run, so the ratios compare like with like.
#   bash bench/cpu_kinds.sh [OUT_DIR]      (default bench/results/cpu_kinds)
# With NEURORIT_BENCH_HOG=1 a bounded CPU hog (one busy process per core) runs beside each bench.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1
out=${1:-bench/results/cpu_kinds}
mkdir -p "$out"
hog() {  # one busy-looping process per core, each ending by itself after $1 seconds
  for _ in $(seq "$(nproc)"); do timeout "$1" python -c "while True: pass" & done
}
for kind in native avx2; do
  if [ "$kind" = avx2 ]; then export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2; fi
  [ "${NEURORIT_BENCH_HOG:-0}" = 1 ] && hog 1800
  python bench/ig_speed.py --captum-layers 0,15,29 --repeats 3 2>&1 | grep -v "it/s]" | tee "$out/ig_speed_$kind.txt"
  python bench/what_if_speed.py --examples 8 2>&1 | grep -v "it/s]" | tee "$out/what_if_speed_$kind.txt"
  [ "${NEURORIT_BENCH_HOG:-0}" = 1 ] && pkill -f "while True: pass" || true
done
