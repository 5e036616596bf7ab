#!/usr/bin/env bash
# One seed of the concept-term fine-tune of the shipped BSSAN (issue 47), end to end:
# train (scripts/experiment.sh, which also scores Flickr8k test), score val, play the pointing game.
#   bash scripts/concept_ft_seed.sh NAME SEED WEIGHT [--set key=value ...]   (WEIGHT 0: the control, no term)
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; seed=$2; weight=$3; shift 3
term=(); [ "$weight" != "0" ] && term=(--set "train.concept_weight=$weight")
bash scripts/experiment.sh "$name" configs/bssan_cpu_lite2.yaml --set train.init_from=src/itm/assets/models/bssan.pt \
  "${term[@]}" --set train.seed="$seed" --set train.lr=0.0001 --set train.epochs=3 --set train.max_minutes=50 \
  --set train.threads=1 --set "eval.score_sizes=[]" "$@"
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # as experiment.sh: two such runs share the 2-core machine
mkdir -p results/flickr8k/concept_term results/coco_boxes_dev/concept_term
itm eval --checkpoint "runs/flickr8k/$name" --data ../shared/data/flickr8k --split val --no-progress \
  --json "results/flickr8k/concept_term/${name}_val.json"
itm pointing-game --checkpoint "runs/flickr8k/$name" --data ../shared/data/coco_boxes_dev \
  --boxes ../shared/data/coco_boxes_dev/instances_boxes.json --set eval.explain_image_size=416 \
  --set text.vocabulary=open --json "results/coco_boxes_dev/concept_term/pointing_${name}_416.json"
