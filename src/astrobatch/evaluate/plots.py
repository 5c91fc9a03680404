"""Diagnostic plots (matplotlib, Agg backend), written atomically as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from astrobatch.io.atomic import atomic_path


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def pred_vs_true(
    pred: np.ndarray, true: np.ndarray, path, label: str, per_set: tuple | None = None
) -> None:
    """Scatter of predictions against truth with the 1:1 line.

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
        Per-sample predictions and targets (same units, e.g. log10 Msun).
    path : str or pathlib.Path
        Output PNG.
    label : str
        Axis quantity with units.
    per_set : tuple of (true, mean, std), optional
        Per-set mean prediction and spread, drawn as error bars.
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=4, alpha=0.25, color="0.5", label="samples")
    if per_set is not None:
        t, m, s = per_set
        ax.errorbar(t, m, yerr=s, fmt="o", ms=3, color="C0", label="snapshot mean ± std")
    lo, hi = np.nanmin([true.min(), pred.min()]), np.nanmax([true.max(), pred.max()])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def residual_hist(residuals: dict[str, np.ndarray], path, label: str) -> None:
    """Histograms of residuals (pred - true), one per named model/baseline."""
    fig, ax = plt.subplots(figsize=(6, 4))
    allr = np.concatenate(list(residuals.values()))
    bins = np.linspace(np.percentile(allr, 0.5), np.percentile(allr, 99.5), 50)
    for name, r in residuals.items():
        ax.hist(r, bins=bins, histtype="step", lw=1.5, label=name, density=True)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"residual (predicted - true) {label}")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _save(fig, path)


def loss_curves(curves: dict[str, pd.DataFrame], path, ylabel: str = "Huber loss") -> None:
    """Training curves: each frame has columns ``step`` and ``value``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, df in curves.items():
        ax.plot(df["step"], df["value"], marker="o", ms=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    _save(fig, path)
