"""Study (e): the same scale layer with another scale generator (MuSE pooling).

A cache holding ``forces_<base>`` and ``forces_<generator>`` (by default
``short`` and ``muse``) defines a second generator F(s) = (1 - s) F_short +
s F_muse; the scale table, the global-s curve and the pool refinement are
repeated on it and set beside the cutoff generator (``short`` -> ``long``)
when the cache also has ``forces_long``.  Without any cache holding the
generator's forces the study is skipped with a message (and a provenance with
``status: skipped``), so a pipeline does not retry it until its inputs change.

Outputs (meV/Å, test split): ``comparison.csv`` (method x generator, mean and
std over caches; ``(upper bound)`` rows read the test labels),
``global_s_curve.csv``, ``refinement_<generator>_<cache>.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from ..scales import ScaleSettings, scale_table
from ._common import SplitView, global_s_curve, mean_std, open_results
from ._study import Option, Study, scale_options

NAME = "generator_swap"


def run(
    preds,
    out,
    *,
    seeds=(0,),
    device="cpu",
    parameters=None,
    generator="muse",
    base="short",
    cutoff_anchor="long",
    granularity=ScaleSettings.granularity,
    loss=ScaleSettings.loss,
    tol=ScaleSettings.tol,
    router_steps=ScaleSettings.router_steps,
    soft_steps=150,
) -> Path:
    caches, labels, results = open_results(
        preds, out, NAME, parameters or {"generator": generator, "base": base}, seeds
    )
    usable = [(lab, c) for lab, c in zip(labels, caches, strict=True) if {base, generator} <= set(c.branches)]
    if not usable:
        have = sorted({b for c in caches for b in c.branches})
        message = (
            f"skipped: no cache holds both forces_{base} and forces_{generator} (branches present: {have}); "
            f"train a '{generator}' branch and pass its cache, e.g. scalepool predict --run RUN_{base} "
            f"--run RUN_{generator}"
        )
        print(f"{NAME}: {message}")
        results.json("skipped.json", {"status": "skipped", "reason": message})
        results.finish(status="skipped", reason=message)
        return results.path
    generators = {f"{base}->{generator}": (base, generator)}
    if all(cutoff_anchor in c.branches for _, c in usable):
        generators[f"{base}->{cutoff_anchor}"] = (base, cutoff_anchor)
    tables, curves = [], []
    for name, anchors in generators.items():
        swapped = [dataclasses.replace(c, anchors=anchors, meta=dict(c.meta)) for _, c in usable]
        table, details = scale_table(
            swapped,
            granularity=granularity,
            loss=loss,
            tol=tol,
            router_steps=router_steps,
            soft_steps=soft_steps,
            seed=int(seeds[0]),
            device=device,
            return_details=True,
        )
        table.insert(1, "generator", name)
        tables.append(table)
        for (label, _), cache, detail in zip(usable, swapped, details, strict=True):
            detail["history"].save(results.file(f"refinement_{anchors[1]}_{label}.json"))
            curve = global_s_curve(SplitView.of(cache, "test"))
            curves.append(curve.assign(generator=name, cache=label))
    comparison = pd.concat(tables, ignore_index=True)
    results.csv("comparison.csv", comparison)
    metrics = ["overall_mae", "close_contact_mae", "ion_mae"]
    results.csv(
        "global_s_curve.csv", mean_std(pd.concat(curves, ignore_index=True), ["generator", "s"], metrics)
    )
    results.finish(status="done", generators=list(generators), caches=[lab for lab, _ in usable])
    return results.path


STUDY = Study(
    name=NAME,
    description="Repeat the scale table, global-s curve and pool refinement with the MuSE generator "
    "(anchors short -> muse) beside the cutoff generator (short -> long); skipped with a message when "
    "no cache holds forces_muse.",
    run=run,
    options={
        **scale_options("granularity", "loss", "tol", "router_steps"),
        "generator": Option(str, "muse", None, "branch at s=1 of the swapped generator"),
        "base": Option(str, "short", None, "branch at s=0"),
        "cutoff_anchor": Option(str, "long", None, "s=1 branch of the cutoff generator compared against"),
        "soft_steps": Option(int, 150, 60, "steps of the differentiable pool update"),
    },
)
