#!/bin/bash
cd /work/main
b=$1
/usr/bin/time -f "$b: %e s wall" nice -n 19 .venv/bin/python -W ignore -m scalepool.cli study backbones \
  --data /tmp/work/backbones_results/nacl_small.npz --out /tmp/work/bb200/study_$b \
  --backbones $b --size small --steps 200 --test-frames 8 --eval-repeats 3 --threads 1 --device cpu > /tmp/work/bb200/log_$b.txt 2>&1
