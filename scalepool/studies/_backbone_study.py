"""Study: MuSE and the long-range branch on three backbones (PaiNN, MACE, SO3krates), one run.

For each backbone X and each model seed, three models are trained on the same
dataset at the same number of optimizer steps (one frame per step, AdamW,
force MAE loss, the same seeded frame order):

- ``alone``: X at 4.5 Å (``build_branch("short", backbone=X)``);
- ``long``: X at 6 Å + latent-charge P3M (``build_branch("long", backbone=X)``);
- ``muse``: MuSE around X (``build_branch("muse", backbone=X)``).

Outputs (forces in meV/Å, MAE over force components, test split):

- ``runs.csv``: one row per backbone, variant and seed: ``overall_mae``,
  ``ion_mae``, ``close_contact_mae`` (ions whose nearest counter-ion is within
  the contact distance), ``parameters``, ``ms_per_step`` (median training step),
  ``ms_per_eval`` (median energy + forces of the first test frame, eval mode);
- ``summary.csv``: mean and std over seeds per backbone and variant;
- ``gains.csv``: per backbone, the gain of ``muse`` and of ``long`` over
  ``alone`` in % of ``alone``'s overall MAE, paired per seed, mean ± std.

With the scale layer on (``--scale-layer``, the default; at least two seeds) the study
also saves every model (``models/<backbone>_<variant>_s<seed>.pt``), writes one
prediction cache per backbone and consecutive seed pair (``caches/``: anchors X alone
seed k and MuSE(X) seed k, null partner X alone seed k+1, and X + P3M seed k) and

- ``scale_table.csv``: the rows of ``scalepool table`` (single branches, best global
  s, oracles, learned routers) with MuSE(X) and with X + P3M as generator and for the
  null pair, long format (``backbone``, ``generator`` in muse/long/null, ``row``,
  ``metric``, ``unit``, ``mean``, ``std``, ``n`` seed pairs);
- ``scale_verdicts.csv``: per backbone and generator, the hard-oracle gain beside the
  null pair's and whether the excess over null exceeds its std
  (:mod:`scalepool.studies._backbone_scales`).

The input (``--data``) is a dataset ``.npz`` (:class:`~scalepool.data.FrameSet`,
e.g. ``scalepool data nacl``): the study trains its own models.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import FrameSet
from ..metrics import Subsets, subset_errors
from ..models import AtomsBatch, build_branch, fit_species_statistics, save_model
from ..provenance import ResultsDir
from ..scales import ScaleSettings
from ..train import predict_forces
from ._backbone_scales import (
    backbone_caches,
    backbone_scale_table,
    cache_blocks,
    model_file,
    seed_pairs,
    verdict_line,
    verdicts,
)
from ._common import mean_std
from ._study import Option, Study, scale_options

NAME = "backbones"
VARIANTS = ("alone", "long", "muse")
BRANCH_OF = {"alone": "short", "long": "long", "muse": "muse"}
METRICS = ("overall_mae", "ion_mae", "close_contact_mae")
#: train/val/test fractions of the time-block split
SPLIT = (0.7, 0.15, 0.15)

#: Backbone hyperparameters per size: ``full`` the adapters' defaults, ``small`` a CPU smoke size.
SIZES = {
    "full": {"painn": {}, "mace": {}, "so3krates": {}},
    "small": {
        "painn": dict(n_features=16, n_interactions=2),
        "mace": dict(num_channels=8, max_L=1, correlation=2, num_interactions=2, radial_mlp=[16]),
        "so3krates": dict(num_features=16, degrees=[1, 2], num_layers=2, num_heads=2),
    },
}
MUSE_SIZES = {"full": {}, "small": dict(n_coarse_interactions=1, coarse_n_rbf=8)}


def build(backbone: str, variant: str, size: str):
    """The model of one cell of the table (untrained)."""
    options = dict(SIZES[size][backbone])
    if variant == "muse":
        options.update(MUSE_SIZES[size])
    return build_branch(BRANCH_OF[variant], backbone=backbone, **options)


def fit(
    model, frames: FrameSet, train_idx: np.ndarray, steps: int, lr: float, seed: int, device
) -> list[float]:
    """``steps`` AdamW steps of force MAE, one training frame per step in a seeded order.

    Returns the wall seconds of every step.
    """
    fit_species_statistics(model, frames[train_idx])
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = np.random.default_rng(seed).choice(train_idx, size=steps)
    seconds = []
    for index in order:
        start = time.perf_counter()
        batch = AtomsBatch.from_frameset(frames, [int(index)], device=device)
        out = model(batch)
        loss = (out["forces"] - batch.forces).abs().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite force loss at frame {int(index)} of training")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def eval_ms(model, frames: FrameSet, index: int, repeats: int, device) -> float:
    """Median milliseconds of one energy + forces evaluation of frame ``index`` (eval mode)."""
    model.eval()
    batch = AtomsBatch.from_frameset(frames, [index], device=device)
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        model(batch)["forces"].sum().item()
        if r:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def evaluate_errors(
    model, frames: FrameSet, test_idx: np.ndarray, subsets: Subsets, device
) -> dict[str, float]:
    """Subset MAEs (meV/Å) of ``model`` on the frames ``test_idx``."""
    pred = predict_forces(model, frames, test_idx, device=device)["forces"]
    return subset_errors(np.abs(pred - frames.forces[test_idx]), subsets)


def run(
    preds,
    out,
    *,
    seeds=(0, 1, 2),
    device="cpu",
    parameters=None,
    backbones=("painn", "mace", "so3krates"),
    steps=2000,
    lr=1e-3,
    size="full",
    eval_repeats=3,
    test_frames=0,
    scale_layer=True,
    granularity=ScaleSettings.granularity,
    loss=ScaleSettings.loss,
    router_steps=ScaleSettings.router_steps,
) -> Path:
    paths = [Path(p) for p in ([preds] if isinstance(preds, (str, Path)) else preds)]
    if len(paths) != 1:
        raise ValueError(f"the backbones study reads one dataset .npz, got {len(paths)} inputs")
    frames = FrameSet.load(paths[0])
    if frames.ragged:
        raise ValueError(f"{paths[0]}: the backbones study needs fixed-size frames (the NaCl testbed)")
    if scale_layer:
        seed_pairs(seeds)  # refuse a single seed before training anything
        settings = ScaleSettings.validated(granularity=granularity, loss=loss, router_steps=router_steps)
    results = ResultsDir(out, NAME, parameters or {"steps": steps, "size": size}, seeds, paths)
    split = frames.split_indices(SPLIT)
    test_idx = split["test"][:test_frames] if test_frames else split["test"]
    subsets = Subsets.of(frames.positions[test_idx], frames.numbers, frames.cell[test_idx])
    rows, scale_rows, verdict_rows = [], [], []
    for backbone in backbones:
        for variant in VARIANTS:
            for seed in seeds:
                torch.manual_seed(int(seed))
                model = build(backbone, variant, size)
                seconds = fit(model, frames, split["train"], steps, lr, int(seed), device)
                if scale_layer:
                    path = model_file(results.path, backbone, variant, seed)
                    save_model(model, results.file(str(path.relative_to(results.path))))
                rows.append(
                    {
                        "backbone": backbone,
                        "variant": variant,
                        "seed": int(seed),
                        "steps": steps,
                        **evaluate_errors(model, frames, test_idx, subsets, device),
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "ms_per_step": 1e3 * statistics.median(seconds[1:] or seconds),
                        "ms_per_eval": eval_ms(model, frames, int(test_idx[0]), eval_repeats, device),
                        "n_atoms": int(frames.positions.shape[1]),
                    }
                )
                print(
                    f"backbones: {backbone}/{variant}/seed {seed}: {rows[-1]['overall_mae']:.1f} meV/Å",
                    flush=True,
                )
        if scale_layer:
            blocks = cache_blocks(split, test_idx)
            caches = backbone_caches(results.path, frames, blocks, backbone, seeds, device=device,
                                     data_path=paths[0], split_fractions=SPLIT)  # fmt: skip
            for cache in caches:
                results.file(str(Path(cache.meta["source"]).relative_to(results.path)))
            routed = backbone_scale_table(caches, backbone, settings=settings, device=device)
            print(routed.attrs["printed"], flush=True)
            scale_rows.append(routed)
            verdict_rows.append(verdicts(routed))
            for _, verdict in verdict_rows[-1].iterrows():
                print(f"backbones: {verdict_line(verdict)}", flush=True)
            results.csv("scale_table.csv", pd.concat(scale_rows, ignore_index=True))
            results.csv("scale_verdicts.csv", pd.concat(verdict_rows, ignore_index=True))
    table = pd.DataFrame(rows)
    results.csv("runs.csv", table)
    columns = [*METRICS, "parameters", "ms_per_step", "ms_per_eval"]
    results.csv("summary.csv", mean_std(table, ["backbone", "variant"], columns))
    results.csv("gains.csv", gains(table))
    summary = [verdict_line(v) for frame in verdict_rows for _, v in frame.iterrows()]
    results.finish(
        status="done",
        n_test_frames=len(test_idx),
        n_train_frames=len(split["train"]),
        **({"scale_layer": summary} if scale_layer else {}),
    )
    return results.path


def gains(table: pd.DataFrame) -> pd.DataFrame:
    """Per backbone: gain (%) of ``muse`` and ``long`` over ``alone`` (overall MAE), paired per seed."""
    rows = []
    for backbone, group in table.groupby("backbone", sort=False):
        wide = group.pivot(index="seed", columns="variant", values="overall_mae")
        row = {"backbone": backbone, "n_seeds": len(wide)}
        for variant in ("muse", "long"):
            gain = 100.0 * (wide["alone"] - wide[variant]) / wide["alone"]
            row[f"{variant}_gain_pct"] = float(gain.mean())
            row[f"{variant}_gain_pct_std"] = float(gain.std(ddof=1)) if len(gain) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


STUDY = Study(
    name=NAME,
    description="PaiNN, MACE and SO3krates each alone, with the latent-charge P3M long branch and inside "
    "MuSE, trained at equal optimizer steps: test force MAE (meV/Å) overall, ions, close contact; "
    "parameters; ms per training step and per energy+forces; MuSE gain per backbone.",
    run=run,
    options={
        "backbones": Option(str, ("painn", "mace", "so3krates"), None, "backbones to compare", nargs="+"),
        "steps": Option(int, 2000, 3, "optimizer steps per model (one frame each), equal for all"),
        "lr": Option(float, 1e-3, None, "AdamW learning rate"),
        "size": Option(str, "full", "small", "backbone widths", choices=("full", "small")),
        "eval_repeats": Option(int, 3, 1, "timed energy+forces evaluations (median)"),
        "test_frames": Option(int, 0, 2, "test frames evaluated (0: the whole test split)"),
        "scale_layer": Option(
            bool,
            True,
            None,
            "save every model, write one prediction cache per backbone and seed pair and the scale table "
            "with MuSE(X) and X + P3M as generator beside the null pair (X alone, seeds k and k+1)",
        ),
        **scale_options("granularity", "loss", "router_steps"),
    },
    default_seeds=(0, 1, 2),
    inputs="data",
)
