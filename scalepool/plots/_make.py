"""Every figure whose results exist: ``scalepool figures --results DIR --out figures/``."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from . import _branch_figures as branch
from . import _hessian_figures as hessian
from . import _scale_figures as scale
from . import _search_figures as search
from . import _testbed_figures as testbed
from ._style import save, use_style

#: name -> function(results root) -> Figure or None, in the report's order.
FIGURES = {
    "scale_table": scale.method_table,
    "mae_vs_global_s": scale.global_s,
    "oracle_s_vs_distance": scale.oracle_s_distance,
    "pool_refinement": scale.pool_refinement,
    "router_vs_oracle": scale.router_choice,
    "parity": branch.parity,
    "error_vs_distance": branch.error_distance,
    "generator_swap": scale.generator_swap,
    "optuna_history": search.optuna_history,
    "optuna_importance": search.optuna_importance,
    "hessian": hessian.hessian_spectra,
    "folding_md": testbed.folding_md,
    "folding_errors": testbed.folding_errors,
    "graphene_profiles": testbed.graphene_profiles,
}
#: The figures the README shows.
KEY_FIGURES = (
    "scale_table",
    "mae_vs_global_s",
    "oracle_s_vs_distance",
    "pool_refinement",
    "router_vs_oracle",
    "parity",
    "error_vs_distance",
    "generator_swap",
    "hessian",
)


def make_figures(results: str | os.PathLike, out: str | os.PathLike, names=None) -> dict[str, list[Path]]:
    """Draw each figure of ``names`` (default all) whose results exist under ``results``.

    Returns ``{name: [png, pdf]}`` for the figures written; figures without
    results are skipped silently, a figure that fails warns and is skipped.
    """
    results, out = Path(results), Path(out)
    written = {}
    for name in names or FIGURES:
        with use_style(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                fig = FIGURES[name](results)
            except (KeyError, ValueError, IndexError, OSError) as err:
                warnings.warn(
                    f"figure {name} skipped: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2
                )
                continue
            if fig is not None:
                written[name] = save(fig, out, name)
    return written


def copy_figures(figures: str | os.PathLike, target: str | os.PathLike, names=KEY_FIGURES) -> list[Path]:
    """Copy the PNGs of ``names`` from ``figures`` to ``target`` (e.g. the repository's ``figures/``)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        source = Path(figures) / f"{name}.png"
        if source.exists():
            copied.append(Path(shutil.copy2(source, target / source.name)))
    return copied
