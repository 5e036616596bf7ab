#!/usr/bin/env bash
# One reported Flickr8k experiment: train, then evaluate on the 1K test split.
#   bash scripts/experiment.sh NAME CONFIG [--set key=value ...]
# Writes runs/flickr8k/NAME/ (checkpoints, metrics.jsonl, logs) and results/flickr8k/NAME.json, which
# also keeps the run's training summary (under "training": time, epochs, best validation rsum), since
# runs/ is not committed.
# DATA (default ../shared/data/flickr8k) and OMP_NUM_THREADS (default 1, so two experiments can
# share a 2-core machine without oversubscribing it) can be set in the environment; SCORES=DIR also
# saves the test score matrix as DIR/NAME.npy (for scripts/ensembles.py). Run again after a stop, the
# same command continues the run from its last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; config=$2; shift 2
data=${DATA:-../shared/data/flickr8k}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
. .venv/bin/activate
mkdir -p runs/flickr8k results/flickr8k
if [ -f "runs/flickr8k/$name/last.pt" ]; then
  # the run was stopped (a session's end): continue it from its last epoch, the same command again;
  # a resumed run takes only train.* values (a longer train.max_minutes, say)
  train_sets=(); previous=""
  for arg in "$@"; do
    if [ "$previous" = "--set" ] && [[ $arg == train.* ]]; then train_sets+=(--set "$arg"); fi
    previous=$arg
  done
  itm train --resume "runs/flickr8k/$name" --no-progress "${train_sets[@]}" >> "runs/flickr8k/$name.train.log" 2>&1
else
  itm train --config "$config" --data "$data" --out "runs/flickr8k/$name" --no-progress "$@" \
    > "runs/flickr8k/$name.train.log" 2>&1
fi
scores=(); [ -n "${SCORES:-}" ] && scores=(--scores "$SCORES/$name.npy")
itm eval --checkpoint "runs/flickr8k/$name" --data "$data" --split test "${scores[@]}" \
  --json "results/flickr8k/$name.json" --no-progress > "runs/flickr8k/$name.eval.log" 2>&1
python scripts/results_table.py --keep-training "$name"
cat "runs/flickr8k/$name.eval.log"
