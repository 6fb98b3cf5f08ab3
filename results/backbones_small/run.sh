#!/bin/bash
# The committed small backbone study (results/backbones_small), with the scale layer, from a clean checkout.
# The 379-atom NaCl box (24 frames; sha256 ef2765d32e055ed46162d9b7b9f5607b0eb1a444264a53b0a3a1183f6c0deb2d):
scalepool data nacl --out nacl_small.npz --frames 24 --seed 0 --box-nm 1.6 --molarity 1.0 \
    --equilibration-ps 4 --stride-ps 0.5 --threads 1
# One backbone at a time (wall times on the shared 2-core machine: painn 323 s, so3krates 319 s, mace 1409 s).
# caches/ (the prediction caches of each seed pair) are not committed: they are rebuilt from models/ by
# scalepool.studies._backbone_scales.backbone_caches.
for b in painn so3krates mace; do
  nice -n 5 python -W ignore -m scalepool.cli study backbones \
    --data nacl_small.npz --out study_$b \
    --backbones $b --size small --steps 200 --test-frames 8 --eval-repeats 3 --threads 1 --device cpu \
    > log_$b.txt 2>&1
done
