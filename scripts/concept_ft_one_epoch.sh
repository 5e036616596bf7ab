#!/usr/bin/env bash
# One epoch of the concept term on a shipped matcher (issue 47's CAAN and MLASM pilots), end to end:
# fine-tune from the shipped file, score the whole val split on the trained grid, play the pointing game.
#   bash scripts/concept_ft_one_epoch.sh MODEL WEIGHT [--set key=value ...]   (WEIGHT 0: the control)
# e.g. bash scripts/concept_ft_one_epoch.sh caan 0.25; mlasm needs --set model.global_context=pairwise
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; weight=$2; shift 2
name=${model}_ft1_concept$weight
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p runs/flickr8k results/flickr8k/concept_term results/coco_boxes_dev/concept_term
itm train --config "configs/${model}_cpu.yaml" --data ../shared/data/flickr8k --out "runs/flickr8k/$name" --no-progress \
  --set "train.init_from=src/itm/assets/models/$model.pt" --set "train.concept_weight=$weight" --set train.lr=0.0001 \
  --set train.epochs=1 --set train.threads=1 --set train.max_minutes=40 "$@" > "runs/flickr8k/$name.train.log" 2>&1
itm eval --checkpoint "runs/flickr8k/$name" --data ../shared/data/flickr8k --split val --no-progress \
  --set "eval.score_sizes=[]" --json "results/flickr8k/concept_term/${name}_val.json"
itm pointing-game --checkpoint "runs/flickr8k/$name" --data ../shared/data/coco_boxes_dev \
  --boxes ../shared/data/coco_boxes_dev/instances_boxes.json --set eval.explain_image_size=416 \
  --set text.vocabulary=open --json "results/coco_boxes_dev/concept_term/pointing_${name}_416.json"
