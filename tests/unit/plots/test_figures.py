"""Figures: drawn from saved results only, PNG and PDF, skipped when their results are missing."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import optuna
import pytest
import torch

from scalepool.cli import _studies
from scalepool.plots import FIGURES, KEY_FIGURES, STYLE, copy_figures, make_figures
from scalepool.scales import synthetic_cache
from scalepool.search import export_study
from scalepool.studies import run_study

TINY = {
    "oracle_table": {"router_steps": 15, "soft_steps": 5, "points": 200},
    "routers": {"router_steps": 15, "points": 200},
    "generator_swap": {"router_steps": 15, "soft_steps": 5},
    "branch_comparison": {"parity_points": 100},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Results of every scale study on a tiny cache that also has a MuSE branch, and a
    small fake optuna study exported as the search study writes it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("results")
    cache = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=0)
    f0, f1 = cache.anchor_forces()
    short_2 = f0 + 0.05 * np.random.default_rng(1).normal(size=f0.shape)  # a second run of short
    branches = {**cache.branches, "muse": 0.5 * (f0 + f1), "short_2": short_2}
    cache = dataclasses.replace(cache, branches=branches, meta={})
    pred = cache.save(root / "pred.npz")
    for name, options in TINY.items():
        run_study(name, [pred], root / name, **options)
    run_study("pool_refinement", [pred], root / "pool_refinement")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2 + t.suggest_int("k", 0, 3), n_trials=12)
    export_study(study, root / "search", prefix="toy_seed0_")
    # the Hessian benchmark's file layout (its numbers are tested in test_muse_hessian.py)
    (root / "hessian").mkdir()
    rng = np.random.default_rng(0)
    spectra = {}
    for label in ("reference", "short", "muse"):
        spectra[f"eigenvalues_{label}"] = np.sort(rng.normal(5.0, 3.0, 24))
        spectra[f"wavenumbers_{label}"] = np.sort(rng.normal(300.0, 200.0, 24))
    np.savez(root / "hessian" / "hessian.npz", **spectra)
    # the testbed benchmarks' file layouts (their numbers: tests/unit/studies/test_testbed_studies.py)
    import pandas as pd

    (root / "folding").mkdir()
    md = [{"model": m, "start": s, "seed": 0, "ca_rmsd": r, "radius_of_gyration": 6 + r, "end_to_end": 5 * r}
          for m in ("reference", "short", "muse") for s in ("folded", "unfolded") for r in rng.uniform(1, 6, 20)]  # fmt: skip
    pd.DataFrame(md).to_csv(root / "folding" / "md_samples.csv", index=False)
    states = [{"model": b, "branch": b, "state": s, "mae_meV_A": rng.uniform(50, 200)}
              for b in ("short", "muse") for s in ("folded", "transition", "unfolded", "overall")]  # fmt: skip
    pd.DataFrame(states).to_csv(root / "folding" / "state_errors.csv", index=False)
    (root / "graphene_profiles").mkdir()
    heights = np.arange(2.5, 10.01, 0.5)
    curves = [{"model": m, "branch": m, "molecule": mol, "height_A": d, "binding_eV": -0.4 * np.exp(-((d - 3.4) ** 2))}
              for m in ("reference", "short") for mol in ("benzene", "water") for d in heights]  # fmt: skip
    pd.DataFrame(curves).to_csv(root / "graphene_profiles" / "curves.csv", index=False)
    torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def drawn(results, tmp_path_factory):
    return make_figures(results, tmp_path_factory.mktemp("figures"))


def test_every_figure_png_and_pdf(drawn):
    written = drawn
    assert set(written) == set(FIGURES)
    for name, paths in written.items():
        png, pdf = paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert png.stat().st_size > 5_000, name


def test_missing_results_are_skipped(tmp_path):
    assert make_figures(tmp_path, tmp_path / "figures") == {}
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())


def test_figures_read_only_saved_results(results, tmp_path, monkeypatch):
    """No figure recomputes anything: the scale layer and the studies are never called."""
    import scalepool.scales as scales
    import scalepool.studies as studies

    def forbidden(*args, **kwargs):
        raise AssertionError("figure code must only read saved results")

    for module, name in ((scales, "scale_table"), (scales, "refine_pool"), (studies, "run_study")):
        monkeypatch.setattr(module, name, forbidden)
    for name, draw in FIGURES.items():
        figure = draw(results)
        assert figure is not None, name
        matplotlib.pyplot.close(figure)


def test_style_and_copy(drawn, tmp_path):
    assert STYLE.exists() and "savefig.dpi" in STYLE.read_text()
    folder = next(iter(drawn.values()))[0].parent
    copied = copy_figures(folder, tmp_path / "repo_figures")
    assert sorted(p.name for p in copied) == sorted(f"{name}.png" for name in KEY_FIGURES)


def test_cli_figures(results, tmp_path, capsys):
    assert (
        _studies.main(["figures", "--results", str(results), "--out", str(tmp_path), "--only", "parity"]) == 0
    )
    assert "parity:" in capsys.readouterr().out and (tmp_path / "parity.pdf").exists()
    assert (
        _studies.main(["figures", "--results", str(results), "--out", str(tmp_path), "--only", "nope"]) == 2
    )
    assert _studies.main(["figures", "--results", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_refinement_figure_shows_the_rounds(results, tmp_path):
    """The pool figure plots one x position per refinement round of the saved history."""
    import json

    import matplotlib

    from scalepool.plots._scale_figures import pool_refinement
    from scalepool.plots._style import use_style

    history = json.loads(next((results / "pool_refinement").glob("history_*.json")).read_text())
    with use_style():
        fig = pool_refinement(results)
    left = fig.axes[0]
    xs = np.unique(np.concatenate([c.get_offsets()[:, 0] for c in left.collections if len(c.get_offsets())]))
    assert xs.tolist() == [r["round"] for r in history["rounds"]]
    matplotlib.pyplot.close(fig)


def test_method_table_sets_the_null_control_beside_each_method(results):
    """One hatched bar per routing method: the same method's overall MAE on the null pair."""
    import pandas as pd

    from scalepool.plots._scale_figures import method_table
    from scalepool.plots._style import use_style

    table = pd.read_csv(results / "oracle_table" / "table.csv", keep_default_na=False, na_values=[""])
    real, null = table[table.pair == "real"], table[table.pair == "null"].set_index("method")
    with use_style():
        fig = method_table(results)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        m.replace("(upper bound)", "(UB)") for m in real.method
    ]
    hatched = [c for c in ax.containers if getattr(c, "patches", None) and c.patches[0].get_hatch()]
    assert len(hatched) == 1
    widths = np.array([p.get_width() for p in hatched[0].patches])
    expected = [null.overall_mae.get("null: " + m, np.nan) if f else np.nan
                for m, f in zip(real.method, real.fitted_on.notna(), strict=True)]  # fmt: skip
    np.testing.assert_allclose(widths, expected)
    matplotlib.pyplot.close(fig)
