#!/bin/bash
# The small benchmark run: both studies, prediction caches and scale tables with null control, figures.
cd /work/main
B=/tmp/work/bench14; R=$B/runs; P=$B/pred; mkdir -p $P $B/results $B/tables
runs() { for r in short_s0 short_s1 long_s0 long_s1 muse_s0 muse_s1; do echo --run $R/$1/$r; done; }
( /usr/bin/time -f "folding %e s" nice -n 5 .venv/bin/scalepool study folding --data $B/data/chignolin_shuf.npz $(runs chignolin_shuf) \
    --out $B/results/folding --md-steps ${MD_STEPS:-1000} --device cpu > $B/folding.log 2>&1 ) &
/usr/bin/time -f "graphene %e s" nice -n 5 .venv/bin/scalepool study graphene_profiles --data $B/data/graphene_shuf.npz $(runs graphene_shuf) \
    --out $B/results/graphene_profiles --device cpu > $B/graphene_study.log 2>&1
for ds in chignolin graphene; do for pair in long muse; do for s in 0 1; do
  nice -n 5 .venv/bin/scalepool predict --run $R/${ds}_shuf/short_s$s --run $R/${ds}_shuf/${pair}_s$s --run $R/${ds}_shuf/short_s$((s+1)) \
    --data $B/data/${ds}_shuf.npz --out $P/${ds}_short_${pair}_s$s.npz --threads 1 --no-progress > $P/${ds}_short_${pair}_s$s.log 2>&1
done
  /usr/bin/time -f "table $ds $pair %e s" nice -n 5 .venv/bin/scalepool table --pred $P/${ds}_short_${pair}_s0.npz $P/${ds}_short_${pair}_s1.npz \
    --csv $B/tables/${ds}_short_${pair}.csv --threads 1 > $B/tables/${ds}_short_${pair}.txt 2>&1
done; done
wait
nice .venv/bin/scalepool figures --results $B/results --out $B/figures --only folding_md folding_errors graphene_profiles > $B/figures.log 2>&1
echo done > $B/final.done
