"""Figure of the Hessian benchmark: model and OpenMM vibrational spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._style import color, plt


def hessian_spectra(results: Path):
    """The spectra of ``<results>/hessian/hessian.npz`` (see :func:`spectra_figure`)."""
    path = results / "hessian" / "hessian.npz"
    return spectra_figure(path) if path.exists() else None


def spectra_figure(path: Path):
    """Eigenvalues (sorted) and the cumulative distribution of wavenumbers of every
    Hessian in the benchmark file ``path``, the OpenMM reference in black."""
    with np.load(path) as data:
        labels = [k.removeprefix("eigenvalues_") for k in data.files if k.startswith("eigenvalues_")]
        eig = {label: data[f"eigenvalues_{label}"] for label in labels}
        freq = {label: data[f"wavenumbers_{label}"] for label in labels}
    labels = ["reference", *[label for label in labels if label != "reference"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for i, label in enumerate(labels):
        if label == "reference":
            style = {"color": "black", "lw": 2.0, "zorder": 3, "label": "OpenMM (finite differences)"}
        else:
            style = {"color": color(label, i), "lw": 1.2, "label": label}
        left.plot(np.arange(len(eig[label])), eig[label], **style)
        right.plot(np.sort(freq[label]), np.linspace(0, 1, len(freq[label])), **style)
    left.set(xlabel="mode (sorted)", ylabel="Hessian eigenvalue (eV/Å$^2$)", title="eigenvalue spectrum")
    left.axhline(0.0, color="grey", lw=0.5)
    right.set(
        xlabel="wavenumber (cm$^{-1}$, < 0: imaginary)", ylabel="fraction of modes", title="frequencies"
    )
    right.legend(frameon=False, fontsize=8)
    return fig
