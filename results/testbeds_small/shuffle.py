"""Permute a testbed dataset's frames once (seeded), per-frame meta lists with them, so that
the default time-block split of 'scalepool train' is one random split shared by every seed."""
import sys
import numpy as np
from scalepool.data import FrameSet

src, dst = sys.argv[1], sys.argv[2]
frames = FrameSet.load(src)
perm = np.random.default_rng(12345).permutation(frames.n_frames)
out = frames[perm]
meta = dict(frames.meta)
for key in ("frame_molecule", "frame_height"):
    if key in meta:
        meta[key] = [meta[key][i] for i in perm]
if "observables" in meta:
    meta["observables"] = {k: [v[i] for i in perm] for k, v in meta["observables"].items()}
meta["shuffled_from"] = {"source": src, "permutation": perm.tolist()}
out.meta = meta
out.save(dst)
print(dst, out.n_frames)
