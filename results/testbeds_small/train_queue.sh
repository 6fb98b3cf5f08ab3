#!/bin/bash
# usage: train_queue.sh DATASET_TAG EXTRA_ARGS... ; runs listed in $JOBS as branch:seed
cd /work/main
tag=$1; shift
data=/tmp/work/bench14/data/$tag.npz
for job in $JOBS; do
  b=${job%:*}; s=${job#*:}
  start=$(date +%s)
  nice -n 5 .venv/bin/scalepool train --branch $b --data $data --out /tmp/work/bench14/runs/$tag/${b}_s$s --seed $s \
    --model-option n_features=16 --model-option n_interactions=1 --model-option n_rbf=8 \
    --threads 1 --no-progress "$@" > /tmp/work/bench14/runs/${tag}_${b}_s$s.log 2>&1
  echo "$tag $b s$s rc=$? $(( $(date +%s) - start )) s" >> /tmp/work/bench14/runs/times.txt
done
