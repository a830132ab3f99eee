#!/usr/bin/env bash
# Issue 10, part 3 on the bundled model: re-mine a Neuro-RIT checkpoint on the same questions as
# the base model and compare the two mining results (`neurorit compare`).
#
#   bash studies/compare_trained.sh [N_QUESTIONS] [OUT]
#
# 1. trains Neuro-RIT (24 steps, the study's budget) with the study's mined NQ-open set
#    (3 irrelevant-exclusive neurons; MINED overrides it), its final checkpoint baked with the mask;
# 2. mines the base model and the checkpoint on the same first N_QUESTIONS NQ-open questions
#    (default 24), each with 4 BM25-hard distractors, IG with 8 midpoint steps (the study's);
# 3. compares them: per-layer sizes, overlap and Jaccard of the five sets, and the attribution of
#    the base's irrelevant-exclusive neurons before vs after training (JSON, table, figure).
# About 25 minutes on an idle 2-core CPU. The result tables land in OUT (default
# studies/results/compare_trained); the run and the mined sets stay in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-24}
out=${2:-studies/results/compare_trained}
mined=${MINED:-cache/mined/6c942e8b7d0a1319}
data=../shared/data/nq-open-oracle.jsonl.gz
run=${NEURORIT_CACHE:-cache}/runs/compare-trained-neuro_rit
mkdir -p "$out"
export HF_HUB_OFFLINE=1
python -m neurorit train --method neuro_rit --data "$data" --limit 500 --mined "$mined" --max-steps 24 \
  --batch-size 2 --grad-accum 1 --n-distractors 1-4 --n-eval 8 --views noisy --no-eval-before --out "$run" --quiet
mine=(--data "$data" --limit "$n" --add-distractors 4 --hard --n-steps 8 --quiet)
python -m neurorit mine "${mine[@]}" --out-json "$out/base.json"
python -m neurorit mine --model "$run/final" "${mine[@]}" --out-json "$out/trained.json"
base=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['mined'])" "$out/base.json")
trained=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['mined'])" "$out/trained.json")
python -m neurorit compare "$base" "$trained" --html "$out/compare.html" | tee "$out/compare.txt"
python -m neurorit compare "$base" "$trained" --json > "$out/compare.json"
echo "run $run; base $base; trained $trained; outputs in $out"
